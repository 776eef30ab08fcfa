"""What a node logs besides elections (``trio_raft._oplog``): snapshots taken, sent and
installed; a lagging follower's catch-up as the leader sees it; a follower that lost its log;
slow disk writes and the disk-space alarm. Each line carries its facts in ``extra["raft"]``."""

from __future__ import annotations

import logging
import random
import types
from typing import Any

import pytest
import trio
import trio.testing

from tests.sim.test_scenarios import deadline
from trio_raft import Config, MemoryStorage, Node, open_node
from trio_raft._core._progress import ProgressState
from trio_raft._logging import RAFT_FIELDS
from trio_raft._oplog import (
    CATCH_UP_ANNOUNCE_S,
    CATCH_UP_REPORT_S,
    CATCH_UP_STUCK_REPORT_S,
    NodeLog,
)
from trio_raft.testing import KVStateMachine, MemoryNetwork, open_simulated_cluster


def _events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records
        if r.name == "trio_raft.node" and getattr(r, RAFT_FIELDS, {}).get("event") == event
    ]  # fmt: skip


def _facts(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record (any value the library logged, hence ``Any``)."""
    facts = getattr(record, RAFT_FIELDS)
    assert isinstance(facts, dict)
    return facts


async def test_a_follower_back_after_compaction_gets_a_snapshot_and_everyone_says_so(
    autojump_clock: trio.testing.MockClock, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_raft")
    config = Config(snapshot_entries=50, snapshot_keep_entries=0)
    with deadline(120, seed):
        async with open_simulated_cluster(3, seed=seed, config=config) as cluster:
            leader = await cluster.wait_leader()
            lagging = next(n for n in cluster.node_ids if n != leader.id)
            await cluster.crash(lagging)
            for i in range(160):
                await leader.propose(("put", f"k{i % 5}", str(i)))
            await leader.wait_status(lambda s: s.compacted_index > 0)
            await cluster.start(lagging)
            await cluster.wait_converged()
            await leader.wait_status(lambda s: s.followers[lagging].match_index == s.last_log_index)
            await trio.sleep(1)  # a few heartbeats: the replicator notices it caught up
            leader_stats = leader.statistics()
            lagging_stats = cluster.node(lagging).statistics()
    taken = [_facts(r) for r in _events(caplog, "snapshot_taken")]
    assert any(f["node"] == leader.id for f in taken), f"seed={seed}"
    assert all(int(f["bytes"]) > 0 and f["index"] and f["term"] for f in taken)
    needs = [_facts(r) for r in _events(caplog, "follower_needs_snapshot")]
    assert [(f["node"], f["peer"]) for f in needs] == [(leader.id, lagging)], f"seed={seed}"
    sent = [_facts(r) for r in _events(caplog, "snapshot_sent")]
    installed = [_facts(r) for r in _events(caplog, "snapshot_installed")]
    assert [(f["node"], f["peer"]) for f in sent] == [(leader.id, lagging)], f"seed={seed}"
    assert [(f["node"], f["leader"]) for f in installed] == [(lagging, leader.id)]
    assert sent[0]["index"] == installed[0]["index"] and sent[0]["bytes"] == installed[0]["bytes"]
    assert leader_stats.snapshots_sent == 1 and lagging_stats.snapshots_installed == 1
    assert lagging_stats.snapshot_bytes == installed[0]["bytes"]
    assert leader_stats.snapshot_bytes > 0 and leader_stats.snapshots_taken >= 1
    caught_up = [_facts(r) for r in _events(caplog, "follower_caught_up")]
    assert [(f["node"], f["peer"]) for f in caught_up] == [(leader.id, lagging)], f"seed={seed}"
    line = _events(caplog, "snapshot_sent")[0].getMessage()
    assert f"sent to {lagging!r}" in line and "bytes in" in line


async def test_a_follower_behind_without_compaction_is_announced_and_caught_up(
    autojump_clock: trio.testing.MockClock, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_raft")
    with deadline(120, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            leader = await cluster.wait_leader()
            lagging = next(n for n in cluster.node_ids if n != leader.id)
            cluster.network.isolate(lagging)
            async with trio.open_nursery() as nursery:
                for i in range(1_200):
                    nursery.start_soon(leader.propose, ("put", f"k{i % 5}", str(i)))
            await trio.sleep(2)
            cluster.network.heal()
            await leader.wait_status(lambda s: s.followers[lagging].match_index == s.last_log_index)
            await trio.sleep(1)
    behind = [_facts(r) for r in _events(caplog, "follower_behind")]
    assert behind and behind[0]["peer"] == lagging and behind[0]["node"] == leader.id
    assert int(behind[0]["lag"]) > 1_000, f"seed={seed}"
    caught_up = [_facts(r) for r in _events(caplog, "follower_caught_up")]
    assert [f["peer"] for f in caught_up] == [lagging], f"seed={seed}"
    assert not _events(caplog, "follower_needs_snapshot")


def _leader_view(match: int, last: int, state: ProgressState) -> types.SimpleNamespace:
    progress = types.SimpleNamespace(match=match, state=state)
    return types.SimpleNamespace(
        term=3,
        progress={"n2": progress},
        log=types.SimpleNamespace(last_index=last, start_index=0),
        config=Config(catch_up_entries=1_000),
    )


def test_catch_up_progress_is_spaced_out_and_reports_the_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Progress lines: every CATCH_UP_REPORT_S while the follower moves, every
    CATCH_UP_STUCK_REPORT_S while it does not (a follower that is down)."""
    caplog.set_level(logging.INFO, logger="trio_raft")
    log = NodeLog("n1")
    probe, replicate = ProgressState.PROBE, ProgressState.REPLICATE
    steps = [
        (0, probe, 0.0),  # lagging from here, not yet announced
        (200, probe, CATCH_UP_ANNOUNCE_S / 2),
        (500, replicate, CATCH_UP_ANNOUNCE_S),  # announced
        (1_000, replicate, CATCH_UP_ANNOUNCE_S + CATCH_UP_REPORT_S),  # progress
        (1_000, replicate, CATCH_UP_ANNOUNCE_S + CATCH_UP_REPORT_S + CATCH_UP_STUCK_REPORT_S - 1),
        (1_000, replicate, CATCH_UP_ANNOUNCE_S + CATCH_UP_REPORT_S + CATCH_UP_STUCK_REPORT_S),
        (4_900, replicate, 100.0),  # caught up
    ]
    for match, state, now in steps:
        log.follower(_leader_view(match, 5_000, state), "n2", now)  # type: ignore[arg-type]
    events = [_facts(r)["event"] for r in caplog.records]
    assert events == [
        "follower_behind", "follower_progress", "follower_progress", "follower_caught_up",
    ]  # fmt: skip
    first = _facts(caplog.records[1])
    assert first["match"] == 1_000 and first["lag"] == 4_000
    assert first["rate"] == pytest.approx(500 / CATCH_UP_REPORT_S)
    assert _facts(caplog.records[2])["rate"] == 0
    assert "is catching up" in caplog.records[1].getMessage()
    assert "makes no progress" in caplog.records[2].getMessage()
    assert "caught up" in caplog.records[3].getMessage()


async def test_a_follower_that_lost_its_log_gets_a_warning_with_what_to_do(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A memory-storage follower restarted under its old id refuses everything below the
    index it acknowledged; the leader cannot repair that, and says so (rate-limited)."""
    caplog.set_level(logging.INFO, logger="trio_raft")
    network = MemoryNetwork(random.Random(1))
    ids = ("n1", "n2", "n3")
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(network.run)
            storages = {nid: MemoryStorage() for nid in ids}

            async def run(
                nid: str, done: trio.Event, *, task_status: trio.TaskStatus[Node]
            ) -> None:
                async with open_node(
                    nid, ids, state_machine=KVStateMachine(), transport=network.transport(nid),
                    storage=storages[nid], rng=random.Random(nid),
                ) as node:  # fmt: skip
                    task_status.started(node)
                    await done.wait()

            stops = {nid: trio.Event() for nid in ids}
            nodes: dict[str, Node] = {nid: await nursery.start(run, nid, stops[nid]) for nid in ids}
            leader_id = await nodes["n1"].wait_leader()
            leader = nodes[leader_id]
            for i in range(5):
                await leader.propose(("put", "k", str(i)))
            lost = next(n for n in ids if n != leader_id)
            await leader.wait_status(lambda s: s.followers[lost].match_index == s.last_log_index)
            stops[lost].set()
            await trio.sleep(0.01)
            network.detach(lost)
            storages[lost] = MemoryStorage()  # the data is gone
            stops[lost] = trio.Event()
            await nursery.start(run, lost, stops[lost])
            await trio.sleep(70)  # long enough for a second warning, past the rate limit
            nursery.cancel_scope.cancel()
    warnings = _events(caplog, "follower_lost_log")
    assert warnings and all(r.levelno == logging.WARNING for r in warnings)
    facts = _facts(warnings[0])
    assert facts["node"] == leader_id and facts["peer"] == lost
    assert facts["last_index"] == 0 and int(facts["match"]) >= 6
    assert "new id" in warnings[0].getMessage() and "file storage" in warnings[0].getMessage()
    assert len(warnings) == 2  # one at once, one a minute later (with the count suppressed)
    assert int(_facts(warnings[1])["suppressed"]) > 100


async def test_slow_disk_writes_and_the_space_alarm_are_logged_with_facts(
    autojump_clock: trio.testing.MockClock, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_raft")
    with deadline(60, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            leader = await cluster.wait_leader()
            follower = next(n for n in cluster.node_ids if n != leader.id)
            cluster.storages[follower].stall()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(leader.propose, ("put", "a", "1"))
                await trio.sleep(1.5)  # a follower's stalled disk: it stays a follower
                cluster.storages[follower].unstall()
            cluster.storages[follower].set_disk_space("low")
            node = cluster.node(follower)
            await node.wait_status(lambda s: s.no_space)
            cluster.storages[follower].set_disk_space("ok")
            await node.wait_status(lambda s: not s.no_space)
    slow = [_facts(r) for r in _events(caplog, "slow_disk_write")]
    assert [f["node"] for f in slow] == [follower], f"seed={seed}"
    assert float(slow[0]["seconds"]) >= 1.0
    raised = _events(caplog, "no_space_raised")
    cleared = _events(caplog, "no_space_cleared")
    assert [_facts(r)["node"] for r in raised] == [follower] == [_facts(r)["node"] for r in cleared]
    assert raised[0].levelno == logging.WARNING and "cause" in _facts(raised[0])
