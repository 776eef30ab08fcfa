"""``python -m trio_raft demo``: a simulated cluster elects, replicates, loses its leader, heals.

The demo is a guided tour of :mod:`trio_raft.testing`: real :class:`~trio_raft.Node` task trees on
the simulated network, under trio's :class:`~trio.testing.MockClock` with
``autojump_threshold=0``, so the few virtual seconds of the story take a fraction of a second of
wall time. It prints a timeline stamped with virtual time. Every random choice derives from the
seed, so one seed always prints the same timeline.

Scenes, in order: the first election; a few writes (one sent to a follower, which answers
:class:`~trio_raft.NotLeaderError` with the leader's id); the leader crashes; failover, with the
time the cluster went without a leader; more writes on the survivors; the old leader restarts
from its disk, rejoins as a follower and catches up; every node's state compared; a linearizable
read. The demo waits for role changes with :meth:`Node.wait_status <trio_raft.Node.wait_status>`
rather than polling.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

import trio
import trio.testing

from ._errors import NodeClosedError, NotLeaderError, RaftError
from ._node import Node
from ._status import Status
from ._types import NodeId, Role
from ._util import unwrap_single_exception_group
from .testing import InvariantViolation, KVStateMachine, SimulatedCluster, open_simulated_cluster

MIN_NODES = 3
"""The demo crashes the leader, and the survivors must still be a majority."""
MAX_NODES = 9
"""Enough to make the point; the timeline stays readable."""
SCENE_TIMEOUT_S = 10.0
"""Virtual seconds any one scene may take before the demo gives up (a healthy run needs < 1)."""


class DemoFailed(Exception):
    """The cluster did not do what the demo expected (the message says what)."""


class _Timeline:
    """Prints one line per event, stamped with the virtual time since the demo started."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._t0 = trio.current_time()

    def now(self) -> float:
        return trio.current_time() - self._t0

    def say(self, text: str) -> None:
        print(f"[{self.now():7.3f}s] {text}", file=self._out)


def run_demo(*, seed: int = 1, nodes: int = 3, out: TextIO | None = None) -> bool:
    """Run the demo in a fresh :func:`trio.run` on a virtual clock and print its timeline.

    Args:
        seed: Every random choice of the run derives from it; the same seed prints the same output.
        nodes: Cluster size, from :data:`MIN_NODES` to :data:`MAX_NODES`.
        out: Where to print (standard output by default).

    Returns:
        True if every node ended with the same state, False (after printing why) otherwise.

    Raises:
        ValueError: ``nodes`` is out of range.
    """
    if not MIN_NODES <= nodes <= MAX_NODES:
        raise ValueError(f"nodes must be between {MIN_NODES} and {MAX_NODES}, got {nodes}")
    stream = sys.stdout if out is None else out
    clock = trio.testing.MockClock(autojump_threshold=0)
    print(f"seed={seed} (replay with --seed {seed})", file=stream)
    try:
        trio.run(_demo, stream, seed, nodes, clock=clock)
    except (DemoFailed, InvariantViolation) as exc:
        print(f"FAILED: {exc}", file=stream)
        return False
    return True


async def _demo(out: TextIO, seed: int, size: int) -> None:
    async with open_simulated_cluster(size, seed=seed) as cluster:
        tl = _Timeline(out)
        names = ", ".join(cluster.node_ids)
        tl.say(f"start {size} nodes ({names}) on a simulated network; no leader yet")

        with _scene("the first election"):
            leader = await _wait_new_leader(cluster, above_term=0)
        tl.say(f"{leader.id} becomes leader of term {leader.status.term}")

        with _scene("replicating the first writes"):
            await _put(tl, cluster, leader, "x", "1")
            follower = next(n for nid, n in sorted(cluster.nodes.items()) if nid != leader.id)
            try:
                await follower.propose(("put", "y", "2"))
            except NotLeaderError as exc:
                tl.say(
                    f"put y=2 sent to follower {follower.id} -> NotLeaderError, "
                    f"nothing appended; retry on {exc.leader_id}"
                )
                target = cluster.node(exc.leader_id) if exc.leader_id else leader
            else:
                raise DemoFailed(f"follower {follower.id} accepted a proposal")
            await _put(tl, cluster, target, "y", "2")

        old = leader
        old_term = old.status.term
        crashed_at = tl.now()
        await cluster.crash(old.id)
        tl.say(f"CRASH {old.id} (the leader)")

        with _scene("failover"):
            leader = await _wait_new_leader(cluster, above_term=old_term)
        tl.say(
            f"{leader.id} becomes leader of term {leader.status.term} "
            f"(after {tl.now() - crashed_at:.2f}s without a leader)"
        )

        with _scene("writing on the survivors"):
            await _put(tl, cluster, leader, "z", "3", down=old.id)
            await _put(tl, cluster, leader, "x", "4", down=old.id)

        durable = cluster.storages[old.id].durable_state()
        tl.say(
            f"RESTART {old.id}: its disk holds term {durable.hard_state.term} and "
            f"{len(durable.entries)} log entries; its state machine starts empty"
        )
        with _scene(f"{old.id} catching up"):
            back = await cluster.start(old.id)
            target_index = leader.status.commit_index
            status = await back.wait_status(
                lambda s: (
                    s.role is Role.FOLLOWER
                    and s.leader_id == leader.id
                    and s.last_applied >= target_index
                )
            )
        tl.say(
            f"{old.id} rejoins as follower of term {status.term} (leader {status.leader_id}) and "
            f"catches up to index {status.last_applied}"
        )

        with _scene("final agreement"):
            await _wait_all_applied(cluster, leader.status.commit_index)
        states = {
            nid: sm.as_dict()
            for nid, sm in sorted(cluster.state_machines.items())
            if isinstance(sm, KVStateMachine)
        }
        if len(states) != size or any(s != states[leader.id] for s in states.values()):
            detail = "; ".join(f"{nid} has {s}" for nid, s in states.items())
            raise DemoFailed(f"the nodes disagree: {detail}")
        tl.say(f"all {size} nodes hold the same state: {states[leader.id]}")

        with _scene("a linearizable read"):
            value = await leader.read(("get", "x"))
        tl.say(
            f"read x on leader {leader.id} -> {value!r} (ReadIndex: a majority confirmed the lead)"
        )
        total = cluster.network.stats().total
        tl.say(
            f"network: {total.sent} messages sent, {total.dropped} dropped "
            "(no loss configured: all were addressed to the crashed node)"
        )
        tl.say(f"invariant checker: {cluster.checker.events} events checked, no violation")


@contextmanager
def _scene(name: str) -> Iterator[None]:
    """Bound a scene in virtual time and turn a surprise into :class:`DemoFailed`."""
    try:
        with trio.fail_after(SCENE_TIMEOUT_S):
            yield
    except trio.TooSlowError:
        raise DemoFailed(f"{name} took more than {SCENE_TIMEOUT_S}s of virtual time") from None
    except RaftError as exc:
        if isinstance(exc, InvariantViolation):
            raise
        raise DemoFailed(f"{name}: unexpected {type(exc).__name__}: {exc}") from exc


async def _put(
    tl: _Timeline, cluster: SimulatedCluster, leader: Node, key: str, value: str,
    *, down: NodeId | None = None,
) -> None:  # fmt: skip
    """Propose ``put key=value`` on ``leader``, wait until every running node applied it."""
    await leader.propose(("put", key, value))
    index = leader.status.last_applied  # nothing else is proposed meanwhile: this is our entry
    running = await _wait_all_applied(cluster, index)
    if down is None:
        where = f"on all {len(running)} nodes"
    else:
        where = f"on {', '.join(running)} ({down} is down)"
    tl.say(f"put {key}={value} -> committed at index {index}, applied {where}")


async def _wait_all_applied(cluster: SimulatedCluster, index: int) -> list[NodeId]:
    """Wait until every running node has applied ``index``; return their ids."""
    running = sorted(cluster.nodes)
    await _wait_each([cluster.node(nid) for nid in running], lambda s: s.last_applied >= index)
    return running


async def _wait_new_leader(cluster: SimulatedCluster, *, above_term: int) -> Node:
    """Wait until a running node leads a term above ``above_term``; return it (no polling:
    one :meth:`Node.wait_status` per node, the first to return wins)."""
    winner: list[Node] = []

    async with trio.open_nursery() as nursery:

        async def watch(node: Node) -> None:
            try:
                await node.wait_status(lambda s: s.role is Role.LEADER and s.term > above_term)
            except NodeClosedError:
                return
            winner.append(node)
            nursery.cancel_scope.cancel()

        for _, node in sorted(cluster.nodes.items()):
            nursery.start_soon(watch, node)
    if not winner:
        raise DemoFailed("every node shut down while waiting for a leader")
    return winner[0]


async def _wait_each(nodes: Sequence[Node], predicate: Callable[[Status], bool]) -> None:
    with unwrap_single_exception_group():
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(node.wait_status, predicate)
