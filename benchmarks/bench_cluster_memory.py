"""Commit throughput of a 3-node cluster on the in-memory network, in real time.

Baseline: the same number of round trips through a bare trio memory channel pair, measured in
the same run, which bounds what any in-process design can do on this machine.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping

import trio

from trio_raft import MemoryStorage, Node, Storage, open_node
from trio_raft.testing import KVStateMachine, MemoryNetwork


async def _baseline(n: int) -> float:
    send, receive = trio.open_memory_channel[int](0)
    back_send, back_receive = trio.open_memory_channel[int](0)

    async def echo() -> None:
        async for i in receive:
            await back_send.send(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        start = time.perf_counter()
        for i in range(n):
            await send.send(i)
            await back_receive.receive()
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return n / elapsed


async def cluster_throughput(
    n: int, concurrency: int, storages: Mapping[str, Storage]
) -> tuple[float, str]:
    """Commits per second of a cluster (one node per storage) on a zero-delay in-memory
    network, with ``concurrency`` clients proposing ``n`` commands in all; and the leader's id."""
    network = MemoryNetwork(random.Random(1), delay_s_min=0.0, delay_s_max=0.0)
    ids = sorted(storages)
    nodes: dict[str, Node] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(network.run)

        async def run_node(nid: str, task_status: trio.TaskStatus[None]) -> None:
            async with open_node(
                nid, ids, state_machine=KVStateMachine(), transport=network.transport(nid),
                storage=storages[nid], rng=random.Random(nid),
            ) as node:  # fmt: skip
                nodes[nid] = node
                task_status.started()
                await trio.sleep_forever()

        for nid in ids:
            await nursery.start(run_node, nid)
        leader = nodes[await nodes[ids[0]].wait_leader()]
        await leader.propose(("put", "warm", "up"))
        counter = iter(range(n))

        async def client() -> None:
            for i in counter:
                await leader.propose(("put", f"k{i % 100}", "v" * 100))

        start = time.perf_counter()
        async with trio.open_nursery() as clients:
            for _ in range(concurrency):
                clients.start_soon(client)
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return n / elapsed, leader.id


async def _cluster(n: int, concurrency: int) -> float:
    storages: dict[str, Storage] = {nid: MemoryStorage() for nid in ("a", "b", "c")}
    rate, _ = await cluster_throughput(n, concurrency, storages)
    return rate


def run(*, quick: bool) -> Iterator[str]:
    n = 2_000 if quick else 20_000
    base = trio.run(_baseline, n)
    yield f"mem  channel round trip        {base:10.0f} /s   (baseline)"
    for concurrency in (1, 64):
        rate = trio.run(_cluster, n, concurrency)
        yield (
            f"mem  3-node commits, {concurrency:>3} clients {rate:10.0f} /s   "
            f"{rate / base:.4f} of baseline"
        )
