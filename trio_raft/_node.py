"""A Raft node as a tree of trio tasks.

::

    open_node ─ nursery
      ├── pump          transport.receive_channel ──▶ inbox (only for a transport without
      │                 ``deliver_into``, which delivers into the inbox itself)
      ├── dispatcher    inbox ──▶ RaftState.step ──▶ persist ──▶ send   (the actor: sole writer)
      ├── writer        a leader's new entries ──▶ save, sync ──▶ on_persisted (while they are sent;
      │                 :mod:`trio_raft._write` holds every disk write and the disk watchdogs)
      ├── election timer  a CancelScope whose deadline moves on every heartbeat ──▶ inbox
      ├── applier       commit index ──▶ StateMachine.apply ──▶ proposers' results
      └── role runner   one CancelScope per role; cancelled on every role or term change
            └── (leader) nursery
                  ├── replicator → follower 1
                  └── replicator → follower 2 ...

Only the dispatcher changes the Raft state. Replicators read the log and update their own
follower's send-side progress through synchronous calls, so no await ever splits a decision.
A role or term change cancels the role's scope before the dispatcher awaits anything: no
replicator of an old term runs another step.

Every task runs under :meth:`Node._guard`: an unexpected exception (a bug) stops the whole node
(fail-stop) with one CRITICAL line on the ``trio_raft`` logger naming the node and the task,
fails every waiting proposal and read with :class:`NodeCrashedError`, and leaves
:func:`open_node` as that error (the original is its ``__cause__``). A :class:`RaftError`
(say, a :class:`StorageError`) is the world failing, not a bug: it leaves as it is.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final, Protocol, final

import attrs
import trio

from . import _changes, _events, _oplog, _replicate, _snapshot, _statistics, _write
from ._abc import StateMachine, Storage, Transport
from ._codec import EncodedCommand, FrameError, encode_command
from ._config import Config
from ._core import _membership
from ._core._log import RaftLog, entry_size
from ._core._progress import ProgressState
from ._core._state import RaftState, Ready
from ._errors import (
    InvalidMembershipError,
    LeadershipLostError,
    NodeClosedError,
    NodeCrashedError,
    NotLeaderError,
    ProposalDroppedError,
    RaftError,
)
from ._log_view import LogView
from ._logging import RAFT_FIELDS
from ._messages import MESSAGE_TYPES, AppendRequest, AppendResponse, Message, SnapshotRequest
from ._proposal import Proposal
from ._status import FollowerStatus, Status
from ._sync import Broadcast, Signal, Waiter
from ._types import (
    Entry,
    EntryKind,
    Membership,
    NodeId,
    Role,
    RoleChangeReason,
    SnapshotMeta,
    StoredState,
)
from ._util import unwrap_single_exception_group
from ._wal._errors import StorageFullError

logger: Final = logging.getLogger("trio_raft.node")

INBOX_SIZE = 256
"""Bound of a node's inbox. Everything queued when the dispatcher wakes is handled as one batch
with a single storage sync (group commit), so the bound also caps a batch."""

APPLY_BATCH = 64
"""The applier yields to other tasks after this many entries."""

SNAPSHOT_WARN_INTERVAL_S = 10.0
"""At most one warning this often about snapshots that do not fit on the disk."""


@attrs.frozen
class _Propose:
    command: object
    waiter: Waiter[object]
    frees_space: bool = False
    proposal: Proposal | None = None


@attrs.frozen
class _Read:
    waiter: Waiter[int]


class _Timeout:
    pass


_WAITING_EVENTS = (_Propose, _Read, _changes.ChangeMembership, _changes.TransferLeadership)
_TIMEOUT = _Timeout()
_Event = (
    Message
    | _Propose
    | _Read
    | _changes.ChangeMembership
    | _changes.TransferLeadership
    | _Timeout
    | _write.Retry
    | _snapshot.SnapshotSaved
    | _snapshot.SnapshotReceived
)


class _Observer(Protocol):
    """Private hook for the simulator's invariant checker: told about every state change."""

    def __call__(self, node: Node, event: str, data: object) -> None: ...


@final
class Node:
    """A running Raft node. Create one with :func:`open_node`; do not instantiate directly."""

    def __init__(
        self,
        node_id: NodeId,
        state: RaftState,
        *,
        state_machine: StateMachine,
        transport: Transport,
        storage: Storage,
        rng: random.Random,
        observer: _Observer | None,
    ) -> None:
        self._id = node_id
        self._state = state
        self._sm = state_machine
        self._apply_indexed: Callable[[object, int, int], object] | None = getattr(
            state_machine, "apply_entry", None
        )
        """The state machine's ``apply_entry`` if it has one (an IndexedStateMachine): then
        called instead of ``apply``. Looked up once, here."""
        self._restore_at: Callable[[Iterable[bytes], int, int], object] | None = getattr(
            state_machine, "restore_at", None
        )
        """The state machine's ``restore_at`` if it has one: then called instead of
        ``restore``, with the snapshot's index and term."""
        self._log_view = LogView(state)
        self._transport = transport
        self._storage = storage
        self._rng = rng
        self._observer = observer
        self._inbox_send, self._inbox = trio.open_memory_channel[_Event](INBOX_SIZE)
        self._deliver_into: Callable[[trio.MemorySendChannel[Message] | None], None] | None = None
        """The transport's ``deliver_into`` while it delivers into the inbox."""
        self._last_applied = 0
        self._observed_commit = 0
        self._proposals: dict[int, tuple[int, Waiter[object]]] = {}
        self._reads: dict[int, Waiter[int]] = {}
        self._reads_to_apply: list[tuple[int, Waiter[int]]] = []
        self._apply_signal = Signal()
        self._replication = _replicate.Replication(self)
        self._addresses: dict[NodeId, object] = {}
        """The last known address of every node that was a member (for retiring peers)."""
        self._transport_leader: NodeId | None = None
        """The leader the transport was last told about (kept reachable even when it is not
        a member of this node's configuration, as a leader removing itself is)."""
        self._changed = Broadcast()
        self._role_scope: trio.CancelScope | None = None
        self._election_deadline = math.inf
        self._timer_scope: trio.CancelScope | None = None
        self._dispatching_since = math.inf
        """When the dispatcher took the batch it is handling (``inf`` while it waits for
        one): ``/health`` reports a node whose dispatcher is stuck in one step."""
        self._closed = False
        self._nursery: trio.Nursery | None = None
        self._snapshot_lock = trio.Lock()
        self._snapshot_index = state.log.start_index
        self._snapshotting = False
        self._applied_bytes = 0
        """Estimated bytes of commands applied since the last snapshot was started."""
        self._receiver: _snapshot.Receiver | None = None
        self._crash: tuple[str, Exception] | None = None
        """``(task, exception)`` of the internal error that stopped the node, if one did."""
        self._terms_exhausted_logged = False
        self._logged_role = (state.role, state.term)
        self._logged_leader: NodeId | None = None
        self._leader_known_at = -math.inf
        """When the dispatcher last saw this node leading (a follower measures its leader's
        silence from ``leader_contact_at``)."""
        self._events = _events.EventHub()
        self._counters = _statistics.Counters()
        self._oplog = _oplog.NodeLog(node_id)
        self._published_membership: tuple[int, bool, Membership | None] = (
            state.membership_index, state.membership_committed, state.membership,
        )  # fmt: skip
        self._snapshot_not_before = -math.inf
        """No snapshot is taken before this time (one just failed for disk space)."""
        self._snapshot_warned_at = -math.inf
        """When the last warning about a snapshot that did not fit was logged."""
        self._writer = _write.Writer(self)
        self._snapshot_forced = False
        """:meth:`snapshot` waits for a snapshot at an index the thresholds have not reached."""
        self._snapshot_refusal: tuple[int, StorageFullError | None] = (0, None)
        """How many snapshots did not fit on the disk so far, and the last refusal."""

    # -- public API --------------------------------------------------------------------------

    @property
    def id(self) -> NodeId:
        """This node's id."""
        return self._id

    @property
    def membership(self) -> Membership | None:
        """The configuration in force on this node: the last in its log, committed or not
        (see :attr:`Status.membership_committed`); ``None`` only for a node opened to join a
        cluster (``members=None``) that has received none yet."""
        return self._state.membership

    @property
    def config(self) -> Config:
        """The :class:`Config` this node runs with (the one given to :func:`open_node`, or the
        defaults). Immutable: to change a setting, reopen the node with another one."""
        return self._state.config

    @property
    def log(self) -> LogView:
        """A read-only, live view of this node's log (its entries, their terms, the commit
        index), for debugging and auditing; see :class:`LogView`."""
        return self._log_view

    @property
    def state_machine(self) -> StateMachine:
        """The state machine this node applies committed commands to.

        Reading it directly gives a *stale* view (whatever this node has applied so far); use
        :meth:`read` for a linearizable one. Never mutate it: only the node's applier may.
        """
        return self._sm

    @property
    def status(self) -> Status:
        """A consistent snapshot of this node's state (cheap; computed on access)."""
        st = self._state
        now = _now_or_zero() if st.progress else 0.0
        voters = st.membership.all_voters if st.membership is not None else frozenset()
        followers = {
            peer: FollowerStatus(
                pr.match, pr.next, pr.state is ProgressState.PROBE, peer in voters,
                st.caught_up_for(peer, now),
            )
            for peer, pr in st.progress.items()
        }  # fmt: skip
        return Status(
            node_id=self._id, role=st.role, term=st.term, leader_id=st.leader_id,
            commit_index=st.commit, last_applied=self._last_applied,
            last_log_index=st.log.last_index, last_log_term=st.log.last_term, followers=followers,
            compacted_index=st.log.start_index, snapshot_index=self._snapshot_index,
            no_space=st.no_space, membership=st.membership,
            transfer_target=None if st.transfer is None else st.transfer.target,
            membership_index=st.membership_index, membership_committed=st.membership_committed,
            voted_for=st.voted_for,
        )  # fmt: skip

    def statistics(self) -> _statistics.NodeStatistics:
        """What this node has done since it started (elections, proposals, reads, disk writes
        and their latency, snapshots), with its :attr:`status` and the transport's and the
        storage's own ``statistics()`` when they have one. Cheap; computed on access."""
        parts: list[object | None] = []
        for part in (self._transport, self._storage):
            stats = getattr(part, "statistics", None)
            parts.append(stats() if callable(stats) else None)
        return self._counters.snapshot(self.status, *parts)

    async def propose(self, command: object, *, frees_space: bool = False) -> object:
        """Replicate ``command`` and return what :meth:`StateMachine.apply` (or
        :meth:`IndexedStateMachine.apply_entry`) returned for it on this node once it is
        committed and applied. To learn its log position as soon as it is appended, use
        :meth:`propose_nowait` and :meth:`Proposal.appended`.

        Cancelling the call abandons the wait, not the proposal: it may still commit.

        ``frees_space`` marks a command that shrinks the state (a delete): it is accepted even
        while the leader's disk-space alarm is raised (:attr:`Status.no_space`), and its entry
        may use the storage's reserve. Mark only commands that really free space.

        Raises:
            Exception: whatever :meth:`StateMachine.apply` raised for this command (it was
                committed and applied, and failed the same way on every replica).
            NotLeaderError: this node is not the leader; nothing was appended (safe to retry,
                ideally on ``exc.leader_id``).
            TooManyUncommittedError: back-pressure; nothing was appended.
            NoSpaceError: the leader's disk is low on space and the command is not marked
                ``frees_space``; nothing was appended.
            LeadershipLostError: leadership was lost (or the node shut down) after appending:
                the command may or may not be applied.
            ProposalDroppedError: definitely not applied (its subclasses
                :class:`TooManyUncommittedError` and :class:`NoSpaceError` are the ones raised
                today).
            NodeClosedError: the node has shut down.
            ValueError: ``command`` is not a CBOR value of the wire's data model, or encodes
                to more than ``Config.max_command_bytes``; nothing was appended.
        """
        command = _check_command(command, self._state.config.max_command_bytes)
        waiter: Waiter[object] = Waiter()
        await self._submit(_Propose(command, waiter, frees_space))
        return await waiter.wait()

    def propose_nowait(
        self,
        command: object,
        *,
        frees_space: bool = False,
        on_done: Callable[[Proposal], object] | None = None,
    ) -> Proposal:
        """Hand ``command`` to the node without waiting and return a :class:`Proposal`, whose
        :meth:`~Proposal.result` is what :meth:`propose` would return (or raise).

        For a server answering many clients' requests from one task: no task, and no wait,
        per request. Requests handed over from one task are appended in the order given.

        ``on_done``, if given, is called once with the proposal as soon as its outcome is
        known (then :meth:`Proposal.result_nowait` returns or raises it), from one of the
        node's tasks: it must be quick, must not block and must not raise (an exception it
        raises is logged and ignored). A server can then answer each request from one writer
        task per connection, with no task per request (see :doc:`performance`). It is not
        called if this method raises.

        Raises:
            trio.WouldBlock: the node's inbox is full (``INBOX_SIZE`` events are waiting):
                nothing was handed over; await :meth:`propose` instead, or retry later.
            NodeClosedError: the node has shut down.
            ValueError: as for :meth:`propose`; nothing was handed over.
        """
        encoded = _check_command(command, self._state.config.max_command_bytes)
        proposal = Proposal(on_done)
        self._submit_nowait(_Propose(encoded, proposal._waiter, frees_space, proposal))
        return proposal

    async def read(self, query: object) -> object:
        """Answer ``query`` with :meth:`StateMachine.query` linearizably (ReadIndex, thesis §6.4).

        The leader records its commit index, confirms it is still leader with a round of
        heartbeats acknowledged by a majority, waits until it has applied up to that index, then
        queries. No log entry is written.

        Raises:
            NotLeaderError: this node is not (or stopped being) the leader; retry on the leader.
            NodeClosedError: the node has shut down.
        """
        waiter: Waiter[int] = Waiter()
        await self._submit(_Read(waiter))
        await waiter.wait()
        return self._sm.query(query)

    async def snapshot(self, *, linearizable: bool = False) -> int:
        """Take a snapshot of the state machine now, at the index it has applied, and return
        that index once the snapshot is durable in the storage (the log is then compacted
        behind it, as after an automatic one). If a durable snapshot already covers the applied
        index, return its index at once; 0 if nothing was applied yet (there is nothing to
        snapshot). The snapshot is taken by the applier between two entries, as the automatic
        ones (:attr:`Config.snapshot_entries`) are.

        A follower's applied index may lag the leader's commit by a heartbeat or more. With
        ``linearizable``, the node first confirms it leads and applies up to its commit index
        (as :meth:`read` does), so the snapshot holds every command acknowledged before the
        call: backups take it that way.

        Cancelling the call abandons the wait, not the snapshot: it may still be taken.

        Raises:
            NotLeaderError: ``linearizable`` on a node that is not (or stopped being) the
                leader; nothing was taken.
            TypeError: the state machine has no ``snapshot()``; implement
                :class:`SnapshottingStateMachine`.
            StorageFullError: the snapshot did not fit on the disk (the storage refused it;
                the previous one stays); free space, or take the snapshot on another node.
            NodeClosedError: the node has shut down (or shuts down before the snapshot is
                durable).
            NodeCrashedError: the node stopped on an internal error meanwhile.
        """
        if getattr(self._sm, "snapshot", None) is None:
            raise TypeError(
                f"node {self._id!r}: {type(self._sm).__name__} has no snapshot(); implement "
                "SnapshottingStateMachine (snapshot() and restore()) to take snapshots"
            )
        if linearizable:
            read: Waiter[int] = Waiter()
            await self._submit(_Read(read))
            await read.wait()  # confirmed leader, applied up to its commit index
        target = self._last_applied
        refusals = self._snapshot_refusal[0]
        if target > self._snapshot_index:
            self._snapshot_forced = True
            self._apply_signal.set()
        while True:
            if self._crash is not None:
                raise self._crash_error() from self._crash[1]
            if self._closed:
                raise NodeClosedError(f"node {self._id!r} has shut down; open a new node")
            if self._snapshot_index >= target:
                await trio.lowlevel.checkpoint()
                return self._snapshot_index
            count, error = self._snapshot_refusal
            if count != refusals and error is not None:
                raise error
            await self._changed.wait()

    def events(
        self, buffer: int = _events.DEFAULT_BUFFER
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[_events.Event]]:
        """Subscribe to this node's events: ``async with node.events() as events: async for
        event in events: ...`` yields :class:`RoleChanged`, :class:`LeaderChanged` and
        :class:`MembershipChanged` as they happen from the moment of subscribing (read
        :attr:`status` for the state before), until the context exits or the node shuts down.

        The node never waits for a subscriber: one that falls more than ``buffer`` events
        behind loses the excess and receives one :class:`EventsDropped` with their count
        before the next event it gets. Any number of subscribers may be open at once.

        Raises:
            ValueError: ``buffer`` is not a positive int.
        """
        return self._events.subscribe(buffer)

    async def wait_status(self, predicate: Callable[[Status], bool]) -> Status:
        """Block until ``predicate(self.status)`` holds and return that status.

        Raises:
            NodeClosedError: the node shut down first.
        """
        while True:
            if self._closed:
                raise NodeClosedError(f"node {self._id!r} has shut down")
            status = self.status
            if predicate(status):
                return status
            await self._changed.wait()

    # -- membership ---------------------------------------------------------------------------

    async def add_learner(self, node_id: NodeId, address: object = _membership.KEEP) -> Membership:
        """Add ``node_id`` as a learner (it receives the log but does not vote), or change a
        member's address; one configuration entry. A voter stays a voter.

        Args:
            node_id: The node to add. Open it with ``members=None`` (join mode) and a
                transport that accepts this cluster's members (their addresses are in
                ``leader.membership.addresses``).
            address: What the transports need to reach it (trio-raft's tools use
                ``{"peer": URL, "client": URL}``). Default: keep the current one (``None``
                for a new member).

        Returns:
            The configuration, once committed.

        Raises:
            NotLeaderError: not the leader; nothing changed.
            MembershipError: refused (a change in flight, an invalid request, ...); nothing
                changed. See :doc:`membership` for what each subclass means.
            LeadershipLostError: leadership was lost after the change was appended: unknown
                outcome; retrying is safe (membership calls are idempotent).
            NodeClosedError: the node shut down before anything was submitted.
        """
        return await _changes.change(
            self, lambda m: _membership.with_learner(m, node_id, address), None
        )

    async def promote(
        self, node_id: NodeId, *, catch_up_timeout_s: float | None = None
    ) -> Membership:
        """Make learner ``node_id`` a voter, through a joint configuration (Raft thesis §4.3),
        once it has stayed within :attr:`Config.catch_up_entries` of this leader for
        ``election_timeout_s_max``.

        Args:
            node_id: A learner (a voter: nothing to do).
            catch_up_timeout_s: How long to wait for it to catch up
                (:attr:`Config.catch_up_timeout_s` if ``None``).

        Returns:
            The configuration, once committed (the joint phase is left automatically).

        Raises:
            LearnerNotCaughtUpError: it did not catch up in time; it stays a learner.
            InvalidMembershipError: ``node_id`` is not a member.
            NotLeaderError, MembershipError, LeadershipLostError, NodeClosedError: as for
                :meth:`add_learner`.
        """
        return await _changes.change(
            self, lambda m: _membership.promoted(m, node_id), catch_up_timeout_s
        )

    async def add_voter(
        self,
        node_id: NodeId,
        address: object = _membership.KEEP,
        *,
        catch_up_timeout_s: float | None = None,
    ) -> Membership:
        """:meth:`add_learner`, then :meth:`promote`. If the promotion fails, the node stays a
        learner (remove it, or promote it later)."""
        await self.add_learner(node_id, address)
        return await self.promote(node_id, catch_up_timeout_s=catch_up_timeout_s)

    async def demote(self, node_id: NodeId) -> Membership:
        """Make voter ``node_id`` a learner (joint consensus). The leader may demote itself:
        it leads until the change commits, then hands over and steps down.

        Raises:
            InvalidMembershipError: ``node_id`` is not a member, or is the last voter.
            NotLeaderError, MembershipError, LeadershipLostError, NodeClosedError: as for
                :meth:`add_learner`.
        """
        return await _changes.change(self, lambda m: _membership.demoted(m, node_id), None)

    async def remove(self, node_id: NodeId) -> Membership:
        """Remove ``node_id``: a voter through a joint configuration, a learner with one entry.
        Removing a node that is not a member returns at once. The leader may remove itself:
        it leads (without counting itself) until the change commits, then hands leadership
        to the most up-to-date remaining voter (TimeoutNow) and steps down.

        Raises:
            InvalidMembershipError: ``node_id`` is the last voter.
            NotLeaderError, MembershipError, LeadershipLostError, NodeClosedError: as for
                :meth:`add_learner`.
        """
        return await _changes.change(self, lambda m: _membership.without(m, node_id), None)

    async def change_membership(
        self,
        *,
        voters: Collection[NodeId],
        learners: Collection[NodeId] = (),
        addresses: Mapping[NodeId, object] | None = None,
        catch_up_timeout_s: float | None = None,
    ) -> Membership:
        """Make the configuration exactly ``voters`` and ``learners`` (the general case: grow,
        shrink, replace several nodes at once). New voters must already be learners; they are
        waited for as in :meth:`promote`. Addresses default to the current ones (``None`` for
        a new learner).

        Raises:
            InvalidMembershipError: the request is impossible (no voter, a new voter that is
                not a learner, limits).
            LearnerNotCaughtUpError, NotLeaderError, MembershipError, LeadershipLostError,
            NodeClosedError: as for :meth:`promote`.
        """
        voters, learners = _as_ids(voters, "voters"), _as_ids(learners, "learners")
        return await _changes.change(
            self,
            lambda m: _membership.exactly(m, voters, learners, addresses),
            catch_up_timeout_s,
        )

    async def transfer_leadership(self, target: NodeId | None = None) -> NodeId:
        """Hand leadership to ``target`` (default: the voter with the most log among those
        that answered recently) and return the node that leads next (normally ``target``).

        New proposals get :exc:`NotLeaderError` naming the target meanwhile; proposals
        already appended commit first. The target campaigns at once (TimeoutNow), past
        PreVote and the other nodes' CheckQuorum leases.

        Raises:
            LeadershipTransferError: this node still leads after ``election_timeout_s_max``
                (it accepts proposals again), or it stepped down but learned of no new leader
                in time (``exc.moved``).
            InvalidMembershipError: ``target`` is not a voter, or there is no other voter.
            MembershipChangeInProgressError: a membership change or another transfer is in
                flight.
            NotLeaderError: not the leader.
        """
        return await _changes.transfer(self, target)

    async def wait_leader(self) -> NodeId:
        """Block until this node knows a leader (possibly itself) and return its id."""
        status = await self.wait_status(lambda s: s.leader_id is not None)
        assert status.leader_id is not None
        return status.leader_id

    # -- plumbing ----------------------------------------------------------------------------

    async def _submit(self, event: _Event) -> None:
        try:
            self._submit_nowait(event)  # the caller then waits for the answer: its checkpoint
        except trio.WouldBlock:
            try:
                await self._inbox_send.send(event)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise NodeClosedError(f"node {self._id!r} has shut down; open a new node") from None

    def _submit_nowait(self, event: _Event) -> None:
        """Put ``event`` in the inbox; raises :exc:`trio.WouldBlock` if it is full."""
        if self._crash is not None:
            raise self._crash_error() from self._crash[1]
        if self._closed:
            raise NodeClosedError(f"node {self._id!r} has shut down; open a new node")
        try:
            self._inbox_send.send_nowait(event)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise NodeClosedError(f"node {self._id!r} has shut down; open a new node") from None

    def _start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._reset_election_timer()
        if self._state.membership is not None:
            self._update_transport()
        deliver_into = getattr(self._transport, "deliver_into", None)
        if deliver_into is not None:
            # Straight into the inbox: a task step less per message than the pump.
            deliver_into(self._inbox_send)
            self._deliver_into = deliver_into
        else:
            self._spawn(nursery, "pump", self._pump)
        self._spawn(nursery, "dispatcher", self._dispatch)
        self._spawn(nursery, "timer", self._run_election_timer)
        self._spawn(nursery, "applier", self._apply)
        self._spawn(nursery, "roles", self._run_roles)
        self._spawn(nursery, "disk watchdog", self._writer.watch_disk)
        self._spawn(nursery, "writer", self._writer.run)
        space_low = getattr(self._storage, "space_low", None)
        if space_low is not None:
            self._writer.space_aware = True
            self._spawn(nursery, "space watch", self._writer.watch_space, space_low)

    def _spawn(
        self, nursery: trio.Nursery, task: str, fn: Callable[..., Awaitable[object]], *args: object
    ) -> None:
        """Start ``fn(*args)`` in ``nursery`` as task ``task`` of this node, under the guard."""
        nursery.start_soon(self._guard, task, fn, *args, name=f"trio_raft {task} {self._id}")

    async def _guard(self, task: str, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run one task of the node; turn an internal error into a fail-stop of the node."""
        try:
            await fn(*args)
        except RaftError:
            raise  # the world failed (e.g. storage): not a bug, keeps its type
        except Exception as exc:
            if self._crash is None:
                self._crash = (task, exc)
                logger.critical(
                    "node %r stopped: internal error in its %s task (%s: %s); this is a bug, "
                    "please report it with this traceback",
                    self._id, task, type(exc).__name__, exc, exc_info=exc,
                )  # fmt: skip
                self._fail_waiters()
            raise self._crash_error() from self._crash[1]

    def _crash_error(self) -> NodeCrashedError:
        assert self._crash is not None
        task, exc = self._crash
        error = NodeCrashedError(self._id, task, exc)
        error.__cause__ = exc  # also for the waiters it fails (never raised here)
        return error

    def _fail_waiters(self) -> None:
        """The node crashed: fail everything waiting on it (they would wait forever)."""
        for event in self._drain_inbox():
            if isinstance(event, _WAITING_EVENTS):
                event.waiter.fail(self._crash_error())
        for _, waiter in self._proposals.values():
            waiter.fail(self._crash_error())
        self._proposals.clear()
        for read in [*self._reads.values(), *(w for _, w in self._reads_to_apply)]:
            read.fail(self._crash_error())
        self._reads.clear()
        self._reads_to_apply.clear()
        self._changed.notify()

    def _drain_inbox(self) -> list[_Event]:
        events = []
        while True:
            try:
                events.append(self._inbox.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return events

    def _close(self) -> None:
        self._closed = True
        if self._deliver_into is not None:
            self._deliver_into(None)  # the transport may serve a later node
            self._deliver_into = None
        self._inbox_send.close()
        # Requests that never reached the dispatcher were never appended.
        for event in self._drain_inbox():
            if isinstance(event, _WAITING_EVENTS):
                event.waiter.fail(NodeClosedError(f"node {self._id!r} shut down; not appended"))
        for _, waiter in self._proposals.values():
            waiter.fail(LeadershipLostError(f"node {self._id!r} shut down; outcome unknown"))
        self._proposals.clear()
        for read in [*self._reads.values(), *(w for _, w in self._reads_to_apply)]:
            read.fail(NodeClosedError(f"node {self._id!r} shut down before the read completed"))
        self._reads.clear()
        self._reads_to_apply.clear()
        self._events.close()
        self._changed.notify()

    def _notify(self, event: str, data: object = None) -> None:
        if self._observer is not None:
            self._observer(self, event, data)

    async def _pump(self) -> None:
        inbox = self._inbox_send
        async for message in self._transport.receive_channel:  # a checkpoint per message
            try:
                inbox.send_nowait(message)
            except trio.WouldBlock:
                await inbox.send(message)

    # -- the actor ---------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            self._dispatching_since = math.inf
            batch = [await self._inbox.receive()]
            self._dispatching_since = trio.current_time()
            while len(batch) < INBOX_SIZE:
                try:
                    batch.append(self._inbox.receive_nowait())
                except trio.WouldBlock:
                    break
            now = trio.current_time()
            for event in batch:
                if isinstance(event, _snapshot.SnapshotSaved | _snapshot.SnapshotReceived):
                    await self._process_ready()  # effects so far first: these await storage
                    if self._writer.pending:  # and the leader's entries, before a compaction
                        await self._writer.persist(Ready())
                    if isinstance(event, _snapshot.SnapshotSaved):
                        await _snapshot.compact_after(self, event.meta)
                    else:
                        await _snapshot.install(self, event)
                    now = trio.current_time()
                else:
                    self._handle(event, now)
            await self._process_ready()

    def _handle(self, event: _Event, now: float) -> None:
        st = self._state
        if isinstance(event, MESSAGE_TYPES):
            if isinstance(event, AppendResponse):
                self._oplog.append_response(st, event, now)
            st.step(event, now)
            if isinstance(event, SnapshotRequest):
                _snapshot.on_chunk(self, event)
            elif isinstance(event, AppendRequest):
                _snapshot.drop_stale_download(self)
        elif isinstance(event, _Propose):
            try:
                (entry,) = st.propose([event.command], frees_space=event.frees_space)
            except RaftError as exc:
                self._counters.proposals_refused[type(exc).__name__] += 1
                event.waiter.fail(exc)
            else:
                self._counters.proposals_accepted += 1
                self._proposals[entry.index] = (entry.term, event.waiter)
                if event.proposal is not None:
                    event.proposal._appended(entry.index, entry.term)
        elif isinstance(event, _Read):
            try:
                self._reads[st.read_index()] = event.waiter
            except NotLeaderError as exc:
                event.waiter.fail(exc)
        elif isinstance(event, _write.Retry):
            pass  # the Ready is processed after every batch
        elif isinstance(event, (_changes.ChangeMembership, _changes.TransferLeadership)):
            _changes.handle(self, event, now)
        else:
            st.on_election_timeout(now)
            if st.terms_exhausted and st.role is not Role.LEADER:
                self._log_terms_exhausted()

    async def _process_ready(self) -> None:
        st = self._state
        while st.has_ready():
            ready = st.take_ready()
            if ready.role_changed:
                self._on_role_changed(ready.transitions[-1][2])
                self._log_transitions(ready.transitions)
            if ready.membership_changed:
                self._on_membership_changed()
            elif ready.replicas_changed:
                self._replication.sync()
                self._update_transport()
            if ready.reset_election_timer:
                self._reset_election_timer()
            self._route_reads(ready)
            if (
                ready.entries
                and ready.hard_state is None
                and ready.truncate_from is None
                and st.role is Role.LEADER
            ):
                # A leader's own new entries: saved by the writer while the replicators send
                # them (thesis §10.2.1); it counts its own copy once that is durable.
                self._writer.hand_over(ready.entries, st.term)
            elif ready.must_sync and (unsaved := await self._writer.persist(ready)) is not None:
                # Refused for disk space (retried with the next event or poll). Send what does
                # not promise the unsaved entries: votes (the hard state is saved), refusals,
                # acknowledgements of saved entries (so the leader still sees this node).
                for message in ready.messages:
                    if not (
                        isinstance(message, AppendResponse)
                        and message.success
                        and message.match_index >= unsaved
                    ):
                        self._transport.send(message)
                break
            for message in ready.messages:
                self._transport.send(message)
        if st.role is Role.LEADER:
            self._leader_known_at = trio.current_time()
        if st.leader_id != self._logged_leader:
            self._logged_leader = st.leader_id
            self._events.publish(_events.LeaderChanged(st.term, st.leader_id))
            if st.leader_id is not None and st.leader_id != self._id:
                facts = {
                    "node": self._id,
                    "event": "leader_changed",
                    "term": st.term,
                    "leader": st.leader_id,
                }
                logger.info(
                    "node %r: the leader of term %d is %r", self._id, st.term, st.leader_id,
                    extra={RAFT_FIELDS: facts},
                )  # fmt: skip
        if st.leader_id != self._transport_leader and st.membership is not None:
            self._update_transport()  # drop a former leader that is no longer a member
        self._writer.kick()  # a retry of entries the storage refused
        self._wake()

    def _wake(self) -> None:
        """After the state changed: wake the tasks that act on it."""
        st = self._state
        # Answers change progress and the commit index without producing a Ready.
        if st.role is Role.LEADER:
            self._replication.wake()
        membership = (st.membership_index, st.membership_committed, st.membership)
        if membership != self._published_membership:
            self._published_membership = membership
            self._events.publish(_events.MembershipChanged(st.membership, *membership[:2]))
        if st.commit > self._observed_commit:
            self._observed_commit = st.commit
            self._notify("commit", st.commit)
            self._apply_signal.set()
        self._changed.notify()

    def _on_snapshot_refused(self, exc: StorageFullError) -> None:
        """A snapshot did not fit on the disk: the node goes on without it (a follower's
        leader resends it, a local one is retried later)."""
        self._snapshot_refusal = (self._snapshot_refusal[0] + 1, exc)
        self._changed.notify()
        now = trio.current_time()
        if now >= self._snapshot_warned_at + SNAPSHOT_WARN_INTERVAL_S:
            self._snapshot_warned_at = now
            logger.warning(
                "node %r: snapshot not saved: %s", self._id, exc,
                extra={RAFT_FIELDS: {"node": self._id, "event": "snapshot_refused"}},
            )  # fmt: skip

    def _update_transport(self) -> None:
        """Tell a membership-aware transport whom to reach: every member but this node, and
        the leader this node knows (which may be one that is removing itself)."""
        update = getattr(self._transport, "update_members", None)
        m = self._state.membership
        if m is not None:
            self._addresses.update(m.addresses)  # retiring peers keep their last address
        if update is not None and m is not None:
            peers = set(self._state.replica_ids)
            leader = self._transport_leader = self._state.leader_id
            if leader is not None and leader != self._id:
                # A leader removing itself leads until the new configuration commits: its
                # followers must still answer it after appending that configuration.
                peers.add(leader)
            update({peer: self._addresses.get(peer) for peer in sorted(peers)})

    def _on_membership_changed(self) -> None:
        st = self._state
        self._replication.sync()
        self._update_transport()
        self._notify("membership", (st.membership_index, st.membership))

    def _on_role_changed(self, reason: RoleChangeReason) -> None:
        st = self._state
        if self._role_scope is not None:
            self._role_scope.cancel()
        rx = self._receiver
        if rx is not None and (st.role is not Role.FOLLOWER or rx.key[2] != st.term):
            rx.scope.cancel()  # a download from a former leader (not one that just started)
            self._receiver = None
        self._notify("role", (st.role, st.term, reason))
        if st.role is not Role.LEADER:
            for index in [i for i in self._proposals if i > st.commit]:
                _, waiter = self._proposals.pop(index)
                waiter.fail(
                    LeadershipLostError(
                        f"node {self._id!r} lost leadership (now {st.role.value} in term "
                        f"{st.term}) before entry {index} committed; it may still commit"
                    )
                )

    def _log_transitions(self, transitions: list[tuple[Role, int, RoleChangeReason]]) -> None:
        """One line per role or term change, with why (a leader losing its role is a
        warning: its clients see errors)."""
        st = self._state
        for role, term, reason in transitions:
            old_role, old_term = self._logged_role
            self._logged_role = (role, term)
            self._events.publish(_events.RoleChanged(term, role, reason))
            self._counters.transition(role, reason)
            detail = reason.value
            if reason is RoleChangeReason.ELECTION_TIMEOUT:
                known = max(st.leader_contact_at, self._leader_known_at)
                silent = trio.current_time() - known
                detail += (
                    f": no leader heard for {silent:.2f} s"
                    if math.isfinite(silent)
                    else ": no leader heard since the node started"
                )
            elif reason is RoleChangeReason.CHECK_QUORUM:
                detail += (
                    ": no majority of the voters answered within "
                    f"{st.config.election_timeout_s_min} s"
                )
            demoted = old_role is Role.LEADER and role is not Role.LEADER
            again = (old_role, old_term) == (role, term)  # another pre-vote round: routine
            logger.log(
                logging.WARNING if demoted else logging.DEBUG if again else logging.INFO,
                "node %r: %s in term %d -> %s in term %d (%s)",
                self._id, old_role.value, old_term, role.value, term, detail,
                extra={RAFT_FIELDS: {
                    "node": self._id, "event": "role_changed", "role": role.value, "term": term,
                    "previous_role": old_role.value, "previous_term": old_term,
                    "reason": reason.name.lower(),
                }},
            )  # fmt: skip

    def _route_reads(self, ready: Ready) -> None:
        self._counters.reads_failed += len(ready.failed_reads)
        self._counters.reads_confirmed += len(ready.confirmed_reads)
        for read_id in ready.failed_reads:
            waiter = self._reads.pop(read_id, None)
            if waiter is not None:
                waiter.fail(NotLeaderError(self._id, self._state.leader_id))
        for read_id, index in ready.confirmed_reads:
            waiter = self._reads.pop(read_id, None)
            if waiter is None:
                continue
            if index <= self._last_applied:
                waiter.set(index)
            else:
                self._reads_to_apply.append((index, waiter))

    # -- timers and roles ----------------------------------------------------------------------

    def _log_terms_exhausted(self) -> None:
        if self._terms_exhausted_logged:
            return
        self._terms_exhausted_logged = True
        logger.error(
            "node %r: term %d is the largest a node accepts (MAX_TERM); it will not campaign "
            "again. Something drove the cluster's terms to 2**62: look for a peer sending "
            "forged terms, then rebuild the cluster from its data (a new cluster_id)",
            self._id,
            self._state.term,
        )

    def _reset_election_timer(self) -> None:
        cfg = self._state.config
        now = trio.current_time()
        if self._state.role is Role.LEADER:
            # The CheckQuorum round, or a leadership transfer's deadline if that is sooner.
            self._election_deadline = max(now, self._state.leader_deadline)
        elif not self._state.can_campaign:
            self._election_deadline = math.inf  # learners, removed and joining nodes
        else:
            timeout = self._rng.uniform(cfg.election_timeout_s_min, cfg.election_timeout_s_max)
            self._election_deadline = now + timeout
        if self._timer_scope is not None:
            self._timer_scope.deadline = self._election_deadline

    async def _run_election_timer(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._election_deadline) as self._timer_scope:
                await trio.sleep_forever()
            self._election_deadline = math.inf  # until the dispatcher draws the next one
            await self._inbox_send.send(_TIMEOUT)

    async def _run_roles(self) -> None:
        while True:
            with trio.CancelScope() as self._role_scope:
                if self._state.role is Role.LEADER:
                    await self._replication.lead(self._state.term)
                await trio.sleep_forever()

    # -- applier -------------------------------------------------------------------------------

    async def _apply(self) -> None:
        st = self._state
        while True:
            await self._apply_signal.wait()
            applied = 0
            while self._last_applied < st.commit:
                entry = st.log.entry(self._last_applied + 1)
                self._apply_entry(entry)
                applied += 1
                if applied % APPLY_BATCH == 0:
                    await trio.lowlevel.checkpoint()
            _snapshot.maybe_take(self)
            if self._reads_to_apply:
                waiting = []
                for index, waiter in self._reads_to_apply:
                    if index <= self._last_applied:
                        waiter.set(index)
                    else:
                        waiting.append((index, waiter))
                self._reads_to_apply = waiting
            self._changed.notify()

    def _apply_entry(self, entry: Entry) -> None:
        result: object = None
        failure: Exception | None = None
        if entry.kind is EntryKind.COMMAND:
            self._counters.entries_applied += 1
            try:
                if self._apply_indexed is not None:
                    result = self._apply_indexed(entry.command, entry.index, entry.term)
                else:
                    result = self._sm.apply(entry.command)
            except Exception as exc:
                self._counters.apply_errors += 1
                # The command's outcome, the same on every replica (apply is deterministic):
                # it goes back to the proposer; the node and the cluster carry on.
                failure = exc
        self._last_applied = entry.index
        self._applied_bytes += entry_size(entry)
        self._notify("apply", (entry, _describe_failure(failure) if failure else result))
        proposal = self._proposals.pop(entry.index, None)
        if proposal is None:
            return
        term, waiter = proposal
        if term == entry.term:
            if failure is not None:
                waiter.fail(failure)
            else:
                waiter.set(result)
        else:
            waiter.fail(
                ProposalDroppedError(
                    f"entry {entry.index} of term {term} was replaced by another leader's entry "
                    f"of term {entry.term}; it was not applied, retry"
                )
            )


def _now_or_zero() -> float:
    """The trio clock, or 0 outside a run (a status read after the node's run ended)."""
    try:
        return trio.current_time()
    except RuntimeError:
        return 0.0


def _as_ids(ids: Collection[NodeId], what: str) -> frozenset[NodeId]:
    if isinstance(ids, str):
        raise InvalidMembershipError(f"{what} must be a collection of ids, not a str", "limits")
    return frozenset(ids)


def _check_command(command: object, max_bytes: int) -> EncodedCommand:
    """Refuse, before anything is appended, a command no storage or transport could carry (it
    would block replication of every entry behind it); return it with its encoding, made here
    once, which the entry keeps for the WAL, the wire and the size accounting. An
    :class:`EncodedCommand` (a server that checked a request with this function) is only
    checked for size."""
    encoded = command if type(command) is EncodedCommand else _encode_checked(command)
    size = len(encoded.data)
    if size > max_bytes:
        raise ValueError(
            f"command encodes to {size} bytes, over Config.max_command_bytes={max_bytes}; "
            "store large values elsewhere and propose a reference, or raise the limit"
        )
    return encoded


def _encode_checked(command: object) -> EncodedCommand:
    try:
        return encode_command(command)
    except FrameError as exc:
        raise ValueError(
            f"cannot propose {command!r:.100}: {exc}. Commands must be CBOR values: None, bool, "
            "int, float, str, bytes, lists/tuples, dicts with str or bytes keys"
        ) from None


def _describe_failure(exc: Exception) -> tuple[str, str]:
    """A comparable stand-in for an exception result (replicas must fail alike)."""
    return (type(exc).__qualname__, str(exc))


async def _recover(storage: Storage, state_machine: StateMachine) -> StoredState:
    """Load the durable state; restore the state machine from the snapshot, if any, and make
    the log start at the snapshot (a crash may have come between a snapshot's save and the
    log's compaction, or an installed snapshot may contradict the old log)."""
    stored = await storage.load()
    loaded = await storage.load_snapshot()
    if loaded is None:
        if stored.log_start_index:
            raise RuntimeError(
                f"storage's log starts after index {stored.log_start_index} but it holds no "
                "snapshot: the data directory is damaged; restore it from a backup"
            )
        return stored
    meta, chunks = loaded
    restore_at = getattr(state_machine, "restore_at", None)
    restore = getattr(state_machine, "restore", None)
    if restore_at is not None:
        restore_at([chunk async for chunk in chunks], meta.index, meta.term)
    elif restore is not None:
        restore([chunk async for chunk in chunks])
    else:
        raise TypeError(
            "storage holds a snapshot but the state machine has no restore(); pass the state "
            "machine that wrote it (a SnapshottingStateMachine)"
        )
    log = RaftLog(
        stored.entries, start_index=stored.log_start_index, start_term=stored.log_start_term
    )
    if meta.index <= log.start_index:
        if meta.index == log.start_index:  # the configuration where the log starts
            return attrs.evolve(stored, membership=meta.membership)
        return stored
    if log.match_term(meta.index, meta.term):
        entries = tuple(log.slice(meta.index + 1, log.last_index + 1))
    else:
        entries = ()
        await storage.save(truncate_from=log.start_index + 1)
        await storage.sync()
    await storage.compact(meta.index, meta.term)
    return StoredState(stored.hard_state, entries, meta.index, meta.term, meta.membership)


@asynccontextmanager
async def open_node(
    node_id: NodeId,
    members: Membership | Collection[NodeId] | None,
    *,
    state_machine: StateMachine,
    transport: Transport,
    storage: Storage,
    config: Config | None = None,
    rng: random.Random | None = None,
) -> AsyncIterator[Node]:
    """Run a Raft node for the duration of the ``async with`` block.

    The node loads its term, vote and log from ``storage``, then runs its task tree (see
    :doc:`design`) in a nursery of its own. Leaving the block stops every task; proposals still
    waiting fail with :class:`LeadershipLostError` and reads with :class:`NodeClosedError`.

    Args:
        node_id: This node's id; a member of ``members`` unless that is ``None``.
        members: The *bootstrap* configuration, used only while ``storage`` holds none (a
            new cluster, or one upgraded from a release without membership changes): the
            ids of every voter, this node included, or a :class:`Membership` (not joint) with
            learners and addresses. Give every node of a new cluster the same value. The
            cluster's first leader writes it into the log; from then on the log (and its
            snapshots) is the source of truth and this argument is ignored. ``None`` opens a
            node that joins an existing cluster: it never campaigns, and waits for the leader
            to replicate the configuration that adds it (see :doc:`membership`).
        state_machine: The replicated state; see :class:`StateMachine`.
        transport: Carries messages to and from peers; see :class:`Transport`.
        storage: Durable term, vote and log; see :class:`Storage`.
        config: Timing and flow-control settings; :class:`Config()` by default.
        rng: Source of the election timeout jitter (seed it to make a run repeatable).

    Raises:
        ValueError: ``node_id`` is not a member of ``members``, or ``members`` is joint.
    """
    async with _open_node(
        node_id, members, state_machine=state_machine, transport=transport, storage=storage,
        config=config, rng=rng, observer=None,
    ) as node:  # fmt: skip
        yield node


@asynccontextmanager
async def _open_node(
    node_id: NodeId,
    members: Membership | Collection[NodeId] | None,
    *,
    state_machine: StateMachine,
    transport: Transport,
    storage: Storage,
    config: Config | None,
    rng: random.Random | None,
    observer: _Observer | None,
) -> AsyncIterator[Node]:
    stored = await _recover(storage, state_machine)
    state = RaftState(node_id, members, config or Config(), stored)
    node = Node(
        node_id, state, state_machine=state_machine, transport=transport, storage=storage,
        rng=rng or random.Random(), observer=observer,
    )  # fmt: skip
    node._last_applied = state.log.start_index
    if observer is not None and stored.log_start_index:
        observer(
            node,
            "restore",
            SnapshotMeta(stored.log_start_index, stored.log_start_term, stored.membership),
        )
    try:
        with unwrap_single_exception_group():
            async with trio.open_nursery() as nursery:
                node._start(nursery)
                try:
                    yield node
                except Exception:
                    await _changes.transfer_on_close(node)  # a graceful exit (not a cancel)
                    raise
                else:
                    await _changes.transfer_on_close(node)
                finally:
                    nursery.cancel_scope.cancel()
    except BaseException as exc:
        if node._crash is None or isinstance(exc, (NodeCrashedError, KeyboardInterrupt)):
            raise
        # Tasks stopped by the crash may add their own errors: the crash is the story.
        raise node._crash_error() from node._crash[1]
    finally:
        node._close()
