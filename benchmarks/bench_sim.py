"""Simulator speed: wall-clock seconds per simulated second.

Baseline: an idle 5-node cluster (heartbeats only) in the same run; the chaos figure is
reported as a ratio to it, so the cost of faults, clients and checking is visible.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Iterator

import trio
import trio.testing

from trio_raft.testing import open_simulated_cluster, run_chaos


async def _idle(seconds: float) -> None:
    async with open_simulated_cluster(5, seed=1) as cluster:
        await cluster.wait_leader()
        await trio.sleep(seconds)


def _wall(fn: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))
    return time.perf_counter() - start


def run(*, quick: bool) -> Iterator[str]:
    sim_s = 10.0 if quick else 60.0
    seeds = 2 if quick else 10
    idle = _wall(functools.partial(_idle, sim_s)) / sim_s
    yield f"sim  idle 5 nodes            {idle * 1000:8.2f} ms wall per simulated s   (baseline)"
    total = 0.0
    for seed in range(seeds):
        total += _wall(functools.partial(run_chaos, seed, duration_s=sim_s))
    chaos = total / (seeds * sim_s)
    yield (
        f"sim  chaos 5 nodes, 3 clients {chaos * 1000:8.2f} ms wall per simulated s   "
        f"x{chaos / idle:.1f} baseline  ({seeds} seeds x {sim_s:.0f}s, incl. linearizability)"
    )
