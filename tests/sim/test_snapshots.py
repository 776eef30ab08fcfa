"""Snapshots, log compaction and InstallSnapshot in the simulator."""

from __future__ import annotations

import trio
import trio.testing

from trio_raft import Config, Message, SnapshotRequest
from trio_raft.testing import KVStateMachine, SimulatedCluster, open_simulated_cluster

SMALL = Config(snapshot_entries=20, snapshot_keep_entries=5, snapshot_chunk_bytes=64)


def _state(cluster: SimulatedCluster, nid: str) -> dict[str, str]:
    sm = cluster.state_machines[nid]
    assert isinstance(sm, KVStateMachine)
    return sm.as_dict()


async def test_log_is_compacted_after_a_snapshot(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(30):
        async with open_simulated_cluster(3, seed=1, config=SMALL) as cluster:
            leader = await cluster.wait_leader()
            for i in range(100):
                await leader.propose(("put", f"k{i % 7}", str(i)))
            await cluster.wait_converged()
            await trio.testing.wait_all_tasks_blocked()
            for nid, node in cluster.nodes.items():
                log = node._state.log
                assert log.start_index >= 100 - 20 - 5, (nid, log.start_index)
                assert len(log) < 30, (nid, len(log))
                snapshot = cluster.storages[nid]._durable.snapshot
                assert snapshot is not None and snapshot[0].index >= log.start_index


async def test_lagging_follower_is_caught_up_by_install_snapshot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with open_simulated_cluster(3, seed=2, config=SMALL) as cluster:
            leader = await cluster.wait_leader()
            lagging = next(n for n in cluster.node_ids if n != leader.id)
            await cluster.crash(lagging)
            for i in range(200):
                await leader.propose(("put", f"k{i % 11}", "x" * 30 + str(i)))
            assert leader._state.log.start_index > 100  # what it missed is compacted away
            cluster.network.reset_stats()
            await cluster.start(lagging)
            await cluster.wait_converged()
            sent = cluster.network.stats().by_type
            assert sent["SnapshotRequest"].sent >= 2  # several chunks
            assert _state(cluster, lagging) == _state(cluster, leader.id)
            # and it keeps replicating normally afterwards
            await leader.propose(("put", "after", "snapshot"))
            await cluster.wait_converged()
            assert _state(cluster, lagging)["after"] == "snapshot"


async def test_restart_recovers_from_snapshot_plus_log(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with open_simulated_cluster(3, seed=3, config=SMALL) as cluster:
            leader = await cluster.wait_leader()
            for i in range(90):
                await leader.propose(("append", "k", f"[{i}]"))
            await cluster.wait_converged()
            expected = _state(cluster, leader.id)
            for nid in cluster.node_ids:
                await cluster.crash(nid)
            for nid in cluster.node_ids:
                await cluster.start(nid)
            # Before any new leader commits, each node restored its snapshot.
            for nid, node in cluster.nodes.items():
                assert node.status.last_applied == node._state.log.start_index > 0, nid
            leader = await cluster.wait_leader()
            await leader.propose(("get", "k"))
            await cluster.wait_converged()
            for nid in cluster.node_ids:
                assert _state(cluster, nid) == expected


async def test_returning_follower_is_sent_only_the_newest_snapshot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While a follower is down the leader snapshots again and again; when it returns it must
    get the newest snapshot, not first the one that was current when it went down."""
    with trio.fail_after(60):
        async with open_simulated_cluster(3, seed=1, config=SMALL) as cluster:
            leader = await cluster.wait_leader()
            lagging = next(n for n in cluster.node_ids if n != leader.id)
            await cluster.crash(lagging)
            for i in range(60):
                await leader.propose(("put", "k", str(i)))
            await trio.sleep(2)  # the replicator keeps probing the dead follower meanwhile
            for i in range(200):
                await leader.propose(("put", "k", str(i)))
            await trio.testing.wait_all_tasks_blocked()
            sent: list[int] = []

            def record(_now: float, kind: str, m: Message) -> None:
                if kind == "deliver" and isinstance(m, SnapshotRequest) and m.dst == lagging:
                    sent.append(m.index)

            cluster.network.on_event = record
            await cluster.start(lagging)
            await cluster.wait_converged()
            newest = leader._snapshot_index
            assert sent, "the follower was not caught up by InstallSnapshot"
            assert set(sent) == {newest}, (sent, newest)
