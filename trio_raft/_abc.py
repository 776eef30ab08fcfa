"""The three extension points of a node: `StateMachine`, `Storage` and `Transport`.

Each is a :class:`typing.Protocol`: implement the methods, no base class needed. The contracts in
the docstrings are what the node relies on for safety; :mod:`trio_raft.testing` ships in-memory
implementations of the last two.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from typing import Protocol

import trio

from ._messages import Message
from ._types import Entry, HardState, NodeId, SnapshotMeta, StoredState


class StateMachine(Protocol):
    """The replicated application state.

    ``apply`` must be deterministic: given the same commands in the same order, every replica
    must return the same results and reach the same state. It is called exactly once per committed
    command entry, in log order, from the node's applier task (never concurrently). If it raises
    an :class:`Exception` (say, for a malformed command), that exception is the command's outcome:
    it must leave the state unchanged, it is raised from the proposer's :meth:`Node.propose`, and
    the node carries on. Log compaction needs snapshots as well: see
    :class:`SnapshottingStateMachine`. A state machine that needs each command's log index
    and term implements :class:`IndexedStateMachine`.
    """

    def apply(self, command: object) -> object:
        """Apply one committed command and return its result (handed to the proposer)."""
        ...

    def query(self, query: object) -> object:
        """Answer a read-only query against the current state (used by :meth:`Node.read`)."""
        ...


class IndexedStateMachine(StateMachine, Protocol):
    """A :class:`StateMachine` told where each command sits in the log: the node calls
    :meth:`apply_entry` instead of :meth:`~StateMachine.apply`, with the entry's index and
    term. For state machines that version their data by log index, de-duplicate, or keep
    their own durable copy of the state and must skip what they already hold after a restart.

    The node looks ``apply_entry`` up once, when it opens, and then never calls ``apply``;
    ``apply`` stays in the protocol only so that an indexed state machine fits wherever a
    :class:`StateMachine` is expected (define it for direct use, or have it raise
    :exc:`TypeError`). Everything :class:`StateMachine` says about ``apply`` holds for
    ``apply_entry``: deterministic, called exactly once per committed command entry, in log
    order, never concurrently; an exception is the command's outcome and must leave the
    state unchanged.

    **Indices.** Only command entries are applied: a leader's no-op and configuration entries
    take indices too, so the indices of successive calls increase strictly but may skip
    numbers. A restarted node starts again from its latest snapshot, or from an empty state
    machine at index 1 if it has none, and re-applies every committed command after that: a
    state machine that keeps its state outside the node (on disk) and survives the restart
    sees indices it already applied again, and must skip every ``index`` at or below the last
    one it holds (the node re-applies them in the same order with the same commands).

    **Snapshots** (with :class:`SnapshottingStateMachine`). A snapshot is taken between two
    applies, at the node's applied index, which may be past the last *command* index the
    state machine saw (a no-op or configuration entry after it). To learn that index on a
    restore, define ``restore_at`` (see :class:`SnapshottingStateMachine`), or keep the last
    index applied in the snapshot bytes; the next ``apply_entry`` then has a greater index (the
    snapshot covers every command up to its own index, and the node applies only what comes
    after it).
    """

    def apply_entry(self, command: object, index: int, term: int) -> object:
        """Apply one committed command, the entry at ``index`` of ``term``, and return its
        result (handed to the proposer)."""
        ...


class SnapshottingStateMachine(StateMachine, Protocol):
    """A :class:`StateMachine` that can be snapshotted, which log compaction needs.

    ``snapshot`` is called by the applier between two ``apply`` calls and must capture the
    state at that point at once (say, copy it or switch to copy-on-write); the returned iterable
    is consumed later, in chunks, possibly while ``apply`` goes on. ``restore`` replaces the
    whole state with a snapshot's bytes (as produced by ``snapshot``, possibly on another node
    and re-chunked).

    **Where the snapshot ends (optional).** A state machine may also define
    ``restore_at(self, chunks: Iterable[bytes], index: int, term: int) -> None``: the node
    then calls it instead of ``restore`` (when it opens from a stored snapshot, and when it
    installs one from its leader), with the index and term of the last log entry the snapshot
    covers. The next entry it applies comes after ``index``. Like ``apply_entry``, it is
    looked up once, when the node opens.
    """

    def snapshot(self) -> Iterable[bytes]:
        """Capture the current state; return its serialization as chunks of bytes."""
        ...

    def restore(self, chunks: Iterable[bytes]) -> None:
        """Replace the current state by the one serialized in ``chunks``."""
        ...


class Storage(Protocol):
    """Durable home of a node's hard state and log.

    Writes are buffered by :meth:`save` and become durable only at :meth:`sync`; the node calls
    ``sync`` before it sends any message or counts any vote that depends on the writes (Raft's
    persistence rule), and batches many entries into one ``save``/``sync`` pair (group commit).
    A crash may lose anything saved after the last completed ``sync``, but never part of a
    ``save`` that was synced, and never reorders writes.

    **Disk space (optional).** A storage that can run out of space may also define
    ``async def space_low(self) -> bool`` (true while free space is below its reserve) and
    accept ``use_reserve: bool = False`` in ``save``, raising
    :exc:`~trio_raft.StorageFullError` (and writing nothing) for entries that do not fit. The
    node then keeps a disk-space alarm (see :attr:`Status.no_space <trio_raft.Status.no_space>`)
    and passes ``use_reserve=True`` only for entries that must get through while the disk is
    low. :class:`~trio_raft.FileStorage` does all of this; a storage without ``space_low`` is
    never asked to.
    """

    async def load(self) -> StoredState:
        """Return the durable state to restart from (empty for a new node)."""
        ...

    async def save(
        self,
        *,
        hard_state: HardState | None = None,
        truncate_from: int | None = None,
        entries: Sequence[Entry] = (),
    ) -> None:
        """Buffer, in this order: a new hard state; dropping every entry at index >=
        ``truncate_from``; appending ``entries`` (contiguous, following the last kept entry)."""
        ...

    async def sync(self) -> None:
        """Make everything saved so far durable. Returns only when it is."""
        ...

    def last_index(self) -> int:
        """Index of the last saved entry (0 if none), synced or not."""
        ...

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Saved entries with ``lo <= index < hi`` (none from the compacted prefix)."""
        ...

    async def save_snapshot(self, meta: SnapshotMeta, chunks: AsyncIterable[bytes]) -> None:
        """Store a snapshot, replacing the previous one, durably before returning.

        The whole ``meta`` must be stored (its :attr:`~SnapshotMeta.membership` included:
        the node recovers its configuration from it). If cancelled or failing midway, the
        previous snapshot must remain the current one.
        """
        ...

    async def load_snapshot(self) -> tuple[SnapshotMeta, AsyncIterator[bytes]] | None:
        """The current snapshot's metadata, unchanged from what :meth:`save_snapshot` was
        given, and an iterator over its bytes; or ``None``."""
        ...

    async def compact(self, index: int, term: int) -> None:
        """Durably discard every entry up to ``index`` (a snapshot covers them); the log then
        starts after ``(index, term)``. If the log ends before ``index`` it becomes empty and
        the next saved entry is ``index + 1``. Called only after :meth:`save_snapshot` of a
        snapshot at or beyond ``index`` returned."""
        ...


class Transport(Protocol):
    """Carries :class:`Message` values between nodes. Raft tolerates loss, duplication, delay and
    reordering, so a transport may do all four; it must not corrupt or forge messages.

    **Membership (optional).** A transport whose peers change with the cluster's configuration
    may also define ``update_members(self, members: Mapping[NodeId, object]) -> None`` (see
    :class:`MembershipAwareTransport`); the node detects it with ``getattr`` and calls it with
    the members of every new configuration. A transport without it keeps the peers it was
    opened with.

    **Direct delivery (optional).** A transport may also define ``deliver_into(self, channel:
    trio.MemorySendChannel[Message] | None) -> None``. The node then calls it once at start
    with its own inbox: from then on the transport delivers there (with ``send`` or
    ``send_nowait``, in arrival order; a closed or full inbox may drop messages) instead of into
    :attr:`receive_channel`, and moves what already waits there, so no task of the node moves
    each message from one channel to the other. The node calls it with ``None`` when it shuts
    down, to hand delivery back to :attr:`receive_channel` (the transport may serve a later
    node). Both transports of this package define it.
    """

    def send(self, message: Message) -> None:
        """Queue ``message`` for ``message.dst`` without blocking. Drop it if the peer is unknown,
        unreachable or its queue is full: Raft will retry."""
        ...

    @property
    def receive_channel(self) -> trio.abc.ReceiveChannel[Message]:
        """Messages addressed to this node, in arrival order."""
        ...


class MembershipAwareTransport(Transport, Protocol):
    """A :class:`Transport` that follows the cluster's membership (for typing: the node finds
    ``update_members`` with ``getattr``). :class:`~trio_raft.WebSocketTransport` is one."""

    def update_members(self, members: Mapping[NodeId, object]) -> None:
        """The nodes this node must reach from now on, with their addresses from the
        configuration (every member and retiring peer, not this node; an id equal to this
        node's own is ignored).

        Called by the node once at start if it has a configuration, then whenever its
        configuration in force changes (rollbacks included), before it sends the messages
        that depend on it. Sync and must never block; calling it again with the same members
        must be cheap and change nothing. A peer that is no longer in ``members`` must no
        longer be dialled, nor its messages delivered.
        """
        ...
