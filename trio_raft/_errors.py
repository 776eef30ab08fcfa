"""The exceptions trio-raft raises, all rooted at :class:`RaftError`::

    RaftError
    ├── NodeClosedError          you used a node after it shut down (your fault)
    ├── NodeCrashedError         a node task hit an internal error (a bug): the node stopped
    ├── NotLeaderError           not the leader: nothing was appended; retry on .leader_id
    ├── LeadershipLostError      leadership lost after appending: the outcome is UNKNOWN
    ├── ProposalDroppedError     definitely not committed (overwritten or refused)
    │   ├── TooManyUncommittedError   back-pressure: too many uncommitted entries
    │   └── NoSpaceError              the leader's disk is low: only space-freeing commands
    ├── MembershipError          a membership request was refused: NOTHING was appended
    │   ├── MembershipChangeInProgressError   another change (or a transfer) is in flight
    │   ├── InvalidMembershipError            the request is impossible (also a ValueError)
    │   ├── LearnerNotCaughtUpError           the learner did not catch up in time
    │   └── QuorumUnavailableError            the old or the new voters lack a live majority
    ├── LeadershipTransferError  the transfer did not happen (or no new leader is known yet)
    ├── LogIndexError            a log index outside a node's log (Node.log; also an IndexError)
    │   └── LogCompactedError        the entry was compacted into a snapshot
    ├── FrameError               a peer sent bytes that are not a valid frame (connection dropped)
    ├── StorageError             the data directory failed (see trio_raft.FileStorage)
    │   ├── StorageCorruptError      damaged beyond a torn tail: names the file and offset
    │   ├── StorageIdentityError     the directory belongs to another node or cluster
    │   ├── StorageLockedError       another process has the directory open
    │   └── StorageFullError         disk space below the reserve: appends refused, still usable
    ├── ConfigError              (trio-raft serve) the cluster file is wrong
    ├── InvariantViolation       (trio_raft.testing) a safety property broke in the simulator
    └── KVError                  (trio_raft.kv) the KV service's client errors

``NotLeaderError`` and ``ProposalDroppedError`` mean *definitely not applied*: it is always safe to
retry. ``LeadershipLostError`` means *maybe applied*: retry only idempotent commands, or make the
command idempotent (e.g. with a client id and sequence number the state machine de-duplicates).

Deprecated names warn with :class:`TrioRaftDeprecationWarning` (a :class:`DeprecationWarning`)
for at least one release before they go.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._types import NodeId

if TYPE_CHECKING:
    from ._types import Membership


class RaftError(Exception):
    """Base class of every error trio-raft raises on purpose."""


class NodeClosedError(RaftError):
    """The node has shut down (its ``async with`` block exited); open a new one."""


class NotLeaderError(RaftError):
    """This node is not the leader, so the request was not accepted and had no effect.

    Attributes:
        leader_id: The leader this node currently believes in, or ``None`` when it knows none
            (an election is under way). Retry there, or wait and retry.
    """

    def __init__(self, node_id: NodeId, leader_id: NodeId | None) -> None:
        self.node_id = node_id
        self.leader_id = leader_id
        hint = (
            f"retry on {leader_id!r}" if leader_id is not None else "no leader known; retry later"
        )
        super().__init__(f"node {node_id!r} is not the leader ({hint})")


class LeadershipLostError(RaftError):
    """Leadership was lost after the proposal was appended: it may or may not commit.

    The outcome is unknown. The entry may still be committed by the next leader, so a blind retry
    can apply the command twice; make commands idempotent before retrying.
    """


class ProposalDroppedError(RaftError):
    """The proposal was definitely not committed and will never be; retrying is safe."""


class TooManyUncommittedError(ProposalDroppedError):
    """The leader already holds ``max_uncommitted_entries`` uncommitted entries; retry later.

    This is back-pressure: followers are slow or unreachable. The proposal was not appended.
    """


class NoSpaceError(ProposalDroppedError):
    """The leader's disk-space alarm is raised (free space is below its storage's reserve), so
    it accepts only commands proposed with ``frees_space=True``; this one was not appended.

    Free space on the leader (delete data with ``frees_space`` commands and let the next
    snapshot compact the log, or grow the disk); the alarm clears by itself within a second of
    free space returning above the reserve. Reads keep working meanwhile. See
    :attr:`Status.no_space <trio_raft.Status.no_space>`.
    """


class NodeCrashedError(RaftError):
    """A task of the node raised an unexpected exception (a bug, to be reported) and the node
    stopped (fail-stop), as a whole, rather than run on with a dead task.

    It leaves :func:`~trio_raft.open_node`, and fails the proposals and reads still waiting on
    the node; the original exception is its ``__cause__``. A proposal failing with it has an
    *unknown* outcome, as with :class:`LeadershipLostError`. The node's durable state is as
    consistent as after a crash: open a new node on the same storage to carry on.

    Attributes:
        node_id: The node that stopped.
        task: The task that raised (``"dispatcher"``, ``"applier"``, ``"replicator n1->n2"`` ...).
    """

    def __init__(self, node_id: NodeId, task: str, cause: BaseException) -> None:
        self.node_id = node_id
        self.task = task
        super().__init__(
            f"node {node_id!r} stopped: its {task} task raised {type(cause).__name__}: "
            f"{cause}. This is a bug (in trio-raft, or in the state machine if the traceback "
            "ends in it); please report it with the traceback. Reopen the node on the same "
            "storage to carry on"
        )


class MembershipError(RaftError):
    """A membership change was refused before anything was appended: the configuration is
    unchanged. The subclass says why; see each one for what to do."""


class MembershipChangeInProgressError(MembershipError):
    """Another membership change (or a leadership transfer) is still in flight; only one runs
    at a time. Wait until ``Status.membership_committed`` is true and the configuration is not
    joint, then retry.

    Attributes:
        membership: The configuration in flight, or ``None`` when the reason is a leadership
            transfer or a leader that has not yet committed an entry of its term.
        index: The log index of that configuration's entry (0 when ``membership`` is None).
    """

    def __init__(self, message: str, membership: Membership | None = None, index: int = 0) -> None:
        super().__init__(message)
        self.membership = membership
        self.index = index


class InvalidMembershipError(MembershipError, ValueError):
    """The requested configuration is impossible (fix the request; retrying cannot help).

    Attributes:
        rule: A short key for the rule it breaks: ``"last_voter"`` (it removes every voter),
            ``"not_a_learner"`` (a new voter must be a learner first), ``"not_a_voter"``,
            ``"not_a_member"``, ``"limits"`` (ids, member count or address size),
            ``"no_other_voter"`` (a leadership transfer with no one to hand over to).
    """

    def __init__(self, message: str, rule: str) -> None:
        super().__init__(message)
        self.rule = rule


class LearnerNotCaughtUpError(MembershipError):
    """A learner to be promoted did not keep within ``Config.catch_up_entries`` of the leader
    for a whole maximum election timeout before the wait ran out; it stays a learner. Check
    the learner (its disk, its link), then retry with a longer ``catch_up_timeout_s`` or remove
    it.

    Attributes:
        node_id: The learner.
        lag: How many entries it was behind the leader's last index when the wait ended.
        waited_s: How long the call waited.
    """

    def __init__(self, message: str, node_id: NodeId, lag: int, waited_s: float) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.lag = lag
        self.waited_s = waited_s


class QuorumUnavailableError(MembershipError):
    """The current voters or the requested ones lack a majority that has answered the leader
    recently, so the change could get stuck half-way; it was not started. Bring the unreachable
    voters back (or change fewer at once), then retry.

    Attributes:
        unreachable: The voters not heard from within the minimum election timeout.
    """

    def __init__(self, message: str, unreachable: frozenset[NodeId]) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class LeadershipTransferError(RaftError):
    """A leadership transfer did not complete: either this node still leads (it accepts
    proposals again) or it stepped down and no new leader was known in time.

    Attributes:
        target: The node leadership was being handed to.
        moved: Whether this node stopped leading.
    """

    def __init__(self, message: str, target: NodeId | None, *, moved: bool) -> None:
        super().__init__(message)
        self.target = target
        self.moved = moved


class LogIndexError(RaftError, IndexError):
    """An index outside the part of the log a node holds (:attr:`Node.log
    <trio_raft.Node.log>`): past its last entry, or (as the subclass
    :class:`LogCompactedError`) compacted into a snapshot. Read the view's ``first_index`` and
    ``last_index`` first, without awaiting in between, and ask within them.

    Attributes:
        index: The index asked for.
        first_index: The first index the log held then.
        last_index: The last index the log held then (``first_index - 1`` if it held none).
    """

    def __init__(self, message: str, index: int, first_index: int, last_index: int) -> None:
        super().__init__(message)
        self.index = index
        self.first_index = first_index
        self.last_index = last_index


class LogCompactedError(LogIndexError):
    """The entry asked for was compacted into a snapshot: only its effect on the state machine
    remains (the node keeps no copy of it). Ask from ``first_index`` on; to keep every entry,
    read them before they are compacted (raise :attr:`Config.snapshot_keep_entries
    <trio_raft.Config.snapshot_keep_entries>` to keep more)."""


class TrioRaftDeprecationWarning(DeprecationWarning):
    """A deprecated trio-raft name or behaviour was used; the message says what to use
    instead. Deprecated names keep working for at least one release."""
