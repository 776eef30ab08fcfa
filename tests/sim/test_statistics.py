"""``Node.statistics()``: the counters agree with what happened in a simulated run."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.sim.test_scenarios import deadline
from trio_raft import NotLeaderError, Role, RoleChangeReason
from trio_raft.testing import open_simulated_cluster


async def test_counters_follow_writes_reads_refusals_and_a_failover(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    with deadline(60, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            old = await cluster.wait_leader()
            follower = next(n for n in cluster.nodes.values() if n.id != old.id)
            before = old.statistics()
            for i in range(7):
                await old.propose(("put", f"k{i}", "v"))
            with pytest.raises(ValueError, match="malformed KV command"):
                await old.propose(("no-such-op",))  # applied, and its apply raises
            for _ in range(3):
                await old.read(("get", "k1"))
            with pytest.raises(NotLeaderError):
                await follower.propose(("put", "x", "y"))
            stats = old.statistics()
            await cluster.crash(old.id)
            rest = [n for n in cluster.node_ids if n != old.id]
            new = await cluster.wait_leader(among=rest)
            new_stats = new.statistics()
            follower_stats = follower.statistics()

    assert stats.status.role is Role.LEADER and stats.status.node_id == old.id
    assert stats.proposals_accepted - before.proposals_accepted == 8, f"seed={seed}"
    assert stats.entries_applied - before.entries_applied == 8
    assert stats.apply_errors - before.apply_errors == 1
    assert stats.reads_confirmed - before.reads_confirmed == 3
    assert follower_stats.proposals_refused.get("NotLeaderError", 0) >= 1
    assert stats.elections_won >= 1 and stats.elections_started >= stats.elections_won
    assert stats.disk_writes > before.disk_writes
    assert stats.disk_write_seconds.count == stats.disk_writes
    assert stats.disk_write_seconds.total >= 0
    assert len(stats.disk_write_seconds.counts) == len(stats.disk_write_seconds.bounds) + 1
    assert new_stats.elections_won == 1 + before.elections_won * (new.id == old.id)
    assert new_stats.role_changes.get(RoleChangeReason.ELECTION_WON) == new_stats.elections_won
    assert sum(new_stats.role_changes.values()) >= 3  # pre-candidate, candidate, leader
    assert new_stats.status.role is Role.LEADER


async def test_statistics_include_the_parts_that_have_their_own() -> None:
    """A transport or storage with a ``statistics()`` method shows up; one without is None."""
    from trio_raft._statistics import Counters

    counters = Counters()
    counters.disk_write(0.0001)  # on a bound: counted in that bucket
    counters.disk_write(0.003)
    counters.disk_write(99.0)  # above the last bound
    stats = counters.snapshot(None, "transport-stats", None)  # type: ignore[arg-type]
    h = stats.disk_write_seconds
    assert h.counts[0] == 1 and h.counts[-1] == 1 and h.count == 3 == stats.disk_writes
    assert h.counts[h.bounds.index(0.005)] == 1
    assert stats.transport == "transport-stats" and stats.storage is None
