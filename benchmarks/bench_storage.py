"""Durable storage: group commit, recovery time and compaction, on this machine's disk.

* Group commit: a 3-node in-process cluster on ``FileStorage`` with many concurrent
  proposers; entries per fsync tells how well one sync covers many entries. Baseline: the
  same cluster on ``MemoryStorage`` in the same run.
* Recovery: write N entries, reopen, time ``open_file_storage`` + ``load``. Baseline: reading
  the same segment bytes raw from disk.
* Compaction: directory size before and after compacting all but the last 1% of the log.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import trio

from trio_raft import Entry, HardState, MemoryStorage, Storage, open_file_storage
from trio_raft._types import SnapshotMeta

from .bench_cluster_memory import cluster_throughput

SEGMENT_BYTES = 4 << 20
"""Small segments, so compaction (which deletes whole segments) shows in the figures."""


def _read_raw(path: str) -> float:
    start = time.perf_counter()
    for p in sorted(Path(path).iterdir()):
        p.read_bytes()
    return time.perf_counter() - start


def _dir_bytes(path: str) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


async def _group_commit(n: int, concurrency: int) -> tuple[float, float, float]:
    memory: dict[str, Storage] = {nid: MemoryStorage() for nid in ("a", "b", "c")}
    base_rate, _ = await cluster_throughput(n, concurrency, memory)
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            open_file_storage(os.path.join(tmp, "a")) as a,
            open_file_storage(os.path.join(tmp, "b")) as b,
            open_file_storage(os.path.join(tmp, "c")) as c,
        ):
            rate, leader = await cluster_throughput(n, concurrency, {"a": a, "b": b, "c": c})
            stats = {"a": a, "b": b, "c": c}[leader].statistics()
    return rate, base_rate, (n + 2) / max(stats.syncs, 1)


async def _recovery(n: int) -> tuple[float, float, int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "node")
        async with open_file_storage(path, segment_bytes=SEGMENT_BYTES) as storage:
            await storage.save(hard_state=HardState(1, "a"))
            batch = 1000
            for lo in range(1, n + 1, batch):
                entries = [
                    Entry(1, i, ("put", f"k{i % 100}", "v" * 100)) for i in range(lo, lo + batch)
                ]
                await storage.save(entries=entries)
                await storage.sync()
        before = _dir_bytes(path)
        raw_s = await trio.to_thread.run_sync(_read_raw, path)
        start = time.perf_counter()
        async with open_file_storage(path, segment_bytes=SEGMENT_BYTES) as storage:
            state = await storage.load()
            assert len(state.entries) == n
            open_s = time.perf_counter() - start
            keep = n // 100
            await storage.save_snapshot(SnapshotMeta(n - keep, 1), _one_chunk(b"bench"))
            await storage.compact(n - keep, 1)
            await storage.sync()
        after = _dir_bytes(path)
    return open_s, raw_s, before, after


def run(*, quick: bool) -> Iterator[str]:
    n = 5_000 if quick else 50_000
    for concurrency in (1, 64):
        rate, base, per_sync = trio.run(
            _group_commit, n // (10 if concurrency == 1 else 1), concurrency
        )
        yield (
            f"disk 3-node commits, {concurrency:>3} clients {rate:10.0f} /s   "
            f"{rate / base:.3f} of MemoryStorage   {per_sync:6.1f} entries per leader fsync"
        )
    entries = 100_000 if quick else 1_000_000
    open_s, raw_s, before, after = trio.run(_recovery, entries)
    yield (
        f"disk recovery of {entries:,} entries   {open_s:8.2f} s "
        f"({entries / open_s:,.0f} entries/s)   "
        f"x{open_s / raw_s:.0f} raw read of the same files ({raw_s:.3f} s)"
    )
    yield (
        f"disk usage {before / 1e6:8.1f} MB before compaction, {after / 1e6:8.1f} MB after "
        f"keeping the last 1% ({after / before:.3f})"
    )


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data
