"""Durable file storage: a segmented write-ahead log plus an atomically replaced state file.

The public face is :func:`open_file_storage` and :class:`FileStorage` (re-exported by
``trio_raft``); the on-disk format is described in ``docs/source/storage.rst``. Modules:

* ``_errors``: :class:`StorageError` and its subclasses;
* ``_fs``: the file-system seam (a real and a fault-injecting in-memory implementation);
* ``_segments``: record framing, the state file, and scanning one segment file;
* ``_recovery``: opening a data directory, replaying and repairing it;
* ``_wal``: the blocking writer (appends, rotation, truncation, compaction, fsync);
* ``_file_storage``: the trio-facing :class:`FileStorage`.
"""
