"""The leader's write path: a 3-node cluster in one process over the real WebSocket transport.

Three nodes (``open_node`` on ``open_websocket_transport``, 127.0.0.1, port 0) run in one trio
run, with :class:`~trio_raft.FileStorage` (every write fsynced, in a temporary directory) or
:class:`~trio_raft.MemoryStorage`. Closed-loop clients call ``leader.propose`` with 1 and 128
outstanding writes for a fixed window and report, per configuration:

* writes/s and the p50/p99 latency of a write;
* CPU µs per write: ``time.process_time`` of the whole process (the three nodes, their
  transports and the clients share one interpreter, so this is an upper bound of the leader's);
* task steps per write: trio task steps (an instrument counting ``before_task_step``) of every
  task, and of the leader node's own tasks (its dispatcher, replicators, applier, ...) alone.

In one process the three nodes share one core: absolute figures are below those of separate
processes (``benchmarks/bench_cluster*.py``); this benchmark is for comparing write paths.

Run: ``python -m benchmarks.bench_write_path [--quick] [--seconds S]``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import attrs
import trio

from trio_raft import MemoryStorage, Node, Storage, open_file_storage, open_node
from trio_raft._transport import open_websocket_transport
from trio_raft.testing import KVStateMachine

IDS = ("n1", "n2", "n3")
SECRET = bytes(range(32))
VALUE = "v" * 16


class StepCounter(trio.abc.Instrument):
    """Counts task steps: all of them, and those of tasks whose name marks them as a node's."""

    def __init__(self) -> None:
        self.total = 0
        self.by_name: dict[str, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.total += 1
        self.by_name[task.name] = self.by_name.get(task.name, 0) + 1

    def of_node(self, node_id: str) -> int:
        """Steps of ``node_id``'s own tasks (``trio_raft <task> <id>`` and its replicators)."""
        return sum(
            n
            for name, n in self.by_name.items()
            if name.endswith(f" {node_id}") or f"replicator {node_id}->" in name
        )


@attrs.frozen
class Result:
    storage: str
    outstanding: int
    writes: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    steps: float
    leader_steps: float

    def line(self) -> str:
        rate = self.writes / self.seconds
        return (
            f"write path {self.storage:<6} {self.outstanding:>3} outstanding: {rate:8.0f} writes/s"
            f"  p50 {self.p50_ms:6.2f} ms  p99 {self.p99_ms:6.2f} ms  CPU {self.cpu_us:6.0f} µs"
            f"/write  steps/write {self.steps:5.1f} (leader's tasks {self.leader_steps:5.1f})"
        )


@asynccontextmanager
async def open_cluster(storage: str, tmp: Path) -> AsyncIterator[Node]:
    """Three nodes over WebSockets on 127.0.0.1; yields the leader."""
    async with AsyncExitStack() as stack:
        transports = {}
        for nid in IDS:
            peers: dict[str, str | None] = {p: None for p in IDS if p != nid}
            transports[nid] = await stack.enter_async_context(
                open_websocket_transport(nid, peers, cluster_id="bench", secret=SECRET)
            )
        for a in transports.values():
            for b in transports.values():
                if a is not b:
                    a.set_peer_url(b.node_id, b.url)
        nodes = {}
        for nid in IDS:
            store: Storage
            if storage == "file":
                store = await stack.enter_async_context(open_file_storage(tmp / nid))
            else:
                store = MemoryStorage()
            nodes[nid] = await stack.enter_async_context(
                open_node(
                    nid, IDS, state_machine=KVStateMachine(), transport=transports[nid],
                    storage=store, rng=random.Random(nid),
                )
            )  # fmt: skip
        leader = nodes[await nodes[IDS[0]].wait_leader()]
        await leader.wait_status(lambda s: s.leader_id == s.node_id)
        yield leader


async def measure(storage: str, outstanding: int, seconds: float) -> Result:
    with tempfile.TemporaryDirectory(prefix="bench-write-path-") as tmp:
        async with open_cluster(storage, Path(tmp)) as leader:
            for i in range(200):  # warm up: connections, caches
                await leader.propose(("put", f"w{i}", VALUE))
            latencies: list[float] = []
            counter = StepCounter()
            stop = False

            async def client(c: int) -> None:
                i = 0
                while not stop:
                    start = time.perf_counter()
                    await leader.propose(("put", f"k{c}-{i % 100}", VALUE))
                    latencies.append(time.perf_counter() - start)
                    i += 1

            async with trio.open_nursery() as nursery:
                for c in range(outstanding):
                    nursery.start_soon(client, c)
                await trio.sleep(0.2)  # ramp up
                latencies.clear()
                trio.lowlevel.add_instrument(counter)
                cpu0, t0 = time.process_time(), time.perf_counter()
                await trio.sleep(seconds)
                writes = len(latencies)
                cpu1, t1 = time.process_time(), time.perf_counter()
                trio.lowlevel.remove_instrument(counter)
                window = sorted(latencies[:writes])
                stop = True
            leader_steps = counter.of_node(leader.id)
    return Result(
        storage, outstanding, writes, t1 - t0,
        1e3 * window[len(window) // 2], 1e3 * window[int(len(window) * 0.99)],
        1e6 * (cpu1 - cpu0) / writes, counter.total / writes, leader_steps / writes,
    )  # fmt: skip


def run(*, quick: bool, seconds: float | None = None) -> Iterator[str]:
    window = seconds if seconds is not None else (1.0 if quick else 4.0)
    for storage in ("file", "memory"):
        for outstanding in (1, 128):
            yield trio.run(measure, storage, outstanding, window).line()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_write_path", description=__doc__
    )
    parser.add_argument("--quick", action="store_true", help="1 s windows (a smoke test)")
    parser.add_argument("--seconds", type=float, default=None, help="length of each window")
    args = parser.parse_args(argv)
    for line in run(quick=args.quick, seconds=args.seconds):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
