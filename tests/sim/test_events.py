"""``Node.events()``: what a node publishes when its role, its leader or its configuration
changes, and how a subscriber that falls behind is told what it missed."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.sim.test_scenarios import deadline
from trio_raft import (
    Event,
    EventsDropped,
    LeaderChanged,
    MembershipChanged,
    Node,
    Role,
    RoleChanged,
    RoleChangeReason,
)
from trio_raft._events import EventHub
from trio_raft.testing import open_simulated_cluster


async def _collect(
    node: Node, out: list[Event], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    async with node.events() as events:
        task_status.started()
        async for event in events:
            out.append(event)


async def test_survivors_see_the_new_leader_and_the_crashed_nodes_stream_ends(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    seen: dict[str, list[Event]] = {}
    ended: set[str] = set()
    with deadline(60, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            old = await cluster.wait_leader()
            async with trio.open_nursery() as nursery:
                for node_id, node in cluster.nodes.items():
                    seen[node_id] = []

                    async def watch(n: Node = node, *, task_status: trio.TaskStatus[None]) -> None:
                        await _collect(n, seen[n.id], task_status=task_status)
                        ended.add(n.id)

                    await nursery.start(watch)
                await cluster.crash(old.id)
                rest = [n for n in cluster.node_ids if n != old.id]
                new = await cluster.wait_leader(among=rest)
                term = new.status.term
                for node_id in rest:
                    await cluster.nodes[node_id].wait_status(lambda s: s.leader_id == new.id)
                await trio.testing.wait_all_tasks_blocked()
                assert ended == {old.id}, f"seed={seed}: only the crashed node's stream ended"
                nursery.cancel_scope.cancel()
    for node_id in rest:
        leaders = [e for e in seen[node_id] if isinstance(e, LeaderChanged)]
        assert leaders[-1] == LeaderChanged(term, new.id), f"seed={seed}: {seen[node_id]}"
        assert LeaderChanged(leaders[0].term, None) in leaders, "the old leader was lost first"
    roles = [e for e in seen[new.id] if isinstance(e, RoleChanged)]
    assert roles[-1] == RoleChanged(term, Role.LEADER, RoleChangeReason.ELECTION_WON)
    assert roles[0].reason is RoleChangeReason.ELECTION_TIMEOUT, f"seed={seed}: {roles}"
    assert not any(isinstance(e, EventsDropped) for events in seen.values() for e in events)


async def test_a_membership_change_is_published_appended_then_committed(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    events: list[Event] = []
    with deadline(60, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            leader = await cluster.wait_leader()
            await leader.wait_status(lambda s: s.membership_committed)
            async with trio.open_nursery() as nursery:
                await nursery.start(_collect, leader, events)
                await cluster.add_node("n4")
                m = await leader.add_learner("n4")
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
    changes = [e for e in events if isinstance(e, MembershipChanged)]
    assert [(e.membership, e.committed) for e in changes] == [(m, False), (m, True)], changes
    assert changes[0].index == changes[1].index == leader.status.membership_index


async def test_events_end_when_the_node_shuts_down_and_a_late_subscriber_gets_none(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    with deadline(60, seed):
        async with open_simulated_cluster(1, seed=seed) as cluster:
            node = await cluster.wait_leader()
            got: list[Event] = []
            async with trio.open_nursery() as nursery:
                await nursery.start(_collect, node, got)
                await cluster.stop(node.id)
            assert got == []  # nothing happened between subscribing and stopping
            async with node.events() as events:
                assert [e async for e in events] == []
            with pytest.raises(ValueError, match="positive int"):
                async with node.events(0):
                    pass


async def test_a_subscriber_that_falls_behind_is_told_how_many_it_missed() -> None:
    hub = EventHub()
    e = [LeaderChanged(i, "n1") for i in range(10)]
    async with hub.subscribe(buffer=2) as slow, hub.subscribe(buffer=100) as fast:
        for event in e[:5]:
            hub.publish(event)  # the slow one keeps 0 and 1, loses 2, 3 and 4
        assert [slow.receive_nowait(), slow.receive_nowait()] == e[:2]
        hub.publish(e[5])  # the count goes first, then the event
        assert [slow.receive_nowait(), slow.receive_nowait()] == [EventsDropped(3), e[5]]
        hub.publish(e[6])
        hub.publish(e[7])
        hub.publish(e[8])  # lost: the buffer holds 6 and 7
        assert [slow.receive_nowait(), slow.receive_nowait()] == [e[6], e[7]]
        hub.publish(e[9])
        assert [slow.receive_nowait(), slow.receive_nowait()] == [EventsDropped(1), e[9]]
        with pytest.raises(trio.WouldBlock):
            slow.receive_nowait()
        assert [fast.receive_nowait() for _ in range(10)] == e  # others lose nothing
    hub.publish(e[0])  # nobody subscribed: nothing to do
    assert hub._subscribers == []


async def test_when_only_the_count_fits_the_event_is_counted_too() -> None:
    hub = EventHub()
    async with hub.subscribe(buffer=1) as sub:
        hub.publish(LeaderChanged(1, "a"))
        hub.publish(LeaderChanged(2, "b"))  # lost
        assert sub.receive_nowait() == LeaderChanged(1, "a")
        hub.publish(LeaderChanged(3, "c"))  # only the count fits: this one is lost as well
        assert sub.receive_nowait() == EventsDropped(1)
        hub.publish(LeaderChanged(4, "d"))
        assert sub.receive_nowait() == EventsDropped(1)
        hub.publish(LeaderChanged(5, "e"))
        assert sub.receive_nowait() == EventsDropped(1)
