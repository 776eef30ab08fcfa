"""What a node logs about elections: after a leader crash, every survivor says it lost its
leader, why it campaigned, and who leads now; a leader cut off from its majority warns that it
stepped down and why."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from tests.sim.test_scenarios import deadline
from trio_raft._logging import RAFT_FIELDS
from trio_raft.testing import open_simulated_cluster


def _facts(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [
        getattr(r, RAFT_FIELDS) for r in caplog.records
        if r.name == "trio_raft.node" and isinstance(getattr(r, RAFT_FIELDS, None), dict)
    ]  # fmt: skip


async def test_survivors_of_a_leader_crash_log_the_election(
    autojump_clock: trio.testing.MockClock, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_raft")
    with deadline(60, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            old = await cluster.wait_leader()
            caplog.clear()
            await cluster.crash(old.id)
            rest = [n for n in cluster.node_ids if n != old.id]
            new = await cluster.wait_leader(among=rest)
            await cluster.nodes[rest[0] if rest[0] != new.id else rest[1]].wait_status(
                lambda s: s.leader_id == new.id
            )
    facts = _facts(caplog)
    won = [f for f in facts if f.get("reason") == "election_won"]
    assert [f["node"] for f in won] == [new.id], f"seed={seed}: {facts}"
    assert won[0]["role"] == "leader" and won[0]["previous_role"] == "candidate"
    campaigns = [f for f in facts if f.get("reason") == "election_timeout"]
    assert campaigns and {f["node"] for f in campaigns} <= set(rest), f"seed={seed}"
    follower = next(n for n in rest if n != new.id)
    assert {
        "node": follower,
        "event": "leader_changed",
        "term": new.status.term,
        "leader": new.id,
    } in facts, f"seed={seed}"
    lines = [r.getMessage() for r in caplog.records if r.name == "trio_raft.node"]
    assert any("(election timeout: no leader heard for" in line for line in lines), lines
    assert any(f"-> leader in term {new.status.term} (election won)" in line for line in lines)


async def test_a_leader_cut_off_warns_that_check_quorum_deposed_it(
    autojump_clock: trio.testing.MockClock, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_raft")
    with deadline(60, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            old = await cluster.wait_leader()
            cluster.network.isolate(old.id)
            await old.wait_status(lambda s: s.leader_id != old.id)
    warnings = [
        r for r in caplog.records
        if r.name == "trio_raft.node" and r.levelno == logging.WARNING
        and getattr(r, RAFT_FIELDS, {}).get("reason") == "check_quorum"
    ]  # fmt: skip
    assert len(warnings) == 1, f"seed={seed}"
    assert getattr(warnings[0], RAFT_FIELDS)["node"] == old.id
    assert "no majority of the voters answered within" in warnings[0].getMessage()
