"""Durable file storage: a segmented write-ahead log plus an atomically replaced state file.

The public face is ``open_file_storage`` and ``FileStorage`` (re-exported by
``trio_raft``); the on-disk format is described in ``docs/source/storage.rst``. Modules:

* ``_errors``: :class:`StorageError` and its subclasses;
* ``_fs``: the file-system seam and the real file system;
* ``_simfs``: a fault-injecting in-memory file system for tests (crash at any write or fsync);
* ``_segments``: record framing, the state file, and scanning one segment file;
* ``_recovery``: opening a data directory, replaying and repairing it;
* ``_wal``: the blocking writer (appends, rotation, truncation, compaction, fsync);
* ``_snapshot_file``: writing and reading the snapshot file;
* ``_file_storage``: the trio-facing ``FileStorage`` and ``open_file_storage``.
"""
