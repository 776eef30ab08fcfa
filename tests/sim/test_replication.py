"""Scenarios of log replication: agreement, catch-up, concurrency, fast back-up, a lossy network."""

from __future__ import annotations

import trio
import trio.testing

from tests.sim.test_scenarios import (
    Appends,
    MessageLog,
    assert_replicas_equal,
    commands,
    converge,
    deadline,
    kv,
    log,
    wait_all,
)
from trio_raft import AppendRequest, AppendResponse, Entry, HardState, StoredState
from trio_raft.testing import open_simulated_cluster


async def test_agreement_on_sequential_proposals(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """20 proposals through the leader: each returns its result, and every node ends with the
    same log, commit index and state."""
    with deadline(30, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            leader = await cluster.wait_leader()
            proposed: list[tuple[str, ...]] = []
            expected = {"log": ""}
            for i in range(20):
                if i % 2 == 0:
                    command: tuple[str, ...] = ("append", "log", f"{i};")
                    expected["log"] += f"{i};"
                    want: object = expected["log"]
                else:
                    command, want = ("put", f"k{i}", str(i)), None
                    expected[f"k{i}"] = str(i)
                proposed.append(command)
                assert await leader.propose(command) == want, f"proposal {i}: seed={seed}"
            await cluster.wait_converged()
            assert_replicas_equal(cluster, seed)
            for node_id in cluster.node_ids:
                assert kv(cluster, node_id) == expected, f"{node_id}: seed={seed}"
                assert commands(log(cluster, node_id)) == proposed, f"{node_id}: seed={seed}"
                status = cluster.node(node_id).status
                assert status.commit_index == status.last_log_index == 21, f"seed={seed}"


async def test_crashed_follower_catches_up(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """A follower is down while 30 entries commit (2 of 3 suffice); restarted, it catches up."""
    with deadline(30, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            leader = await cluster.wait_leader()
            await converge(cluster)
            follower = next(n for n in cluster.node_ids if n != leader.id)
            await cluster.crash(follower)
            behind = cluster.storages[follower].durable_state().entries
            value = ""
            for i in range(30):
                value += f"{i},"
                assert await cluster.propose(("append", "k", f"{i},")) == value, f"seed={seed}"
            assert len(cluster.storages[follower].durable_state().entries) == len(behind), (
                f"seed={seed}"
            )

            rejoined = await cluster.start(follower)
            target = leader.status.commit_index
            status = await rejoined.wait_status(lambda s: s.last_applied >= target)
            assert status.leader_id == leader.id and status.term == leader.status.term, (
                f"seed={seed}"
            )
            await converge(cluster)
            assert_replicas_equal(cluster, seed)
            assert kv(cluster, follower)["k"] == value, f"seed={seed}"


async def test_concurrent_proposals_are_applied_once_in_one_order(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """50 concurrent proposals: 50 results, each entry applied once, in the same order on every
    node, and each result is the value as of its own append."""
    with deadline(30, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            leader = await cluster.wait_leader()
            results: dict[int, object] = {}

            async def propose(i: int) -> None:
                results[i] = await leader.propose(("append", "seq", f"<{i}>"))

            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(propose, i)
            assert sorted(results) == list(range(50)), f"seed={seed}"
            await cluster.wait_converged()
            assert_replicas_equal(cluster, seed)

            final = kv(cluster, leader.id)["seq"]
            order = sorted(results, key=lambda i: len(str(results[i])))
            assert final == "".join(f"<{i}>" for i in order), f"seed={seed}"
            for i, result in results.items():  # each saw exactly the appends before its own
                assert isinstance(result, str) and result.endswith(f"<{i}>"), f"seed={seed}"
                assert final.startswith(result), f"seed={seed}"
            for node_id in cluster.node_ids:
                applied = commands(log(cluster, node_id))
                assert applied == [("append", "seq", f"<{i}>") for i in order], f"seed={seed}"


async def test_fast_backup_over_60_divergent_entries(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """Raft §5.3's optimization: a follower whose log diverges for 60 entries, of a term the
    leader never saw, is repaired in a few round trips (one per conflicting term), not ~70."""
    common = [Entry(1, i, ("put", "common", str(i))) for i in (1, 2, 3)]
    leader_log = (*common, *(Entry(3, i, ("put", "k", str(i))) for i in range(4, 74)))
    stale = tuple(Entry(2, i, ("put", "stale", str(i))) for i in range(4, 64))
    initial = {
        "n1": StoredState(HardState(3, "n1"), leader_log),
        "n2": StoredState(HardState(2, "n2"), (*common, *stale)),
    }
    with deadline(30, seed):
        async with open_simulated_cluster(
            3, seed=seed, initial_state=initial, start=False
        ) as cluster:
            messages = MessageLog(cluster)
            await cluster.start("n1")
            follower = await cluster.start("n2")  # n3 stays down: n1 needs n2 to commit
            leader = await cluster.wait_leader()
            assert leader.id == "n1", f"only n1 has the most up-to-date log: seed={seed}"
            await follower.wait_status(
                lambda s: (
                    (s.last_log_index, s.last_log_term)
                    == (leader.status.last_log_index, leader.status.term)
                )
            )
            probes = [m for m in messages.sent if isinstance(m, AppendRequest) and m.dst == "n2"]
            assert probes[0].prev_index == 73, f"one entry at a time would take ~70: seed={seed}"
            appends = len(probes)
            rejections = sum(
                1 for m in messages.sent if isinstance(m, AppendResponse) and not m.success
            )
            assert appends <= 5, f"{appends} AppendRequests to repair 60 entries: seed={seed}"
            assert rejections <= 2, f"{rejections} rejections: seed={seed}"

            await wait_all(cluster, lambda s: s.last_applied == 74)  # both, through n1's no-op
            assert log(cluster, "n2") == log(cluster, "n1"), f"seed={seed}"
            assert commands(log(cluster, "n2")) == commands(leader_log), f"seed={seed}"
            assert "stale" not in kv(cluster, "n2"), f"seed={seed}"
            assert kv(cluster, "n2")["k"] == "73", f"seed={seed}"


async def test_agreement_over_a_lossy_duplicating_reordering_network(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """30 proposals over links that drop 20%, duplicate 10% and reorder 30% of messages."""
    with deadline(120, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            cluster.network.set_default_link(drop=0.2, duplicate=0.1, reorder=0.3)
            writes = Appends()
            for i in range(30):
                await writes.append(cluster.propose, "k", f"<{i}>")
            await converge(cluster)
            assert_replicas_equal(cluster, seed)
            state = kv(cluster, cluster.node_ids[0])
            writes.check(state, seed)
            assert len(writes.acked) >= 28, f"only {len(writes.acked)}/30 acked: seed={seed}"
            # One client, one write at a time: what was applied is in proposal order, and each
            # result is exactly the value up to and including its own suffix.
            final = state["k"]
            applied = [s for s in (f"<{i}>" for i in range(30)) if s in final]
            assert final == "".join(applied), f"seed={seed}"
            for suffix, (_, result) in writes.acked.items():
                assert result == final[: final.index(suffix) + len(suffix)], f"seed={seed}"
            stats = cluster.network.stats().total
            assert stats.dropped > 0 and stats.duplicated > 0, f"faults inactive: seed={seed}"
