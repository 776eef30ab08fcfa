"""Replication across the compaction point: followers that fall behind while the leader
compacts, snapshot streams that get abandoned, and logs that must stay bounded (issue 7)."""

from __future__ import annotations

import logging
from typing import cast

import attrs
import pytest
import trio
import trio.testing

from trio_raft import AppendResponse, Config, Message, SnapshotResponse
from trio_raft._core._log import entry_size
from trio_raft.testing import KVStateMachine, SimulatedCluster, Verdict, open_simulated_cluster


async def _burst(cluster: SimulatedCluster, leader_id: str, count: int) -> None:
    """Propose ``count`` commands at once, so the leader ships them in full-size batches."""
    leader = cluster.node(leader_id)
    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(leader.propose, ("put", f"k{i % 7}", str(i)))


@pytest.mark.parametrize(
    ("keep", "snapshot_entries", "burst"),
    [
        (0, 20, 300),  # keep nothing: the window lost in flight lies wholly in the snapshot
        (1, 20, 300),
        (1_000, 1_500, 2_000),  # the default keep: ~2,000 entries cross the snapshot point
    ],
)
async def test_follower_cut_off_while_its_window_crosses_the_snapshot_point(
    autojump_clock: trio.testing.MockClock, keep: int, snapshot_entries: int, burst: int
) -> None:
    """A follower replicating optimistically loses its whole in-flight window while the leader
    compacts past the follower's ``match``. The stall sends ``next`` back to ``match + 1``,
    inside the compacted prefix: the leader must switch to a snapshot, not build an empty or
    misaligned AppendEntries (it used to die with ``IndexError`` in ``next_append``)."""
    config = Config(snapshot_entries=snapshot_entries, snapshot_keep_entries=keep)
    with trio.fail_after(120):
        async with open_simulated_cluster(3, seed=1, config=config) as cluster:
            leader = await cluster.wait_leader()
            await cluster.wait_converged()
            cut = next(n for n in cluster.node_ids if n != leader.id)
            dropping = True

            def drop_cut(m: Message) -> Verdict:
                return Verdict.DROP if dropping and cut in (m.src, m.dst) else Verdict.DELIVER

            cluster.network.hook = drop_cut
            await _burst(cluster, leader.id, burst)
            with trio.fail_after(0.05):  # well before the lost window counts as stalled
                while True:
                    if leader._state.log.start_index > leader._state.progress[cut].match:
                        break
                    await trio.sleep(0.001)
            await trio.sleep(1.0)  # the window stalls meanwhile
            dropping = False
            await cluster.wait_converged()
            await cluster.wait_logs_bounded()
            states = {
                nid: cast(KVStateMachine, sm).as_dict()
                for nid, sm in cluster.state_machines.items()
            }
            assert states[cut] == states[leader.id]


async def test_abandoned_snapshot_download_does_not_stop_compaction(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The leader abandons an InstallSnapshot stream half-way: a late AppendEntries success
    shows the follower can be served from the log after all. The follower's half-received
    download must not keep its snapshot slot forever: it has to snapshot and compact again
    (its log used to grow without bound)."""
    caplog.set_level(logging.INFO, logger="trio_raft")
    # The window must hold the 15 unanswered appends (the leader sends each entry as soon as
    # it is proposed, one append per entry here).
    config = Config(
        snapshot_entries=20, snapshot_keep_entries=10, snapshot_chunk_bytes=32,
        max_inflight_appends=32,
    )  # fmt: skip
    with trio.fail_after(120):
        async with open_simulated_cluster(3, seed=4, config=config) as cluster:
            leader = await cluster.wait_leader()
            await cluster.wait_converged()
            f = next(n for n in cluster.node_ids if n != leader.id)
            for i in range(10):  # a state worth many chunks
                await leader.propose(("put", f"big{i}", "x" * 200))
            # Start right after one of the leader's snapshots.
            first = leader._snapshot_index
            while leader._snapshot_index == first:
                await leader.propose(("put", "k", "filler"))
                await trio.testing.wait_all_tasks_blocked()
            base = leader._snapshot_index
            assert leader._state.log.last_index < base + 5
            # The follower receives the next 15 entries, but its answers are lost (kept here).
            late: list[AppendResponse] = []
            streaming = trio.Event()
            chunks_acked = 0

            def hook(m: Message) -> Verdict:
                nonlocal chunks_acked
                if m.src == f and isinstance(m, AppendResponse) and m.success:
                    late.append(m)
                    return Verdict.DROP
                if m.src == f and isinstance(m, SnapshotResponse) and not m.done:
                    chunks_acked += 1
                    if chunks_acked >= 2:
                        streaming.set()
                return Verdict.DELIVER

            cluster.network.hook = hook
            while leader._state.log.last_index < base + 15:
                await leader.propose(("put", "k", "a"))
            await trio.sleep(0.05)  # the last AppendEntries reaches the follower
            held = max(late, key=lambda m: m.match_index)
            assert held.match_index >= base + 15
            # Cut it off; the leader snapshots at base + 20 and compacts to base + 10, past
            # what it knows the follower has (but not past what the follower really has).
            cluster.isolate(f)
            for i in range(10):
                await leader.propose(("put", "k", f"b{i}"))
            await trio.sleep(1.0)
            assert leader._state.log.start_index <= held.match_index
            assert leader._state.progress[f].match < leader._state.log.start_index
            cluster.heal()
            with trio.fail_after(10):
                await streaming.wait()  # the stream is under way
            assert cluster.node(f)._receiver is not None
            cluster.network.inject(attrs.evolve(held))  # the late answer arrives
            cluster.network.hook = None
            for i in range(200):
                await leader.propose(("put", "k", f"c{i}"))
            await cluster.wait_converged()
            await cluster.wait_logs_bounded()
            assert cluster.node(f)._snapshot_index > base + 20
    dropped = [getattr(r, "raft", {}) for r in caplog.records]
    dropped = [d for d in dropped if d.get("event") == "snapshot_abandoned"]
    assert [(d["node"], d["reason"]) for d in dropped] == [(f, "log_caught_up")]
    assert int(dropped[0]["bytes"]) >= 2 * config.snapshot_chunk_bytes


async def test_large_values_trigger_snapshots_by_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """400 overwrites of a 256 KiB value: far below ``snapshot_entries``, but the byte trigger
    snapshots and compacts, so no node keeps the whole history (+100 MB each before)."""
    config = Config(snapshot_bytes=1 << 20)
    value = "v" * (256 << 10)
    with trio.fail_after(300):
        async with open_simulated_cluster(3, seed=5, config=config) as cluster:
            leader = await cluster.wait_leader()
            for i in range(400):
                await leader.propose(("put", "k", f"{i}{value}"))
            await cluster.wait_converged()
            await cluster.wait_logs_bounded()
            for nid, node in cluster.nodes.items():
                log = node._state.log
                size = sum(
                    entry_size(log.entry(i)) for i in range(log.start_index + 1, log.last_index + 1)
                )
                assert size <= 2 * config.snapshot_bytes + len(value) + 100, (nid, size, len(log))
                assert log.start_index > 300, (nid, log.start_index)
