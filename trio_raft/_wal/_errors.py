"""Errors of the file storage::

RaftError
└── StorageError              the disk failed under us, or a storage is used after that
    ├── StorageCorruptError   the data directory is damaged; the node must not start from it
    └── StorageLockedError    another FileStorage has this data directory open
"""

from __future__ import annotations

from .._errors import RaftError

_WHAT_TO_DO = (
    "Do not start this node from the directory as it is. Either restore this node's data "
    "directory from a backup taken while the node was stopped, or move it aside and start the "
    "node with an empty directory so it rejoins and receives the log from the leader. Starting "
    "empty forgets the node's vote: only do it after the cluster has moved past the current "
    "term (or with the node removed from the membership and added back), and never on more "
    "than a minority of nodes at once, or committed entries can be lost."
)


class StorageError(RaftError):
    """The storage could not do its job: an operating-system error (disk full, I/O error,
    permissions) reached it, and its ``__cause__`` says which.

    After a failed write or fsync the storage cannot know what reached the disk, so every later
    call raises :class:`StorageError` as well: close it and open the directory again, which
    recovers from what is actually on disk (the "fsyncgate" rule: never retry an fsync).
    """


class StorageCorruptError(StorageError):
    """The data directory is damaged in a way a crash cannot explain.

    A crash in the middle of an append leaves a torn record at the end of the last segment;
    that is repaired on open without losing anything that was synced. Everything else (a bad
    record with valid data after it, a damaged non-final segment, a missing segment, an
    unreadable state file) raises this error, because starting from that directory could make
    the node forget entries or a vote it promised to keep.

    Attributes:
        path: The damaged file (or the directory, for a missing file).
        offset: Byte offset of the damage within ``path``, or ``None`` when not applicable.
        reason: What is wrong, in a few words.
    """

    def __init__(self, path: str, offset: int | None, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        where = path if offset is None else f"{path} at byte offset {offset}"
        super().__init__(f"corrupt storage: {where}: {reason}. {_WHAT_TO_DO}")


class StorageLockedError(StorageError):
    """Another :class:`FileStorage` (in this process or another one) has the data directory
    open. Two writers would destroy it, so the second opener fails at once.

    Attributes:
        path: The data directory.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"data directory {path} is locked by another FileStorage (in this or another "
            "process): stop the other node first, or give this one its own directory"
        )
