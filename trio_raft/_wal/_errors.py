"""Errors of the file storage::

RaftError
└── StorageError              the disk failed under us, or a storage is used after that
    ├── StorageCorruptError   the data directory is damaged; the node must not start from it
    ├── StorageIdentityError  the data directory belongs to another node or another cluster
    ├── StorageLockedError    another FileStorage has this data directory open
    └── StorageFullError      free disk space fell below the reserve: appends are refused
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


class StorageIdentityError(StorageError):
    """The data directory belongs to another node or to another cluster.

    The directory's ``IDENTITY`` file names the cluster and the node that created it; opening
    it as a different one is refused before anything in it is read or changed, because another
    node's directory holds that node's vote and log (two nodes with swapped directories can
    elect two leaders in one term), and another cluster's directory holds another cluster's
    data.

    Attributes:
        path: The data directory.
        expected_cluster_id: The cluster id the caller opened it as.
        expected_node_id: The node id the caller opened it as.
        found_cluster_id: The cluster id stored in the directory.
        found_node_id: The node id stored in the directory.
    """

    def __init__(
        self,
        path: str,
        *,
        expected_cluster_id: str,
        expected_node_id: str,
        found_cluster_id: str,
        found_node_id: str,
    ) -> None:
        self.path = path
        self.expected_cluster_id = expected_cluster_id
        self.expected_node_id = expected_node_id
        self.found_cluster_id = found_cluster_id
        self.found_node_id = found_node_id
        if found_cluster_id != expected_cluster_id:
            hint = (
                "it is a directory from another cluster. Is this the right cluster file (its "
                "cluster_id and data_dir)? Never start a node from another cluster's directory; "
                "give this node its own, empty directory"
            )
        else:
            hint = (
                f"it is node {found_node_id!r}'s directory. Is --id right? Are data_dir "
                "or the directories under it mixed up (each node has its own, data_dir/<id>)? "
                f"Start {found_node_id!r} from it, and {expected_node_id!r} from its own "
                "directory"
            )
        super().__init__(
            f"data directory {path} belongs to node {found_node_id!r} of cluster "
            f"{found_cluster_id!r}, but was opened as node {expected_node_id!r} of cluster "
            f"{expected_cluster_id!r}: {hint}. Nothing in it was changed."
        )


class StorageFullError(StorageError):
    r"""Free space on the data directory's file system is below the storage's reserve, so an
    append was refused (or the disk filled up while a snapshot was written: ``operation`` is
    then ``"snapshot"`` and the previous snapshot stays the current one). Nothing was written
    and, unlike other storage errors, the storage stays usable: hard-state changes,
    truncations, snapshots and compaction still work (they may use the reserve), and appends
    work again once space is freed.

    Attributes:
        path: The data directory.
        free_bytes: Free space available to this process when the append was refused.
        reserve_bytes: The reserve the storage keeps free.
        needed_bytes: What the refused append would have written.
    """

    def __init__(
        self,
        path: str,
        *,
        free_bytes: int,
        reserve_bytes: int,
        needed_bytes: int,
        operation: str = "append",
    ):
        self.path = path
        self.free_bytes = free_bytes
        self.reserve_bytes = reserve_bytes
        self.needed_bytes = needed_bytes
        self.operation = operation
        """``"append"`` or ``"snapshot"``: what was refused."""
        if operation == "snapshot":
            super().__init__(
                f"data directory {path}: the disk filled up writing a snapshot ({needed_bytes} "
                f"bytes written, {free_bytes} bytes free); it was discarded and the previous "
                "snapshot stays current. Free disk space, or raise reserve_bytes to at least "
                "four times the size of a snapshot"
            )
            return
        super().__init__(
            f"data directory {path}: only {free_bytes} bytes free, and appending {needed_bytes} "
            f"bytes would leave less than the reserve of {reserve_bytes} bytes; the append was "
            "refused and nothing was written. Free disk space (or take a snapshot so the log "
            "can be compacted), then retry"
        )
