"""The Raft RPCs, one frozen attrs class each.

Every message names its sender (``src``), its receiver (``dst``) and the sender's ``term``; the
transport needs nothing else to route it. Requests and their responses are plain values: a node
never waits for a response, it reacts to whatever arrives (etcd's model), so lost, duplicated and
reordered messages are all handled by the receiving rules in :mod:`trio_raft._core`.
"""

from __future__ import annotations

from typing import TypeAlias

import attrs

from ._types import Entry, NodeId


@attrs.frozen(slots=True)
class VoteRequest:
    """RequestVote (Raft §5.2), or a PreVote probe (thesis §9.6) when ``pre_vote`` is set.

    A PreVote carries the term the candidate *would* use (its term + 1) without having adopted it.
    """

    src: NodeId
    """Sender."""
    dst: NodeId
    """Receiver."""
    term: int
    """The sender's term (see the class docstring for PreVote)."""
    last_log_index: int
    """Index of the candidate's last log entry (0 if empty)."""
    last_log_term: int
    """Term of the candidate's last log entry (0 if empty)."""
    pre_vote: bool = False
    """True for a PreVote probe: receivers neither change term nor record a vote."""


@attrs.frozen(slots=True)
class VoteResponse:
    """The answer to a :class:`VoteRequest`."""

    src: NodeId
    """Sender."""
    dst: NodeId
    """Receiver."""
    term: int
    """The sender's term (see the class docstring for PreVote)."""
    """The voter's term; for a granted PreVote, the term of the request."""
    granted: bool
    """Whether the vote (or PreVote) is granted."""
    pre_vote: bool = False
    """Whether this answers a PreVote."""


@attrs.frozen(slots=True)
class AppendRequest:
    """AppendEntries (Raft §5.3); a heartbeat is one with no entries."""

    src: NodeId
    """Sender."""
    dst: NodeId
    """Receiver."""
    term: int
    """The sender's term (see the class docstring for PreVote)."""
    prev_index: int
    """Index of the entry just before ``entries``."""
    prev_term: int
    """Term of the entry at ``prev_index`` (0 when ``prev_index`` is 0)."""
    entries: tuple[Entry, ...]
    """Entries to append after ``prev_index``; empty for a heartbeat."""
    commit: int
    """The leader's commit index, capped by the receiver to what it has verified."""
    seq: int = 0
    """The leader's heartbeat sequence when sent; echoed back to confirm leadership (ReadIndex)."""


@attrs.frozen(slots=True)
class AppendResponse:
    """The answer to an :class:`AppendRequest`.

    On success ``match_index`` is the last index the follower now shares with the leader. On
    rejection ``conflict_term``/``conflict_index`` let the leader skip a whole term per round trip
    (the fast back-up of Raft §5.3): ``conflict_term`` is the follower's term at the rejected
    ``prev_index`` (0 when its log is too short) and ``conflict_index`` the first index the leader
    should try next.
    """

    src: NodeId
    """Sender."""
    dst: NodeId
    """Receiver."""
    term: int
    """The sender's term (see the class docstring for PreVote)."""
    success: bool
    """Whether the consistency check passed and the entries were appended."""
    match_index: int = 0
    """On success, the last index known to match the leader's log."""
    rejected_index: int = 0
    """The ``prev_index`` that was rejected; lets the leader discard stale rejections."""
    conflict_term: int = 0
    conflict_index: int = 0
    last_index: int = 0
    """The follower's last log index (a hint for the leader)."""
    seq: int = 0
    """The ``seq`` of the request answered."""


@attrs.frozen(slots=True)
class SnapshotRequest:
    """InstallSnapshot (Raft §7): one chunk of the leader's snapshot, for a follower whose next
    entry the leader has already compacted away. Chunks go out in order; ``offset`` is the byte
    position of ``data`` in the snapshot."""

    src: NodeId
    """Sender (the leader)."""
    dst: NodeId
    """Receiver."""
    term: int
    """The leader's term."""
    index: int
    """The last log index the snapshot covers."""
    snapshot_term: int
    """The term of the entry at ``index``."""
    offset: int
    """Byte offset of ``data`` within the snapshot."""
    data: bytes
    """This chunk."""
    done: bool
    """Whether this is the last chunk."""


@attrs.frozen(slots=True)
class SnapshotResponse:
    """The answer to a :class:`SnapshotRequest`: how far the follower got."""

    src: NodeId
    """Sender (the follower)."""
    dst: NodeId
    """Receiver (the leader)."""
    term: int
    """The follower's term."""
    index: int
    """The snapshot being acknowledged (its last index)."""
    offset: int
    """Bytes of that snapshot received so far: the offset the leader should send next."""
    done: bool
    """The snapshot is durably installed: the follower's log now matches up to ``index``."""


Message: TypeAlias = (
    VoteRequest | VoteResponse | AppendRequest | AppendResponse | SnapshotRequest | SnapshotResponse
)
"""Any Raft RPC."""

MESSAGE_TYPES: tuple[type[Message], ...] = (
    VoteRequest,
    VoteResponse,
    AppendRequest,
    AppendResponse,
    SnapshotRequest,
    SnapshotResponse,
)
