"""The node side of membership changes and leadership transfer: how a call waits, what it
submits to the dispatcher, and what it raises (see :doc:`membership`, "Node methods").

Every change runs the same way: the caller checks that this node leads and has committed an
entry of its term, computes the target from the configuration in force, waits (bounded) for
new voters to catch up, then hands an *edit* to the dispatcher, which applies it to the
configuration in force at that moment and calls :meth:`RaftState.propose_membership`. The call
then waits until the target is the committed configuration in force. The Raft rules live in
:mod:`trio_raft._core`; this module only waits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import attrs
import trio

from ._core._membership import already_in_force
from ._errors import (
    LeadershipLostError,
    LeadershipTransferError,
    LearnerNotCaughtUpError,
    NodeClosedError,
    NotLeaderError,
)
from ._sync import Waiter
from ._types import Membership, NodeId, Role

if TYPE_CHECKING:
    from ._node import Node

logger: Final = logging.getLogger("trio_raft.node")

Edit = Callable[[Membership], Membership]
"""A pure function from the configuration in force to the one wanted."""


@attrs.frozen
class ChangeMembership:
    """Dispatcher event: apply ``edit`` to the configuration in force and start the change."""

    edit: Edit
    waiter: Waiter[Membership]


@attrs.frozen
class TransferLeadership:
    """Dispatcher event: start a leadership transfer."""

    target: NodeId | None
    waiter: Waiter[tuple[NodeId, int]]


def handle(node: Node, event: ChangeMembership | TransferLeadership, now: float) -> None:
    """Dispatcher (sync): carry out one event; errors go to its waiter."""
    st = node._state
    try:
        if isinstance(event, ChangeMembership):
            current = st.membership
            if current is None or st.role is not Role.LEADER:
                raise NotLeaderError(node.id, st.leader_id)
            target = event.edit(current)
            st.propose_membership(target, now)
            event.waiter.set(target)
        else:
            term = st.term
            event.waiter.set((st.transfer_leadership(event.target, now), term))
    except Exception as exc:  # every refusal is a typed RaftError; anything else is a bug
        event.waiter.fail(exc)


async def _wait(node: Node, done: Callable[[], bool], *, submitted: bool) -> None:
    """Wait until ``done()`` holds, re-checking on every state change."""
    while not done():
        if node._crash is not None:
            raise node._crash_error() from node._crash[1]
        if node._closed:
            if submitted:
                raise LeadershipLostError(
                    f"node {node.id!r} shut down during a membership change; its outcome is "
                    "unknown (retrying is safe: membership calls are idempotent)"
                )
            raise NodeClosedError(f"node {node.id!r} has shut down; nothing was changed")
        await node._changed.wait()


def _require_leader(node: Node, term: int | None = None) -> None:
    st = node._state
    if st.role is not Role.LEADER or (term is not None and st.term != term):
        raise NotLeaderError(node.id, st.leader_id)


async def change(node: Node, edit: Edit, catch_up_timeout_s: float | None) -> Membership:
    """Carry out one membership change; returns the committed configuration."""
    st = node._state
    cfg = st.config
    _require_leader(node)
    term = st.term
    await _wait(node, lambda: st.role is not Role.LEADER or st.leader_ready, submitted=False)
    _require_leader(node, term)
    timeout = cfg.catch_up_timeout_s if catch_up_timeout_s is None else catch_up_timeout_s
    started = trio.current_time()
    deadline = started + timeout
    while True:
        current = st.membership
        assert current is not None  # a leader has one
        target = edit(current)  # refuses impossible requests before any waiting
        if not already_in_force(current, target):
            await _catch_up(node, target.voters - current.all_voters, term, deadline, started)
        waiter: Waiter[Membership] = Waiter()
        await node._submit(ChangeMembership(edit, waiter))
        try:
            target = await waiter.wait()
        except LearnerNotCaughtUpError:
            if trio.current_time() >= deadline:
                raise
            continue  # it fell behind in between: wait again, within the same deadline
        break

    def settled() -> bool:
        return st.membership == target and st.membership_committed

    def lost() -> bool:
        return st.role is not Role.LEADER or st.term != term

    await _wait(node, lambda: settled() or lost(), submitted=True)
    if settled():
        return target
    raise LeadershipLostError(
        f"node {node.id!r} stopped leading before the change to {target!r} committed; its "
        "outcome is unknown (the next leader finishes a change it holds; retrying is safe)"
    )


async def _catch_up(
    node: Node, voters: frozenset[NodeId], term: int, deadline: float, started: float
) -> None:
    """Wait until every new voter has kept up for a maximum election timeout."""
    st = node._state
    need = st.config.election_timeout_s_max
    while True:
        _require_leader(node, term)
        now = trio.current_time()
        short = {v: need - st.caught_up_for(v, now) for v in voters}
        behind = {v: s for v, s in short.items() if s > 0}
        if not behind:
            return
        if now >= deadline:
            worst = max(behind, key=lambda v: (st.lag(v) or 0, v))
            lag = st.lag(worst)
            raise LearnerNotCaughtUpError(
                f"learner {worst!r} did not catch up within {now - started:.1f} s ("
                f"{'unknown' if lag is None else lag} entries behind; it must stay within "
                f"catch_up_entries={st.config.catch_up_entries} for {need} s); it stays a "
                "learner: check it, then retry with a longer catch_up_timeout_s or remove it",
                worst,
                -1 if lag is None else lag,
                now - started,
            )
        # Wake on any change, or when the closest learner would have kept up long enough.
        # (At least to the next representable time: a shortfall below the clock's resolution,
        # now + s == now, would otherwise wake at once, forever.)
        wake = max(math.nextafter(now, math.inf), now + min(behind.values()))
        with trio.move_on_at(min(deadline, wake)):
            await _wait_changed(node)


async def _wait_changed(node: Node) -> None:
    if node._closed:
        raise NodeClosedError(f"node {node.id!r} has shut down; nothing was changed")
    await node._changed.wait()


async def transfer(node: Node, target: NodeId | None) -> NodeId:
    """Carry out one leadership transfer; returns the node that leads next."""
    st = node._state
    cfg = st.config
    _require_leader(node)
    waiter: Waiter[tuple[NodeId, int]] = Waiter()
    await node._submit(TransferLeadership(target, waiter))
    chosen, term = await waiter.wait()
    if chosen == node.id:
        return chosen

    def moved() -> bool:
        return st.term > term and st.leader_id is not None and st.leader_id != node.id

    def resumed() -> bool:
        return st.role is Role.LEADER and st.term == term and st.transfer is None

    with trio.move_on_after(cfg.election_timeout_s_max + cfg.election_timeout_s_min):
        await _wait(node, lambda: moved() or resumed(), submitted=False)
    if moved():
        assert st.leader_id is not None
        return st.leader_id
    if resumed():
        raise LeadershipTransferError(
            st.transfer_failure or f"leadership transfer to {chosen!r} did not complete",
            chosen,
            moved=False,
        )
    raise LeadershipTransferError(
        f"node {node.id!r} stopped leading (handing over to {chosen!r}) but learned of no new "
        "leader in time; an election is under way",
        chosen,
        moved=True,
    )


async def transfer_on_close(node: Node) -> None:
    """Leaving :func:`open_node` gracefully as leader: hand over first (bounded)."""
    st = node._state
    m = st.membership
    if (
        not st.config.transfer_on_close
        or st.role is not Role.LEADER
        or m is None
        or not (m.voters - {node.id})
        or node._crash is not None
    ):
        return
    cfg = st.config
    with trio.move_on_after(cfg.election_timeout_s_max + cfg.election_timeout_s_min):
        try:
            new = await transfer(node, None)
        except Exception as exc:  # logged, never raised: the node is closing anyway
            logger.info("node %r: no leadership transfer on close: %s", node.id, exc)
        else:
            logger.info("node %r: handed leadership to %r before closing", node.id, new)
