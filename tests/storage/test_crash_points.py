"""Crash at every fault point of a workload, under every survival mode, and recover.

The workload (hard-state changes, batched appends with syncs, a truncation reaching into an
older segment and one inside the active segment, rotation, two snapshots each followed by a
compaction, a reopen) runs on a :class:`SimulatedFileSystem` that starts with a directory an
older release wrote (version-1 segments and snapshot header), so its first append is the
upgrade to a version-2 segment; every fifth entry it appends is a configuration entry, and its
snapshots carry memberships. A first run counts its fault points (every write, fsync,
directory fsync, create, rename, unlink). Then, for each point N and each survival mode, the
workload runs again and crashes at N; the surviving file system is opened and must hold
exactly the state after some prefix of the operations the workload started, no shorter than
what the last completed ``sync`` (or ``compact``, or a hard-state ``save``) covered, and the
last snapshot saved (or the one being saved at the crash). Opening
must not raise: a pure crash is never corruption. Finally one more entry is appended, synced
and read back after another reopen, which exercises appending after a repaired torn tail.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence

import attrs
import pytest

from trio_raft import Entry, EntryKind, HardState, Membership, StoredState
from trio_raft._types import SnapshotMeta
from trio_raft._wal._file_storage import FileStorage, open_file_storage
from trio_raft._wal._segments import parse_segment_name
from trio_raft._wal._simfs import SimulatedCrash, SimulatedFileSystem, Survival

from ._old_format import header_version, make_old

DIR = "/node"
SEGMENT_BYTES = 300
TORN_SEEDS = 2
MEMBERSHIPS = [
    Membership({"n1", "n2", "n3"}),
    Membership({"n1", "n2", "n4"}, learners={"n5"}, outgoing={"n1", "n2", "n3"}),
    Membership({"n1", "n2", "n4"}, learners={"n5"}),
]


@attrs.frozen
class Op:
    kind: str  # "hs", "trunc", "append", "compact"
    hard_state: HardState | None = None
    index: int = 0
    term: int = 0
    entry: Entry | None = None


def apply(state: StoredState, op: Op) -> StoredState:
    entries = list(state.entries)
    start = state.log_start_index
    if op.kind == "hs":
        assert op.hard_state is not None
        return attrs.evolve(state, hard_state=op.hard_state)
    if op.kind == "trunc":
        return attrs.evolve(state, entries=tuple(entries[: op.index - start - 1]))
    if op.kind == "append":
        assert op.entry is not None and op.entry.index == start + len(entries) + 1
        return attrs.evolve(state, entries=(*entries, op.entry))
    assert op.kind == "compact"
    kept = tuple(e for e in entries if e.index > op.index)
    return StoredState(state.hard_state, kept, op.index, op.term)


@attrs.define
class Oracle:
    """What the workload asked for, and how much of it was durable for sure."""

    initial: StoredState
    """What the directory held before the workload (written by an older release)."""
    snapshots: list[tuple[SnapshotMeta, bytes] | None]
    """The durable snapshot, then the one being saved if a save_snapshot did not return."""
    ops: list[Op] = attrs.Factory(list)
    durable: int = 0  # ops[:durable] were covered by a completed sync/compact/hard-state save

    def states(self) -> list[StoredState]:
        out = [self.initial]
        for op in self.ops:
            out.append(apply(out[-1], op))
        return out


OLD_SNAPSHOT = b"state at 2"


_OLD: list[tuple[dict[str, bytes], StoredState]] = []


async def old_directory() -> tuple[dict[str, bytes], StoredState]:
    """The files of a directory an older release wrote (segment format 1, snapshot header 1,
    the log compacted up to index 2), and what it holds. Built once."""
    if not _OLD:
        fs = SimulatedFileSystem()
        async with open_file_storage(DIR, segment_bytes=SEGMENT_BYTES, fs=fs) as st:
            await st.save(hard_state=HardState(1, "n1"), entries=entries(1, 4, term=1))
            await st.sync()
            await st.save_snapshot(SnapshotMeta(2, 1), _one(OLD_SNAPSHOT))
            await st.compact(2, 1)
            state = await st.load()
        make_old(fs, DIR)
        _OLD.append(({p: d for p, d in fs.files().items() if not p.endswith("/LOCK")}, state))
    return _OLD[0]


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def entries(first: int, count: int, term: int, size: int = 20) -> list[Entry]:
    """Commands, and a configuration entry at every index divisible by five."""
    return [
        Entry(term, i, MEMBERSHIPS[i % 3], EntryKind.CONFIG)
        if i % 5 == 0
        else Entry(term, i, [i, "p" * (size + i % 13)])
        for i in range(first, first + count)
    ]


async def prepared(crash_after: int | None = None) -> Workload:
    """The workload on a file system holding the old directory (durably), which crashes at
    the ``crash_after``-th fault point after that."""
    files, state = await old_directory()
    fs = SimulatedFileSystem()
    fs.makedirs(DIR)
    fs.fsync_dir("/")
    for path, data in files.items():
        fs.put_file(path, data)
    if crash_after is not None:
        fs.crash_at = fs.points + crash_after
    return Workload(fs, state)


class Workload:
    def __init__(self, fs: SimulatedFileSystem, initial: StoredState) -> None:
        self.fs = fs
        self.base_points = fs.points
        self.oracle = Oracle(initial, [(SnapshotMeta(2, 1), OLD_SNAPSHOT)])
        self.hard_state = initial.hard_state

    async def save(
        self,
        st: FileStorage,
        *,
        hard_state: HardState | None = None,
        truncate_from: int | None = None,
        entries: Sequence[Entry] = (),
    ) -> None:
        ops = self.oracle.ops
        hs_changed = hard_state is not None and hard_state != self.hard_state
        if hs_changed:
            ops.append(Op("hs", hard_state=hard_state))
        hs_through = len(ops)
        if truncate_from is not None and truncate_from <= st.last_index():
            ops.append(Op("trunc", index=truncate_from))
        ops.extend(Op("append", entry=e) for e in entries)
        await st.save(hard_state=hard_state, truncate_from=truncate_from, entries=entries)
        if hs_changed:
            assert hard_state is not None
            self.hard_state = hard_state
            self.oracle.durable = hs_through

    async def sync(self, st: FileStorage) -> None:
        done = len(self.oracle.ops)
        await st.sync()
        self.oracle.durable = done

    async def compact(self, st: FileStorage, index: int, term: int) -> None:
        self.oracle.ops.append(Op("compact", index=index, term=term))
        done = len(self.oracle.ops)
        await st.compact(index, term)
        self.oracle.durable = done

    async def save_snapshot(self, st: FileStorage, meta: SnapshotMeta, size: int) -> None:
        data = bytes(i % 251 for i in range(size))
        self.oracle.snapshots.append((meta, data))

        async def chunks() -> AsyncIterator[bytes]:
            for at in range(0, size, 150):
                yield data[at : at + 150]

        await st.save_snapshot(meta, chunks())
        del self.oracle.snapshots[:-1]

    async def append(self, st: FileStorage, count: int, term: int, *, size: int = 20) -> None:
        await self.save(st, entries=entries(st.last_index() + 1, count, term, size))

    async def run(self) -> None:
        async with open_file_storage(DIR, segment_bytes=SEGMENT_BYTES, fs=self.fs) as st:
            await self.save(st, hard_state=HardState(1, None))
            await self.sync(st)
            for _ in range(5):  # batches with syncs; rotates every few batches
                await self.append(st, 4, term=1)
                await self.sync(st)
            # A new leader's entries replace a suffix reaching into an older segment.
            await self.save(
                st,
                hard_state=HardState(2, "n2"),
                truncate_from=st.last_index() - 7,
                entries=[Entry(2, st.last_index() - 7, ["re", 1])],
            )
            await self.sync(st)
            await self.append(st, 3, term=2)  # not synced before the next save
            last = st.last_index()
            await self.save(st, truncate_from=last - 1, entries=[Entry(2, last - 1, "again")])
            await self.sync(st)
            await self.append(st, 2, term=2)  # not synced: the hard state must not overtake it
            await self.save(st, hard_state=HardState(3, "n3"))  # durable at once
            await self.save_snapshot(st, SnapshotMeta(6, 1, MEMBERSHIPS[2]), 400)
            await self.compact(st, 6, 1)
            await self.append(st, 5, term=3, size=60)
            await self.append(st, 5, term=3, size=5)
            await self.sync(st)
        async with open_file_storage(DIR, segment_bytes=SEGMENT_BYTES, fs=self.fs) as st:
            await self.append(st, 2, term=3)
            await self.sync(st)
            last = st.last_index()
            await self.save_snapshot(st, SnapshotMeta(last + 5, 4, MEMBERSHIPS[1]), 200)
            await self.compact(st, last + 5, 4)  # a snapshot beyond the log
            await self.append(st, 3, term=4)
            await self.sync(st)


async def count_points() -> tuple[int, Oracle]:
    workload = await prepared()
    await workload.run()
    return workload.fs.points - workload.base_points, workload.oracle


async def crash_and_check(point: int, survival: Survival, seed: int) -> str | None:
    """Run the workload crashing at ``point``; return a failure description or None."""
    workload = await prepared(crash_after=point)
    fs = workload.fs
    try:
        await workload.run()
    except SimulatedCrash:
        pass
    else:
        return "the workload finished without reaching the crash point"
    what = f"crash at point {point} ({fs.trace[-1]}), survival={survival.value}, seed={seed}"
    survivor = fs.crash(survival, random.Random(seed))
    oracle = workload.oracle
    states = oracle.states()
    try:
        async with open_file_storage(DIR, segment_bytes=SEGMENT_BYTES, fs=survivor) as st:
            recovered = await st.load()
            candidates = range(oracle.durable, len(oracle.ops) + 1)
            matches = [k for k in candidates if states[k] == recovered]
            if not matches:
                return (
                    f"{what}: recovered state is not the state after any prefix of "
                    f"{oracle.durable}..{len(oracle.ops)} operations:\n  {recovered}\n"
                    f"  after the synced prefix: {states[oracle.durable]}"
                )
            loaded = await st.load_snapshot()
            snapshot = None
            if loaded is not None:
                meta, chunks = loaded
                snapshot = (meta, b"".join([c async for c in chunks]))
            if snapshot not in oracle.snapshots:
                return f"{what}: recovered snapshot {snapshot} is none of {oracle.snapshots}"
            # Keep going on the recovered directory, then reopen once more.
            entry = Entry(9, st.last_index() + 1, "after recovery")
            await st.save(hard_state=HardState(9, None), entries=[entry])
            await st.sync()
        async with open_file_storage(DIR, segment_bytes=SEGMENT_BYTES, fs=survivor) as st:
            again = await st.load()
            if again.entries[-1:] != (entry,) or again.entries[:-1] != recovered.entries:
                return f"{what}: appending after recovery did not survive a reopen: {again}"
    except Exception as exc:
        return f"{what}: recovery raised {exc!r}"
    return None


async def test_workload_has_many_fault_points() -> None:
    points, oracle = await count_points()
    assert points > 80, points
    assert len(oracle.ops) > 40 and oracle.durable == len(oracle.ops)
    files, _ = await old_directory()
    old = [d for p, d in files.items() if parse_segment_name(p.rsplit("/", 1)[1])]
    assert old and {header_version(d) for d in old} == {1}
    configs = [op for op in oracle.ops if op.entry and op.entry.kind is EntryKind.CONFIG]
    assert len(configs) >= 8


@pytest.mark.parametrize(
    ("survival", "seeds"),
    [(Survival.LOSE, 1), (Survival.KEEP, 1), (Survival.TORN, TORN_SEEDS)],
    ids=["lose", "keep", "torn"],
)
async def test_crash_at_every_point(survival: Survival, seeds: int) -> None:
    points, _ = await count_points()
    failures = []
    for point in range(1, points + 1):
        for seed in range(seeds):
            failure = await crash_and_check(point, survival, seed * 1000 + point)
            if failure is not None:
                failures.append(failure)
    assert not failures, f"{len(failures)} of {points * seeds} crash cases failed:\n" + "\n".join(
        failures[:10]
    )
