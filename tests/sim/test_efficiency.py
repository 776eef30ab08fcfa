"""Message-count bounds: what a healthy cluster sends (counted, not timed)."""

from __future__ import annotations

import trio
import trio.testing

from trio_raft.testing import open_simulated_cluster


async def test_idle_leader_sends_heartbeats_at_the_configured_rate_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with open_simulated_cluster(3, seed=5) as cluster:
            leader = await cluster.wait_leader()
            await cluster.wait_converged()
            await trio.sleep(1)
            cluster.network.reset_stats()
            idle_s = 10.0
            await trio.sleep(idle_s)
            stats = cluster.network.stats().by_type
            expected = idle_s / cluster.config.heartbeat_s * 2  # two followers
            appends = stats["AppendRequest"].sent
            assert 0.95 * expected <= appends <= 1.05 * expected, (appends, expected)
            assert stats["AppendResponse"].sent <= appends
            assert "VoteRequest" not in stats or stats["VoteRequest"].sent == 0
            assert leader.status.role is leader.status.role.LEADER


async def _commit_cost(concurrent: bool, k: int) -> float:
    async with open_simulated_cluster(3, seed=6) as cluster:
        leader = await cluster.wait_leader()
        await cluster.wait_converged()
        cluster.network.reset_stats()
        if concurrent:
            async with trio.open_nursery() as nursery:
                for i in range(k):
                    nursery.start_soon(leader.propose, ("put", f"k{i}", "v"))
        else:
            for i in range(k):
                await leader.propose(("put", f"k{i}", "v"))
        sent = cluster.network.stats().by_type["AppendRequest"].sent
        return sent / k / 2  # per proposal, per follower


async def test_sequential_proposals_cost_a_constant_number_of_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        cost = await _commit_cost(concurrent=False, k=200)
    # One AppendEntries per proposal per follower, plus the occasional heartbeat.
    assert cost <= 1.5, cost


async def test_concurrent_proposals_are_batched(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        cost = await _commit_cost(concurrent=True, k=500)
    assert cost <= 0.1, cost


class _StepCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] = self.steps.get(task.name, 0) + 1


async def test_task_steps_per_proposal_stay_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The trio task steps one proposal costs with one client: proposer -> dispatcher ->
    writer and replicators -> network -> followers -> dispatcher -> applier -> proposer. A
    count, not a timing: a change that wakes more tasks per write shows up here. (Today: 8
    steps of the leader's own tasks, 23 in the whole cluster; 10 and 27 with a pump task
    between the transport and the inbox; 12 and 28 before the dispatcher sent for idle
    replicators; before issue 9's write path work, 20 and 43.)"""
    n = 50
    with trio.fail_after(30):
        async with open_simulated_cluster(3, seed=1, delay_s_min=0.001, delay_s_max=0.001) as c:
            leader = await c.wait_leader()
            await c.wait_converged()
            await leader.propose(("put", "warm", "up"))
            counter = _StepCounter()
            trio.lowlevel.add_instrument(counter)
            try:
                for i in range(n):
                    await leader.propose(("put", "k", str(i)))
            finally:
                trio.lowlevel.remove_instrument(counter)
    own = sum(
        count
        for name, count in counter.steps.items()
        if name.endswith(f" {leader.id}") or f" replicator {leader.id}->" in name
    )
    replicators = sum(count for name, count in counter.steps.items() if "replicator" in name)
    total = sum(counter.steps.values())
    assert own <= 9 * n, counter.steps
    assert not any(" pump " in name for name in counter.steps), counter.steps
    # The dispatcher sends new entries itself while the replicators are idle (it was one wake
    # of each per new entry).
    assert replicators <= 0.5 * n, counter.steps
    assert total <= 24 * n, counter.steps


async def test_concurrent_reads_cost_a_constant_number_of_rounds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """ReadIndex batching: reads arriving while a round is in flight share the next one, so
    N concurrent reads cost at most two rounds of heartbeats, not N (each still sees the write
    acknowledged before it started)."""
    n = 100
    with trio.fail_after(30):
        async with open_simulated_cluster(3, seed=7, delay_s_min=0.001, delay_s_max=0.003) as c:
            leader = await c.wait_leader()
            await c.wait_converged()
            await leader.propose(("put", "k", "v1"))
            seq = leader._state.seq
            c.network.reset_stats()
            results: list[object] = []

            async def read(i: int) -> None:
                await trio.sleep(i * 0.0001)  # spread over ~10 ms: several round trips
                results.append(await leader.read(("get", "k")))

            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(read, i)
            assert results == ["v1"] * n
            rounds = leader._state.seq - seq
            sent = c.network.stats().by_type["AppendRequest"].sent
    # The reads span about 10 ms and a round trip takes 2 to 6 ms: a handful of rounds (one
    # per read before batching: 100 rounds, 200 AppendRequests), each one AppendRequest per
    # follower.
    assert rounds <= 8, rounds
    assert sent <= 2 * (rounds + 2), (sent, rounds)
