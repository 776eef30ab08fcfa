"""Snapshot streams carry the configuration at the snapshot's index (protocol version 2): in
every chunk, and into the follower's installed snapshot."""

from __future__ import annotations

import attrs
import trio
import trio.testing

from trio_raft import Config, Membership, Message, SnapshotRequest, SnapshotResponse
from trio_raft.testing import Verdict, open_simulated_cluster

CONFIG = Config(snapshot_entries=20, snapshot_keep_entries=2, snapshot_chunk_bytes=64)


async def test_chunks_carry_the_membership_and_the_follower_installs_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chunks: list[SnapshotRequest] = []

    def watch(m: Message) -> Verdict:
        if isinstance(m, SnapshotRequest):
            chunks.append(m)
        return Verdict.DELIVER

    with trio.fail_after(60):
        async with open_simulated_cluster(3, seed=3, config=CONFIG, wire_codec=True) as cluster:
            await cluster.wait_leader()
            await cluster.crash("n3")
            for i in range(60):
                await cluster.propose(("put", f"k{i % 7}", f"v{i}"))
            cluster.network.hook = watch
            await cluster.start("n3")
            await cluster.wait_converged()
            loaded = await cluster.node("n3")._storage.load_snapshot()
    assert chunks, "n3 should have caught up from a snapshot"
    expected = Membership({"n1", "n2", "n3"})
    assert {c.membership == expected for c in chunks} == {True}
    assert loaded is not None and loaded[0].membership == expected


async def test_a_chunk_with_another_membership_restarts_the_download(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The follower keeps the membership of a stream's first chunk. Here that chunk is forged
    with another membership: the next (genuine) chunk does not match it, so the follower asks
    for the stream from the start (offset 0) and installs the genuine membership."""
    forged = Membership({"n1", "n2", "n3", "x"})
    state = {"forged": False}
    restarts: list[SnapshotResponse] = []

    def forge_first_chunk(m: Message) -> Verdict:
        if isinstance(m, SnapshotRequest) and m.offset == 0 and not state["forged"]:
            state["forged"] = True
            cluster.network.inject(attrs.evolve(m, membership=forged))
            return Verdict.DROP
        if isinstance(m, SnapshotResponse) and state["forged"] and m.offset == 0 and not m.done:
            restarts.append(m)
        return Verdict.DELIVER

    with trio.fail_after(60):
        async with open_simulated_cluster(3, seed=3, config=CONFIG, wire_codec=True) as cluster:
            await cluster.wait_leader()
            await cluster.crash("n3")
            for i in range(60):
                await cluster.propose(("put", f"k{i % 7}", f"v{i}"))
            cluster.network.hook = forge_first_chunk
            await cluster.start("n3")
            await cluster.wait_converged()
            loaded = await cluster.node("n3")._storage.load_snapshot()
    assert state["forged"] and restarts, "the forged stream should have been restarted"
    assert loaded is not None and loaded[0].membership == Membership({"n1", "n2", "n3"})
