"""FileStorage round trips, compaction, the directory lock and misuse errors.

The first half is a conformance check of the :class:`~trio_raft.Storage` contract,
:func:`check_storage`, run against :class:`~trio_raft.MemoryStorage`, the simulator's
:class:`~trio_raft.testing.SimulatedStorage` and :class:`FileStorage` on the real disk and on
the simulated file system, so every implementation answers to one contract (configuration
entries and snapshot memberships included). A *place* is where a storage lives: opening the
same place again must give back what was synced (for the in-memory ones, the same object).
"""

from __future__ import annotations

import errno
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_raft import Entry, EntryKind, HardState, MemoryStorage, RaftError, StoredState
from trio_raft._abc import Storage
from trio_raft._types import Membership, SnapshotMeta
from trio_raft._wal._errors import StorageCorruptError, StorageError, StorageLockedError
from trio_raft._wal._file_storage import FileStorage, open_file_storage
from trio_raft._wal._fs import AppendFile, FileLock, ReadFile
from trio_raft._wal._simfs import SimulatedFileSystem, Survival
from trio_raft.testing import SimulatedStorage

Opener = Callable[[], AbstractAsyncContextManager[Storage]]

COMMANDS: list[object] = [
    None,
    b"\x00\xffbytes",
    [1, [2, [3, None]], "deep"],
    {"k": [1, 2], "n": None, "b": b"x"},
    "unicode: \u00e9\u4e2d\U0001f600",
    2**70,
    -(2**40),
    1.5,
    True,
    "x" * 100_000,
]


CONFIGS = [
    Membership({"n1"}),
    Membership(
        {"n1", "n2", "n4"},
        learners={"n5"},
        outgoing={"n1", "n2", "n3"},
        addresses={
            n: {"peer": f"wss://{n}.example:7000", "client": f"https://{n}.example"}
            for n in ("n1", "n2", "n3", "n4", "n5")
        },
    ),
    Membership({"a", "b"}, addresses={"a": "ws://a:1", "b": ["any", {"cbor": b"value"}, 3]}),
]
"""Memberships as CONFIG entries carry them: bootstrap, joint with learners, odd addresses."""


def entries(first: int, count: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, ["cmd", i]) for i in range(first, first + count)]


async def check_storage(open_place: Opener) -> None:
    """The Storage contract: what a node may rely on, for any implementation."""
    async with open_place() as st:
        assert await st.load() == StoredState()
        assert st.last_index() == 0
        assert st.entries(1, 10) == []

        # Hard state and entries with every kind of command, in one batch.
        batch = [Entry(1, i + 1, c) for i, c in enumerate(COMMANDS)]
        batch.append(Entry(1, len(batch) + 1, None, EntryKind.NOOP))
        batch += [Entry(1, len(batch) + 1 + i, m, EntryKind.CONFIG) for i, m in enumerate(CONFIGS)]
        batch.append(Entry(1, len(batch) + 1, "after the configurations"))
        await st.save(hard_state=HardState(1, "n1"), entries=batch)
        assert st.last_index() == len(batch)  # visible before the sync
        await st.sync()
        assert st.entries(1, 100) == batch
        assert st.entries(3, 5) == batch[2:4]
        assert st.entries(0, 2) == batch[:1]
        assert st.entries(5, 5) == []

    async with open_place() as st:
        state = await st.load()
        assert state.hard_state == HardState(1, "n1")
        assert list(state.entries) == batch

        # Truncation then re-append, in one save; a new hard state in the same save.
        n = len(batch)
        await st.save(
            hard_state=HardState(2, None), truncate_from=n - 2, entries=entries(n - 2, 5, term=2)
        )
        await st.sync()
        expected = batch[: n - 3] + entries(n - 2, 5, term=2)
        assert st.entries(1, 100) == expected
        assert st.last_index() == n + 2

        # Truncating past the end changes nothing; truncation alone shortens the log.
        await st.save(truncate_from=st.last_index() + 1)
        await st.save(truncate_from=n)
        await st.sync()
        expected = expected[: n - 1]
        assert st.entries(1, 100) == expected

        # Many small batches, each synced (a node's steady state).
        for _ in range(30):
            first = st.last_index() + 1
            await st.save(entries=entries(first, 7, term=3))
            await st.sync()
            expected += entries(first, 7, term=3)
        # Saved but not synced: visible, but a restart may lose it (not checked here).
        assert st.last_index() == len(expected)

    async with open_place() as st:
        state = await st.load()
        assert state.hard_state == HardState(2, None)
        assert list(state.entries) == expected
        assert st.entries(1, len(expected) + 1) == expected

        # Misuse: entries that do not follow on.
        last = st.last_index()
        with pytest.raises(ValueError, match="contiguous"):
            await st.save(entries=[Entry(3, last + 2)])
        with pytest.raises(ValueError, match="contiguous"):
            await st.save(truncate_from=last - 1, entries=[Entry(3, last)])


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await trio.lowlevel.checkpoint()
        yield part


async def _read(loaded: tuple[SnapshotMeta, AsyncIterator[bytes]] | None) -> tuple[object, bytes]:
    assert loaded is not None
    meta, chunks = loaded
    return meta, b"".join([chunk async for chunk in chunks])


async def check_compaction_and_snapshots(open_place: Opener) -> None:
    """The compaction and snapshot half of the Storage contract."""
    async with open_place() as st:
        assert await st.load_snapshot() is None
        await st.save(hard_state=HardState(2, "n1"), entries=entries(1, 30, term=2))
        await st.sync()
        at_20 = SnapshotMeta(20, 2, CONFIGS[1])
        await st.save_snapshot(at_20, _chunks(b"state ", b"", b"at 20"))
        assert await _read(await st.load_snapshot()) == (at_20, b"state at 20")
        await st.compact(20, 2)
        assert st.last_index() == 30
        assert st.entries(1, 100) == entries(21, 10, term=2)
        assert st.entries(15, 23) == entries(21, 2, term=2)
        await st.compact(10, 2)  # at or below the log start: nothing happens
        await st.save(truncate_from=28, entries=entries(28, 2, term=3))
        await st.sync()

    async with open_place() as st:
        state = await st.load()
        assert (state.log_start_index, state.log_start_term) == (20, 2)
        assert list(state.entries) == entries(21, 7, term=2) + entries(28, 2, term=3)
        assert await _read(await st.load_snapshot()) == (at_20, b"state at 20")

        # A snapshot from a leader, beyond the whole log: the log empties.
        await st.save_snapshot(SnapshotMeta(100, 5), _chunks(b"big" * 1000))
        await st.save(truncate_from=21)
        await st.sync()
        await st.compact(100, 5)
        assert st.last_index() == 100 and st.entries(1, 200) == []
        await st.save(entries=entries(101, 2, term=5))
        await st.sync()

    async with open_place() as st:
        state = await st.load()
        assert (state.log_start_index, state.log_start_term) == (100, 5)
        assert list(state.entries) == entries(101, 2, term=5)
        assert await _read(await st.load_snapshot()) == (SnapshotMeta(100, 5), b"big" * 1000)

        # Configuration entries go through truncation and compaction like any other; the
        # snapshot's membership (whatever it is) comes back as it was saved.
        config = [Entry(5, 103, CONFIGS[0], EntryKind.CONFIG)]
        config += [Entry(5, 104, CONFIGS[1], EntryKind.CONFIG), *entries(105, 2, term=5)]
        await st.save(entries=config)
        await st.sync()
        await st.save(truncate_from=104, entries=[Entry(6, 104, CONFIGS[2], EntryKind.CONFIG)])
        await st.sync()
        kept = [*entries(101, 2, term=5), config[0], Entry(6, 104, CONFIGS[2], EntryKind.CONFIG)]
        assert st.entries(101, 110) == kept
        at_103 = SnapshotMeta(103, 5, CONFIGS[0])
        await st.save_snapshot(at_103, _chunks(b"at 103"))
        await st.compact(103, 5)
        assert st.entries(101, 110) == kept[3:]

    async with open_place() as st:
        state = await st.load()
        assert (state.log_start_index, state.log_start_term) == (103, 5)
        assert list(state.entries) == kept[3:]
        assert await _read(await st.load_snapshot()) == (at_103, b"at 103")


@asynccontextmanager
async def _same(storage: MemoryStorage | SimulatedStorage) -> AsyncIterator[Storage]:
    yield storage


CHECKS = [check_storage, check_compaction_and_snapshots]


@pytest.mark.parametrize("check", CHECKS)
async def test_memory_storage_conforms(check: Callable[[Opener], Awaitable[None]]) -> None:
    storage = MemoryStorage()
    await check(lambda: _same(storage))


@pytest.mark.parametrize("check", CHECKS)
async def test_simulated_storage_conforms(
    check: Callable[[Opener], Awaitable[None]], autojump_clock: trio.testing.MockClock
) -> None:
    storage = SimulatedStorage(random.Random(0))
    await check(lambda: _same(storage))


@pytest.mark.parametrize("check", CHECKS)
async def test_file_storage_conforms_on_disk(
    check: Callable[[Opener], Awaitable[None]], tmp_path: Path
) -> None:
    await check(lambda: open_file_storage(tmp_path / "data", segment_bytes=4096))


@pytest.mark.parametrize("check", CHECKS)
async def test_file_storage_conforms_on_simulated_fs(
    check: Callable[[Opener], Awaitable[None]],
) -> None:
    fs = SimulatedFileSystem()
    await check(lambda: open_file_storage("/data", segment_bytes=1024, fs=fs))


# -- FileStorage specifics --------------------------------------------------------------------


async def test_rotation_across_many_segments_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "data"
    async with open_file_storage(path, segment_bytes=512) as st:
        for i in range(40):
            await st.save(entries=[Entry(1, st.last_index() + 1, "x" * (i * 7)) for _ in [0]])
            await st.save(entries=entries(st.last_index() + 1, 5))
            await st.sync()
        synced = await st.load()
        assert st.statistics().segments > 10
    names = sorted(p.name for p in path.iterdir())
    assert {"LOCK", "state"} <= set(names) and "state.tmp" not in names
    assert all(
        len(p.name) == len("wal-0000000001-00000000000000000001.log") for p in path.glob("wal-*")
    )
    for p in path.glob("wal-*"):
        assert p.stat().st_size <= 512 + 100  # one record may overshoot a little
    async with open_file_storage(path, segment_bytes=512) as st:
        assert await st.load() == synced


async def test_group_commit_one_fsync_per_sync() -> None:
    async with open_file_storage("/d", fs=SimulatedFileSystem()) as st:
        before = st.statistics()
        await st.save(entries=entries(1, 100))
        await st.sync()
        await st.sync()  # nothing new: no fsync
        after = st.statistics()
        assert after.fsyncs - before.fsyncs == 1
        assert after.directory_fsyncs == before.directory_fsyncs
        assert after.syncs - before.syncs == 1


async def test_save_with_sync_is_durable_when_it_returns() -> None:
    """``save(sync=True)`` (the node's one thread hand-off per write): the entries saved before
    and with it survive a crash that loses everything unsynced; one fsync for both."""
    fs = SimulatedFileSystem()
    async with open_file_storage("/d", fs=fs) as st:
        await st.save(entries=entries(1, 10))
        before = st.statistics()
        await st.save(entries=entries(11, 10), sync=True)
        await st.save(sync=True)  # nothing new: no fsync
        after = st.statistics()
        assert (after.fsyncs - before.fsyncs, after.syncs - before.syncs) == (1, 1)
        await st.save(entries=entries(21, 1))
        await st.save(sync=True)  # nothing new to write, but something to sync
        assert st.statistics().syncs - after.syncs == 1
    survivor = fs.crash(Survival.LOSE, random.Random(0))
    async with open_file_storage("/d", fs=survivor) as st:
        assert st.last_index() == 21


async def test_hard_state_is_durable_when_save_returns() -> None:
    fs = SimulatedFileSystem()
    async with open_file_storage("/d", fs=fs) as st:
        await st.save(hard_state=HardState(5, "n2"))
        await st.save(hard_state=HardState(5, "n2"))  # unchanged: no write
    survivor = fs.crash(Survival.LOSE, random.Random(0))
    async with open_file_storage("/d", fs=survivor) as st:
        assert st.hard_state == HardState(5, "n2")


async def test_compact_drops_prefix_and_deletes_segments(tmp_path: Path) -> None:
    path = tmp_path / "data"
    async with open_file_storage(path, segment_bytes=512) as st:
        await st.save(hard_state=HardState(3, "n1"))
        for _ in range(20):
            await st.save(entries=entries(st.last_index() + 1, 10, term=2))
            await st.sync()
        segments_before = st.statistics().segments
        with pytest.raises(ValueError, match="no snapshot covers index 150"):
            await st.compact(150, 2)
        await st.save_snapshot(SnapshotMeta(160, 2), _chunks(b"state at 160"))
        await st.compact(150, 2)
        assert st.log_start_index == 150 and st.log_start_term == 2
        assert st.statistics().segments < segments_before
        assert st.entries(151, 153) == entries(151, 2, term=2)
        assert st.entries(100, 153) == entries(151, 2, term=2)  # none from the compacted prefix
        with pytest.raises(ValueError, match="compacted"):
            await st.save(truncate_from=150)
        with pytest.raises(ValueError, match="term"):
            await st.compact(160, 7)
        with pytest.raises(ValueError, match="no snapshot covers index 161"):
            await st.compact(161, 2)
        await st.compact(100, 2)  # already compacted further: nothing to do
        state = await st.load()
        assert (state.log_start_index, state.log_start_term) == (150, 2)
        assert list(state.entries) == entries(151, 50, term=2)
    lowest = min(int(p.name.split("-")[2][:-4]) for p in path.glob("wal-*"))
    assert lowest > 100  # segments wholly below the compaction point are gone
    async with open_file_storage(path, segment_bytes=512) as st:
        assert await st.load() == state
        await st.save(entries=entries(201, 1, term=3))
        await st.sync()


async def test_compact_past_the_end_discards_the_whole_log() -> None:
    fs = SimulatedFileSystem()
    async with open_file_storage("/d", fs=fs, segment_bytes=256) as st:
        await st.save(hard_state=HardState(1, None), entries=entries(1, 30))
        await st.sync()
        await st.save_snapshot(SnapshotMeta(1000, 9), _chunks(b"from the leader"))
        await st.compact(1000, 9)  # a snapshot from the leader, beyond our log
        assert st.last_index() == 1000 and st.entries(1001, 2000) == []
        assert st.statistics().segments == 1
        with pytest.raises(ValueError, match="contiguous"):
            await st.save(entries=entries(31, 1))
        await st.save(entries=entries(1001, 3, term=9))
        await st.sync()
    async with open_file_storage("/d", fs=fs, segment_bytes=256) as st:
        state = await st.load()
        assert (state.log_start_index, state.log_start_term) == (1000, 9)
        assert list(state.entries) == entries(1001, 3, term=9)


async def test_second_opener_is_locked_out_until_the_first_closes(tmp_path: Path) -> None:
    path = tmp_path / "data"
    async with open_file_storage(path):
        with pytest.raises(StorageLockedError, match=str(path)) as info:
            async with open_file_storage(path):
                pass  # pragma: no cover
        assert isinstance(info.value, RaftError) and info.value.path == str(path)
    async with open_file_storage(path) as st:
        assert st.path == str(path)


async def test_lock_on_simulated_fs() -> None:
    fs = SimulatedFileSystem()
    async with open_file_storage("/d", fs=fs):
        with pytest.raises(StorageLockedError):
            async with open_file_storage("/d", fs=fs):
                pass  # pragma: no cover
    async with open_file_storage("/d", fs=fs):
        pass


async def test_misuse_changes_nothing() -> None:
    fs = SimulatedFileSystem()
    async with open_file_storage("/d", fs=fs, max_record_bytes=1000) as st:
        await st.save(entries=entries(1, 3))
        before = (await st.load(), fs.points)
        with pytest.raises(ValueError, match="entry 6 does not follow the last saved entry 3"):
            await st.save(hard_state=HardState(9, "x"), entries=[Entry(1, 6)])
        with pytest.raises(ValueError, match="truncate_from must be >= 1"):
            await st.save(truncate_from=0)
        with pytest.raises(TypeError, match="not CBOR-encodable"):
            await st.save(hard_state=HardState(9, "x"), entries=[Entry(1, 4, object())])
        with pytest.raises(ValueError, match="max_record_bytes=1000"):
            await st.save(entries=[Entry(1, 4, "y" * 2000)])
        with pytest.raises(ValueError, match="bad index/term"):
            await st.compact(-1, 0)
        assert (await st.load(), fs.points) == before
    with pytest.raises(trio.ClosedResourceError):
        await st.save(entries=entries(4, 1))
    with pytest.raises(ValueError, match="segment_bytes"):
        async with open_file_storage("/e", fs=fs, segment_bytes=10):
            pass  # pragma: no cover


async def test_commands_come_back_as_cbor_decodes_them() -> None:
    fs = SimulatedFileSystem()
    async with open_file_storage("/d", fs=fs) as st:
        await st.save(entries=[Entry(1, 1, (1, 2))])
        await st.sync()
        assert st.entries(1, 2)[0].command == (1, 2)  # the object that was saved
    async with open_file_storage("/d", fs=fs) as st:
        assert st.entries(1, 2)[0].command == [1, 2]  # CBOR has arrays, not tuples


async def test_cancelled_save_writes_nothing() -> None:
    fs = SimulatedFileSystem()
    async with open_file_storage("/d", fs=fs) as st:
        points = fs.points
        with trio.CancelScope() as scope:
            scope.cancel()
            await st.save(entries=entries(1, 1))
        assert st.last_index() == 0 and fs.points == points


class _FailingFs:
    """Delegates to a SimulatedFileSystem; every file fsync fails once ``broken`` is set."""

    def __init__(self) -> None:
        self.inner = SimulatedFileSystem()
        self.broken = False

    def makedirs(self, path: str) -> bool:
        return self.inner.makedirs(path)

    def listdir(self, path: str) -> list[str]:
        return self.inner.listdir(path)

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def open_read(self, path: str) -> ReadFile:
        return self.inner.open_read(path)

    def open_append(self, path: str, *, create: bool) -> AppendFile:
        file = self.inner.open_append(path, create=create)
        outer = self

        class Wrapped:
            def write(self, data: bytes) -> None:
                file.write(data)

            def fsync(self) -> None:
                if outer.broken:
                    raise OSError(errno.EIO, "Input/output error")
                file.fsync()

            def truncate(self, size: int) -> None:
                file.truncate(size)

            def close(self) -> None:
                file.close()

        return Wrapped()

    def rename(self, src: str, dst: str) -> None:
        self.inner.rename(src, dst)

    def unlink(self, path: str) -> None:
        self.inner.unlink(path)

    def fsync_dir(self, path: str) -> None:
        self.inner.fsync_dir(path)

    def lock(self, path: str) -> FileLock:
        return self.inner.lock(path)

    def free_bytes(self, path: str) -> int | None:
        return self.inner.free_bytes(path)


async def test_disk_failure_breaks_the_storage_until_reopened() -> None:
    fs = _FailingFs()
    async with open_file_storage("/d", fs=fs) as st:
        await st.save(entries=entries(1, 2))
        await st.sync()
        fs.broken = True
        await st.save(entries=entries(3, 1))
        with pytest.raises(StorageError, match="Input/output error") as info:
            await st.sync()
        assert isinstance(info.value.__cause__, OSError)
        fs.broken = False  # even if the disk recovers: never retry an fsync
        with pytest.raises(StorageError, match="failed earlier"):
            await st.sync()
        with pytest.raises(StorageError, match="failed earlier"):
            await st.save(entries=entries(4, 1))
    async with open_file_storage("/d", fs=fs) as st:
        assert st.last_index() >= 2


async def test_file_storage_is_a_storage() -> None:
    async with open_file_storage("/d", fs=SimulatedFileSystem()) as st:
        storage: Storage = st
        assert isinstance(storage, FileStorage)


async def test_snapshot_chunks_are_split_verified_and_survive_replacement() -> None:
    fs = SimulatedFileSystem()
    async with open_file_storage("/d", fs=fs, max_record_bytes=100) as st:
        data = bytes(range(256)) * 10
        await st.save_snapshot(SnapshotMeta(7, 1), _chunks(data[:1000], data[1000:]))
        loaded = await st.load_snapshot()
        assert loaded is not None
        meta, chunks = loaded
        first = await chunks.__anext__()
        assert len(first) == 99  # frames hold at most max_record_bytes, one byte is the tag
        # A new snapshot replaces the file; the iterator keeps reading the one it opened.
        await st.save_snapshot(SnapshotMeta(9, 2), _chunks(b"new"))
        rest = b"".join([c async for c in chunks])
        assert (meta, first + rest) == (SnapshotMeta(7, 1), data)
        assert await _read(await st.load_snapshot()) == (SnapshotMeta(9, 2), b"new")
    assert "/d/snapshot.tmp" not in fs.files()


async def test_failed_or_cancelled_snapshot_keeps_the_previous_one() -> None:
    fs = SimulatedFileSystem()

    async def failing() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("the leader went away")

    async with open_file_storage("/d", fs=fs) as st:
        await st.save_snapshot(SnapshotMeta(3, 1), _chunks(b"old"))
        with pytest.raises(RuntimeError, match="went away"):
            await st.save_snapshot(SnapshotMeta(5, 1), failing())
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def cancelled_save() -> None:
                with scope:
                    await st.save_snapshot(SnapshotMeta(6, 1), _slow())

            nursery.start_soon(cancelled_save)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
        assert await _read(await st.load_snapshot()) == (SnapshotMeta(3, 1), b"old")
        assert "/d/snapshot.tmp" not in fs.files()
        await st.save(entries=entries(1, 1))  # the storage is still usable
        await st.sync()


async def _slow() -> AsyncIterator[bytes]:
    yield b"start"
    await trio.sleep_forever()


async def test_saves_proceed_while_a_snapshot_streams_in() -> None:
    fs = SimulatedFileSystem()
    gate = trio.Event()

    async def gated() -> AsyncIterator[bytes]:
        yield b"a"
        await gate.wait()
        yield b"b"

    async with open_file_storage("/d", fs=fs) as st, trio.open_nursery() as nursery:
        nursery.start_soon(st.save_snapshot, SnapshotMeta(1, 1), gated())
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(5):
            await st.save(entries=entries(1, 3))
            await st.sync()
        gate.set()
    async with open_file_storage("/d", fs=fs) as st:
        assert st.last_index() == 3
        assert await _read(await st.load_snapshot()) == (SnapshotMeta(1, 1), b"ab")


async def test_damaged_snapshot_is_corruption() -> None:
    fs = SimulatedFileSystem()
    async with open_file_storage("/d", fs=fs) as st:
        await st.save_snapshot(SnapshotMeta(3, 1), _chunks(b"x" * 50, b"y" * 50))
    data = fs.files()["/d/snapshot"]
    at = len(data) - 40  # in the second chunk: the header is intact, so the directory opens
    for damaged in [data[:-1], data[:at], data[:at] + b"z" + data[at + 1 :], data + b"\0"]:
        fs.put_file("/d/snapshot", damaged)
        async with open_file_storage("/d", fs=fs) as st:
            with pytest.raises(StorageCorruptError) as info:
                await st.load_snapshot()
            assert info.value.path == "/d/snapshot"
