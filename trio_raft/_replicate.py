"""A leader's replication: one replicator task per follower, in the role's nursery.

::

    role runner ── (leader of term T) ── Replication.lead(T) ── role nursery
                                              ├── replicator → follower n2
                                              └── replicator → follower n3 ...

    dispatcher ── state changed ──▶ Replication.wake ─┬─▶ send inline for an idle replicator
                                                      └─▶ signal a replicator with work

One :class:`Replication` per node. The replicators come and go with the configuration in force
(:meth:`Replication.sync`), each in a cancel scope of its own; a role or term change cancels the
role's scope, and with it every replicator. A replicator asks the Raft state what to send next
(``RaftState.next_append``: entries, a heartbeat, a probe) and streams the snapshot when its
follower needs one; idle, it waits for a signal or its next heartbeat. While it waits, the
dispatcher sends what is due for it itself (:meth:`Replication.wake`): a task step less per
write. A send by either moves the peer's next heartbeat.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

import trio

from . import _snapshot
from ._core._progress import ProgressState
from ._sync import Signal
from ._types import NodeId, Role

if TYPE_CHECKING:
    from ._node import Node

REPLICATOR_BURST: Final = 16
"""A replicator yields to other tasks after this many sends in a row."""


class Replication:
    """The leader's replicators of one node (private to it; see the module docstring)."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self.signals: dict[NodeId, Signal] = {}
        """One per running replicator: set when it has something to send."""
        self._scopes: dict[NodeId, trio.CancelScope] = {}
        self._idle: set[NodeId] = set()
        """Peers whose replicator waits for a signal (the dispatcher may send for it)."""
        self._heartbeat_at: dict[NodeId, float] = {}
        """When each replicator's next heartbeat is due (moved by every send to its peer)."""
        self._nursery: tuple[trio.Nursery, int] | None = None
        """The role nursery and its term, while this node leads."""

    async def lead(self, term: int) -> None:
        """The leader's role nursery: open for the whole term (the replicators come and go
        with the membership, each in a cancel scope of its own; see :meth:`sync`)."""
        self.signals = {}
        self._scopes = {}
        self._idle = set()
        self._heartbeat_at = {}
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = (nursery, term)
                self.sync()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def sync(self) -> None:
        """Run exactly one replicator per replica of the configuration in force (members and
        retiring peers): start the new ones in the role nursery, cancel those gone."""
        if self._nursery is None:
            return
        nursery, term = self._nursery
        node = self._node
        st = node._state
        if st.role is not Role.LEADER or st.term != term:
            return  # the role scope is being cancelled
        wanted = st.replica_ids
        for peer in sorted(self._scopes.keys() - wanted):
            self._scopes.pop(peer).cancel()
            del self.signals[peer]
        for peer in sorted(wanted - self._scopes.keys()):
            scope = self._scopes[peer] = trio.CancelScope()
            self.signals[peer] = Signal()
            nursery.start_soon(
                node._guard,
                f"replicator {node.id}->{peer}",
                self._replicate,
                peer,
                term,
                scope,
                name=f"trio_raft replicator {node.id}->{peer}@{term}",
            )

    def wake(self) -> None:
        """Dispatcher, after the state changed: send what is due for idle replicators, and
        signal those with something left to send. Answers change progress without a Ready."""
        st = self._node._state
        now = -math.inf
        for peer, signal in self.signals.items():
            if not st.has_to_send(peer):
                continue
            if peer in self._idle and st.can_send_inline(peer):
                # Its replicator waits for a signal with nothing else to do: send what is
                # due here (a step of that task less per write), as it would.
                if now == -math.inf:
                    now = trio.current_time()
                self._send_inline(peer, now)
                if not st.has_to_send(peer):
                    continue
            signal.set()

    def _send_inline(self, peer: NodeId, now: float) -> None:
        """The dispatcher sends to ``peer`` what its idle replicator would (a burst at most)."""
        node = self._node
        st = node._state
        for _ in range(REPLICATOR_BURST):
            message = st.next_append(peer, now, heartbeat_due=False)
            if message is None:
                return
            node._transport.send(message)
            self._heartbeat_at[peer] = now + st.config.heartbeat_s
            if not st.has_to_send(peer):
                return

    async def _replicate(self, peer: NodeId, term: int, scope: trio.CancelScope) -> None:
        with scope:
            await self._replicate_in_scope(peer, term, scope)

    async def _replicate_in_scope(self, peer: NodeId, term: int, scope: trio.CancelScope) -> None:
        node = self._node
        st = node._state
        signal = self.signals[peer]
        heartbeat_s = st.config.heartbeat_s
        heartbeat_at = self._heartbeat_at
        heartbeat_at[peer] = -math.inf
        idle = self._idle
        sent = 0
        while True:
            if (
                st.role is not Role.LEADER
                or st.term != term
                or scope.cancel_called
                or peer not in st.progress
            ):
                await trio.sleep_forever()  # our scope (or the role's) is being cancelled
            if st.progress[peer].state is ProgressState.SNAPSHOT:
                node._oplog.follower(st, peer, trio.current_time())
                await _snapshot.send(node, peer, term)
                continue
            now = trio.current_time()
            message = st.next_append(peer, now, heartbeat_due=now >= heartbeat_at[peer])
            if message is not None:
                node._transport.send(message)
                heartbeat_at[peer] = now + heartbeat_s
                # The flow-control window bounds the sends in a row; the wait below is the
                # checkpoint (and one every REPLICATOR_BURST sends, to be fair anyway).
                sent += 1
                if sent % REPLICATOR_BURST == 0:
                    await trio.lowlevel.checkpoint()
                continue
            node._oplog.follower(st, peer, now)
            # Idle: until the next heartbeat is due (the dispatcher's sends move it) or a
            # signal; meanwhile the dispatcher may send what is due for this replicator.
            idle.add(peer)
            try:
                with trio.move_on_at(heartbeat_at[peer]):
                    await signal.wait()
            finally:
                idle.discard(peer)
