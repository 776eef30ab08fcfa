"""Immutable snapshots of a node's state, for monitoring and for waiting on changes."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import attrs

from ._errors import TrioRaftDeprecationWarning
from ._types import Membership, NodeId, Role


@attrs.frozen
class FollowerStatus:
    """What a leader knows about one follower."""

    match_index: int
    """Highest log index known to be replicated on the follower."""
    next_index: int
    """Next log index the leader will send."""
    probing: bool
    """True while the leader is still searching for where the logs agree."""
    voter: bool = True
    """Whether it votes in the configuration in force (False for learners and for removed
    peers the leader still tells about their removal)."""
    caught_up_s: float = 0.0
    """How long it has stayed within ``Config.catch_up_entries`` of the leader (0 if it is
    further behind): a learner may be promoted once this reaches ``election_timeout_s_max``."""


@attrs.frozen
class Status:
    """A snapshot of one node (see :attr:`Node.status`)."""

    node_id: NodeId
    """The node this snapshot describes."""
    role: Role
    """Its role in ``term``."""
    term: int
    """The latest term it has seen."""
    leader_id: NodeId | None
    """The leader this node believes in, or ``None`` while it knows none."""
    commit_index: int
    """Highest log index it knows to be committed."""
    last_applied: int
    """Highest log index its state machine has applied."""
    last_log_index: int
    """Index of its last log entry (0 if the log is empty)."""
    last_log_term: int
    """Term of its last log entry (0 if the log is empty)."""
    followers: Mapping[NodeId, FollowerStatus] = attrs.field(factory=dict)
    """Empty unless ``role`` is :attr:`Role.LEADER`."""
    compacted_index: int = 0
    """The last index compacted into a snapshot (0 if the log was never compacted): the log
    holds the entries after it (see :attr:`Node.log <trio_raft.Node.log>`)."""
    snapshot_index: int = 0
    """The last index covered by this node's durable snapshot (0 if it has none)."""
    no_space: bool = False
    """The disk-space alarm: this node's storage has less free space than its reserve (or
    just refused an append). As leader it then refuses ordinary proposals with
    :exc:`~trio_raft.NoSpaceError`, accepting only ``frees_space`` ones; reads, snapshots and
    compaction go on. It clears once space is back (polled every second)."""
    membership: Membership | None = None
    """The configuration in force on the node (the last in its log, committed or not);
    ``None`` only for a joining node that has received none yet."""
    membership_index: int = 0
    """The log index of that configuration's entry (the snapshot's index for one that came
    with a snapshot; 0 for a bootstrap configuration not yet written to the log)."""
    membership_committed: bool = False
    """Whether that configuration is committed, as far as this node knows."""
    transfer_target: NodeId | None = None
    """The node a leadership transfer in progress hands over to (leader only)."""
    voted_for: NodeId | None = None
    """The candidate this node voted for in ``term`` (itself if it campaigned), or ``None``
    if it has not voted in this term. Part of its hard state, durable before the vote is sent
    (a node restarting in the same term remembers it, and votes for no other)."""

    @property
    def log_start_index(self) -> int:
        """Deprecated alias of :attr:`compacted_index` (it never was where the log starts, but
        the last index before it).

        .. deprecated:: 0.1.0
           Use :attr:`compacted_index`; this alias warns with
           :class:`~trio_raft.TrioRaftDeprecationWarning` and will be removed.
        """
        warnings.warn(
            "Status.log_start_index is deprecated: use Status.compacted_index (the same value, "
            "the last index compacted into a snapshot)",
            TrioRaftDeprecationWarning,
            stacklevel=2,
        )
        return self.compacted_index
