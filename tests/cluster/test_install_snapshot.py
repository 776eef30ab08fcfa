"""A node restarted from its data directory after missing many writes catches up by
InstallSnapshot over the WebSocket transport (snapshots every 50 entries, 10 kept).

The restarted node runs through :mod:`._traced_node`, which logs each InstallSnapshot chunk it
receives and each snapshot it installs (the node itself reports neither).
"""

from __future__ import annotations

from pathlib import Path

import attrs
import trio

from trio_raft._types import SnapshotMeta
from trio_raft._wal._file_storage import open_file_storage

from ._harness import DEADLINE_S, SMALL_SNAPSHOTS, as_int, leader_of, open_process_cluster

KEEP = 10
assert SMALL_SNAPSHOTS["snapshot_keep_entries"] == KEEP


@attrs.frozen
class CatchUp:
    """What one run of :func:`catch_up_after_missing_writes` observed."""

    victim: str
    behind: int
    """The victim's last log index when it was killed."""
    leader_snapshot: SnapshotMeta
    """The leader's snapshot on disk when the victim restarted (no write came after)."""
    chunks: list[SnapshotMeta]
    """The snapshot of each chunk the victim received after its restart (from its log)."""
    installed: list[SnapshotMeta]
    """The snapshots the victim installed after its restart (from its log)."""
    victim_snapshot: SnapshotMeta | None
    """The victim's snapshot on disk once caught up."""
    log_start: SnapshotMeta
    """The victim's log start (index, term) on disk once caught up."""
    applied_seen: list[int]
    """The victim's applied index at each status poll after its restart."""
    catch_up_s: float


async def catch_up_after_missing_writes(directory: Path) -> CatchUp:
    """Kill a follower, write 240 keys without it, restart it, wait until it caught up."""
    async with open_process_cluster(directory, raft=SMALL_SNAPSHOTS) as cluster:
        leader, _ = await cluster.wait_leader()
        victim = next(n for n in cluster.ids if n != leader)
        async with cluster.client() as client:
            for i in range(20):
                await client.put(f"a{i}", f"{i}")
        statuses = await cluster.wait_converged()
        behind = as_int(statuses[victim] or {}, "last_index")
        await cluster.kill(victim)
        await trio.sleep(0.5)  # the leader notices: its window to the victim stalls

        survivors = [n for n in cluster.ids if n != victim]

        async def writer(w: int) -> None:
            async with cluster.client(survivors) as client:
                for i in range(80):
                    await client.put(f"b{w}.{i}", f"{w}.{i}")

        async with trio.open_nursery() as nursery:
            for w in range(3):
                nursery.start_soon(writer, w)
        statuses = await cluster.wait_converged(survivors)
        assert leader_of(statuses) == leader
        target = as_int(statuses[leader] or {}, "commit")
        leader_snapshot = cluster.snapshot_meta(leader)
        assert leader_snapshot is not None
        # The leader compacted its log up to (its snapshot - KEEP): the entry the victim needs
        # next (behind + 1) is gone, so only a snapshot can bring it up to date.
        assert leader_snapshot.index - KEEP > behind + 1, (leader_snapshot, behind)

        restarted_at = trio.current_time()
        await cluster.start(victim, trace_snapshots=True)
        applied_seen: list[int] = []
        while True:
            status = await cluster.status(victim)
            if status is not None:
                applied_seen.append(as_int(status, "applied"))
                if applied_seen[-1] >= target:
                    break
            await trio.sleep(0.01)
        catch_up_s = trio.current_time() - restarted_at
        statuses = await cluster.wait_converged()
        assert leader_of(statuses) == leader
        assert cluster.snapshot_meta(leader) == leader_snapshot
        expected = {f"a{i}": f"{i}" for i in range(20)}
        expected |= {f"b{w}.{i}": f"{w}.{i}" for w in range(3) for i in range(80)}
        assert await cluster.stale_reads(victim, expected) == expected
        victim_snapshot = cluster.snapshot_meta(victim)
        await cluster.kill(victim)
        async with open_file_storage(cluster.data_dir(victim)) as storage:
            log_start = SnapshotMeta(storage.log_start_index, storage.log_start_term)
        result = CatchUp(
            victim, behind, leader_snapshot, cluster.snapshot_chunks(victim),
            cluster.installed_snapshots(victim), victim_snapshot, log_start,
            sorted(set(applied_seen)), catch_up_s,
        )  # fmt: skip
    print(f"FIGURE install-snapshot: {result}")
    return result


async def test_restarted_node_catches_up_by_install_snapshot(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE_S):
        run = await catch_up_after_missing_writes(tmp_path)
    # It installed the leader's snapshot, received over the transport (its log says so)...
    assert run.installed and run.installed[-1] == run.leader_snapshot, run
    # ... holds exactly that snapshot on disk, and its log starts right after it (a snapshot
    # it took itself would have kept KEEP entries before its index in the log).
    assert run.victim_snapshot == run.leader_snapshot, run
    assert run.log_start == run.leader_snapshot, run


async def test_returning_node_is_sent_only_the_current_snapshot(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE_S):
        run = await catch_up_after_missing_writes(tmp_path)
    assert set(run.chunks) == {run.leader_snapshot}, run
