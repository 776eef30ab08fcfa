"""The node's task tree: what runs under which scope, and what a step-down cancels."""

from __future__ import annotations

from typing import cast

import trio
import trio.testing

from trio_raft import AppendRequest, NodeClosedError, Role
from trio_raft.testing import KVStateMachine, open_simulated_cluster


def _task_names() -> list[str]:
    names: list[str] = []

    def walk(task: trio.lowlevel.Task) -> None:
        names.append(task.name)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    root = trio.lowlevel.current_root_task()
    assert root is not None  # inside trio.run
    walk(root)
    return names


def _replicators(node_id: str) -> list[str]:
    return [n for n in _task_names() if n.startswith(f"trio_raft replicator {node_id}->")]


async def test_leader_runs_one_replicator_per_follower(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with open_simulated_cluster(5, seed=1) as cluster:
            leader = await cluster.wait_leader()
            term = leader.status.term
            await trio.testing.wait_all_tasks_blocked()
            expected = sorted(
                f"trio_raft replicator {leader.id}->{p}@{term}"
                for p in cluster.node_ids
                if p != leader.id
            )
            assert sorted(_replicators(leader.id)) == expected
            for follower in cluster.node_ids:
                if follower != leader.id:
                    assert _replicators(follower) == []


async def test_higher_term_cancels_every_replicator_of_the_old_term(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with open_simulated_cluster(3, seed=2) as cluster:
            leader = await cluster.wait_leader()
            term = leader.status.term
            await trio.testing.wait_all_tasks_blocked()
            assert len(_replicators(leader.id)) == 2
            other = next(n for n in cluster.node_ids if n != leader.id)
            # A message of a higher term from anyone: the leader must step down at once.
            cluster.network.inject(AppendRequest(other, leader.id, term + 5, 0, 0, (), 0))
            await trio.testing.wait_all_tasks_blocked()
            assert leader.status.role is Role.FOLLOWER
            assert leader.status.term == term + 5
            assert _replicators(leader.id) == []


async def test_leader_cut_off_steps_down_and_stops_replicating(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """CheckQuorum: an isolated leader steps down within about an election timeout, and no
    replicator of its term outlives the step-down."""
    with trio.fail_after(30):
        async with open_simulated_cluster(3, seed=3) as cluster:
            leader = await cluster.wait_leader()
            cluster.isolate(leader.id)
            start = trio.current_time()
            await leader.wait_status(lambda s: s.role is not Role.LEADER)
            waited = trio.current_time() - start
            assert waited <= 2 * cluster.config.election_timeout_s_min + 0.01
            await trio.testing.wait_all_tasks_blocked()
            assert _replicators(leader.id) == []


async def test_crash_stops_every_task_of_the_node(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        async with open_simulated_cluster(3, seed=4) as cluster:
            leader = await cluster.wait_leader()
            await cluster.crash(leader.id)
            await trio.testing.wait_all_tasks_blocked()
            assert not [n for n in _task_names() if f" {leader.id}" in n]
            try:
                await leader.propose(("put", "k", "v"))
            except NodeClosedError:
                pass
            else:
                raise AssertionError("a crashed node accepted a proposal")


async def test_a_command_that_apply_rejects_fails_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A malformed command is committed, fails the same way everywhere, and nothing stops."""
    with trio.fail_after(10):
        async with open_simulated_cluster(3, seed=5) as cluster:
            leader = await cluster.wait_leader()
            try:
                await leader.propose(("bogus",))
            except ValueError as exc:
                assert "malformed KV command" in str(exc)
            else:
                raise AssertionError("apply's ValueError did not reach the proposer")
            assert await leader.propose(("put", "k", "v")) is None
            await cluster.wait_converged()
            states = [cast(KVStateMachine, sm).as_dict() for sm in cluster.state_machines.values()]
            assert states == [{"k": "v"}] * 3
