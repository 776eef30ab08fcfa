"""Durable state that lies is refused: another node's or cluster's directory, a missing WAL
segment, a state file whose values no storage writes, a log start no snapshot covers, and a
second process after the ``LOCK`` file was deleted.

Every case here is a directory a crash cannot produce; each must raise a typed
:class:`StorageError` that names the file (or directory) and says what to do, never open with
a different state than the one that was written.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import cbor2
import pytest
import trio

from trio_raft import (
    Entry,
    HardState,
    StorageCorruptError,
    StorageError,
    StorageIdentityError,
    StorageLockedError,
    StoredState,
)
from trio_raft._types import MAX_TERM, SnapshotMeta
from trio_raft._wal._file_storage import open_file_storage
from trio_raft._wal._segments import frame, parse_segment_name
from trio_raft._wal._simfs import SimulatedFileSystem


def entries(first: int, count: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, ["cmd", i, "x" * 40]) for i in range(first, first + count)]


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


# -- identity ---------------------------------------------------------------------------------


async def _make(path: Path, cluster_id: str, node_id: str, vote: str) -> StoredState:
    async with open_file_storage(path, cluster_id=cluster_id, node_id=node_id) as st:
        await st.save(hard_state=HardState(3, vote), entries=entries(1, 5))
        await st.sync()
        return await st.load()


async def test_swapped_node_directories_are_refused(tmp_path: Path) -> None:
    n1, n2 = tmp_path / "n1", tmp_path / "n2"
    await _make(n1, "prod", "n1", "n1")
    await _make(n2, "prod", "n2", "n2")
    before = {p.name: p.read_bytes() for p in n1.iterdir()}
    with pytest.raises(StorageIdentityError) as info:
        async with open_file_storage(n1, cluster_id="prod", node_id="n2"):
            pass  # pragma: no cover
    err = info.value
    assert isinstance(err, StorageError) and err.path == str(n1)
    assert (err.found_node_id, err.expected_node_id) == ("n1", "n2")
    message = str(err)
    assert "node 'n1' of cluster 'prod'" in message and "opened as node 'n2'" in message
    assert "--id" in message and "data_dir" in message  # what to check
    assert {p.name: p.read_bytes() for p in n1.iterdir()} == before  # nothing changed
    # Each still opens as itself.
    async with open_file_storage(n2, cluster_id="prod", node_id="n2") as st:
        assert st.hard_state == HardState(3, "n2")


async def test_another_clusters_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "n1"
    await _make(path, "staging", "n1", "n1")
    with pytest.raises(StorageIdentityError, match="another cluster") as info:
        async with open_file_storage(path, cluster_id="prod", node_id="n1"):
            pass  # pragma: no cover
    assert (info.value.found_cluster_id, info.value.expected_cluster_id) == ("staging", "prod")
    assert "cluster file" in str(info.value)


async def test_directory_without_identity_adopts_the_first_one_given(tmp_path: Path) -> None:
    path = tmp_path / "old"
    async with open_file_storage(path) as st:  # as an older release (or the library) wrote it
        await st.save(hard_state=HardState(1, None), entries=entries(1, 2))
        await st.sync()
    assert not (path / "IDENTITY").exists()
    async with open_file_storage(path, cluster_id="c", node_id="n1") as st:
        assert st.last_index() == 2
    assert (path / "IDENTITY").exists()
    async with open_file_storage(path):  # no identity given: nothing checked
        pass
    with pytest.raises(StorageIdentityError):
        async with open_file_storage(path, cluster_id="c", node_id="n2"):
            pass  # pragma: no cover


async def test_identity_arguments_come_in_pairs() -> None:
    fs = SimulatedFileSystem()
    for kwargs in [{"cluster_id": "c"}, {"node_id": "n1"}, {"cluster_id": "", "node_id": "n"}]:
        with pytest.raises(ValueError, match="both cluster_id and node_id"):
            async with open_file_storage("/d", fs=fs, **kwargs):  # type: ignore[arg-type]
                pass  # pragma: no cover
    assert not fs.exists("/d")  # refused before touching the disk


async def test_damaged_identity_file_is_corruption() -> None:
    fs = SimulatedFileSystem()
    async with open_file_storage("/d", fs=fs, cluster_id="c", node_id="n1"):
        pass
    data = fs.files()["/d/IDENTITY"]
    fs.put_file("/d/IDENTITY", data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(StorageCorruptError, match="identity file checksum") as info:
        async with open_file_storage("/d", fs=fs, cluster_id="c", node_id="n1"):
            pass  # pragma: no cover
    assert info.value.path == "/d/IDENTITY"
    fs.put_file("/d/IDENTITY", frame(cbor2.dumps({"v": 1, "cluster_id": "c", "node_id": 7})))
    with pytest.raises(StorageCorruptError, match="node_id 7"):
        async with open_file_storage("/d", fs=fs):
            pass  # pragma: no cover


# -- a missing WAL segment ----------------------------------------------------------------------


async def _segmented(fs: SimulatedFileSystem) -> StoredState:
    async with open_file_storage("/d", fs=fs, segment_bytes=400) as st:
        await st.save(hard_state=HardState(2, "n1"))
        for _ in range(12):
            await st.save(entries=entries(st.last_index() + 1, 3))
            await st.sync()
        assert st.statistics().segments >= 4
        return await st.load()


def _segments(fs: SimulatedFileSystem) -> list[str]:
    found = [p for p in fs.walk_files() if parse_segment_name(p.rsplit("/", 1)[1])]
    return sorted(found, key=lambda p: parse_segment_name(p.rsplit("/", 1)[1]) or (0, 0))


async def test_deleting_the_newest_segment_is_detected() -> None:
    fs = SimulatedFileSystem()
    await _segmented(fs)
    newest = _segments(fs)[-1]
    fs.unlink(newest)
    with pytest.raises(StorageCorruptError, match="newest WAL segment is missing") as info:
        async with open_file_storage("/d", fs=fs, segment_bytes=400):
            pass  # pragma: no cover
    seq = parse_segment_name(newest.rsplit("/", 1)[1])
    assert seq is not None and f"wal-{seq[0]:010d}-" in str(info.value)
    assert "/d/state" in str(info.value) and "backup" in str(info.value)


async def test_deleting_the_newest_segments_after_a_reopen_is_detected() -> None:
    """The check survives a reopen and rotations made after it."""
    fs = SimulatedFileSystem()
    await _segmented(fs)
    async with open_file_storage("/d", fs=fs, segment_bytes=400) as st:
        for _ in range(6):
            await st.save(entries=entries(st.last_index() + 1, 3))
            await st.sync()
    for path in _segments(fs)[-2:]:
        fs.unlink(path)
    with pytest.raises(StorageCorruptError, match="newest WAL segment is missing"):
        async with open_file_storage("/d", fs=fs, segment_bytes=400):
            pass  # pragma: no cover


async def test_deleting_any_single_segment_is_detected() -> None:
    """The class: no segment of a live log can go missing unnoticed."""
    reference = SimulatedFileSystem()
    await _segmented(reference)
    for victim in _segments(reference):
        fs = SimulatedFileSystem()
        await _segmented(fs)
        fs.unlink(victim)
        with pytest.raises(StorageCorruptError, match="missing"):
            async with open_file_storage("/d", fs=fs, segment_bytes=400):
                pass  # pragma: no cover


async def test_a_version_1_state_file_is_read_and_upgraded() -> None:
    fs = SimulatedFileSystem()
    truth = await _segmented(fs)
    old = {"v": 1, "term": 2, "vote": "n1", "start_index": 0, "start_term": 0}
    fs.put_file("/d/state", frame(cbor2.dumps(old)))
    async with open_file_storage("/d", fs=fs, segment_bytes=400) as st:
        assert await st.load() == truth
    fs.unlink(_segments(fs)[-1])  # the upgraded state file now records the newest segment
    with pytest.raises(StorageCorruptError, match="newest WAL segment is missing"):
        async with open_file_storage("/d", fs=fs, segment_bytes=400):
            pass  # pragma: no cover


# -- the state file and the snapshot -------------------------------------------------------------


def _state(**fields: object) -> bytes:
    value = {
        "v": 2, "term": 2, "vote": "n1", "start_index": 0, "start_term": 0, "newest_segment": 1,
    }  # fmt: skip
    value.update(fields)
    return frame(cbor2.dumps(value))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"term": MAX_TERM + 1}, "above the largest term"),
        ({"term": 2**70}, "above the largest term"),
        ({"start_term": 2**70, "start_index": 3}, "above the largest term"),
        ({"term": -1}, "non-negative integers"),
        ({"term": True}, "non-negative integers"),
        ({"vote": 7}, "not a node id"),
        ({"vote": b"n1"}, "not a node id"),
        ({"vote": ""}, "not a node id"),
        ({"start_index": 5}, "one is 0 and the other is not"),
        ({"v": 3}, "format version 3"),
        ({"extra": 1}, "fields"),
    ],
)
async def test_state_file_with_impossible_values_is_refused(
    fields: dict[str, object], match: str
) -> None:
    fs = SimulatedFileSystem()
    async with open_file_storage("/d", fs=fs):
        pass
    fs.put_file("/d/state", _state(**fields))
    with pytest.raises(StorageCorruptError, match=match) as info:
        async with open_file_storage("/d", fs=fs):
            pass  # pragma: no cover
    assert info.value.path == "/d/state"


async def test_log_start_beyond_the_snapshot_is_refused_naming_the_state_file() -> None:
    fs = SimulatedFileSystem()
    async with open_file_storage("/d", fs=fs) as st:
        await st.save(entries=entries(1, 20))
        await st.sync()
        await st.save_snapshot(SnapshotMeta(10, 1), _chunks(b"at 10"))
        await st.compact(8, 1)
    fs.put_file("/d/state", _state(start_index=15, start_term=1))
    with pytest.raises(StorageCorruptError, match="beyond the snapshot at index 10") as info:
        async with open_file_storage("/d", fs=fs):
            pass  # pragma: no cover
    assert info.value.path == "/d/state"
    fs.put_file("/d/state", _state(start_index=10, start_term=2))  # the right index, wrong term
    with pytest.raises(StorageCorruptError, match="beyond the snapshot"):
        async with open_file_storage("/d", fs=fs):
            pass  # pragma: no cover


async def test_missing_snapshot_file_is_corruption_naming_the_file() -> None:
    fs = SimulatedFileSystem()
    async with open_file_storage("/d", fs=fs) as st:
        await st.save(entries=entries(1, 20))
        await st.sync()
        await st.save_snapshot(SnapshotMeta(10, 1), _chunks(b"at 10"))
        await st.compact(10, 1)
    fs.unlink("/d/snapshot")
    with pytest.raises(StorageCorruptError, match="snapshot file is missing") as info:
        async with open_file_storage("/d", fs=fs):
            pass  # pragma: no cover
    assert info.value.path == "/d/snapshot"


async def test_terms_above_max_term_are_never_written() -> None:
    async with open_file_storage("/d", fs=SimulatedFileSystem()) as st:
        with pytest.raises(ValueError, match="above the largest term"):
            await st.save(hard_state=HardState(MAX_TERM + 1, None))
        with pytest.raises(ValueError, match=r"2\*\*62 \(MAX_TERM\)"):
            Entry(MAX_TERM + 1, 1)  # such an entry cannot even be built (nor decoded)
        await st.save(hard_state=HardState(MAX_TERM, None), entries=[Entry(MAX_TERM, 1)])
        assert st.hard_state.term == MAX_TERM


# -- the lock ---------------------------------------------------------------------------------

_HOLDER = textwrap.dedent(
    """
    import sys, trio
    from trio_raft import open_file_storage

    async def main():
        async with open_file_storage(sys.argv[1]):
            print("open", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)

    trio.run(main)
    """
)


async def _open_and_close(path: Path) -> None:
    async with open_file_storage(path):
        pass


@pytest.mark.process
@pytest.mark.skipif(sys.platform == "win32", reason="flock on directories is POSIX")
def test_deleting_the_lock_file_does_not_let_another_process_in(tmp_path: Path) -> None:
    path = tmp_path / "data"
    trio.run(_open_and_close, path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-c", _HOLDER, str(path)]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
    ) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        try:
            assert holder.stdout.readline() == "open\n"
            (path / "LOCK").unlink()
            with pytest.raises(StorageLockedError):  # another opener in this process
                trio.run(_open_and_close, path)
            other = subprocess.run(  # and in a third process
                command, input="", capture_output=True, env=env, text=True, check=False
            )
            assert other.returncode != 0 and "StorageLockedError" in other.stderr, other.stderr
        finally:
            holder.stdin.close()
    assert holder.returncode == 0
    trio.run(_open_and_close, path)  # free again once the holder exited


# -- disk full ----------------------------------------------------------------------------------


async def test_appends_below_the_reserve_are_refused_and_the_storage_stays_usable() -> None:
    from trio_raft import StorageFullError

    fs = SimulatedFileSystem(capacity=20_000)
    async with open_file_storage("/d", fs=fs, reserve_bytes=5_000) as st:
        while True:
            try:
                await st.save(entries=entries(st.last_index() + 1, 10))
            except StorageFullError as exc:
                assert exc.free_bytes - exc.needed_bytes < exc.reserve_bytes == 5_000
                break
            await st.sync()
        last = st.last_index()
        await st.save(hard_state=HardState(4, "n1"))  # votes still work
        await st.save_snapshot(SnapshotMeta(last, 1), _chunks(b"snap"))  # and compaction
        await st.compact(last, 1)
        await st.save(entries=entries(last + 1, 10))  # space freed: appends work again
        await st.sync()
    async with open_file_storage("/d", fs=fs, reserve_bytes=5_000) as st:
        assert st.last_index() == last + 10 and st.hard_state == HardState(4, "n1")


async def test_space_low_and_appends_that_may_use_the_reserve() -> None:
    """``space_low`` turns true below the reserve (the node's alarm); appends marked
    ``use_reserve`` still fit down to half of it, and are refused below that."""
    from trio_raft import StorageFullError

    fs = SimulatedFileSystem(capacity=40_000)
    async with open_file_storage("/d", fs=fs, reserve_bytes=8_000) as st:
        assert not await st.space_low()
        while True:
            try:
                await st.save(entries=entries(st.last_index() + 1, 5))
            except StorageFullError:
                break
            await st.sync()
        assert fs.free_bytes("/d") is not None
        refused_at = st.last_index()
        # Plain appends are refused before the reserve; space_low lags until it is crossed.
        reserved = 0
        while True:
            try:
                await st.save(entries=entries(st.last_index() + 1, 1), use_reserve=True)
            except StorageFullError as exc:
                free = fs.free_bytes("/d")
                assert free is not None and free - exc.needed_bytes < 8_000 // 2
                break
            await st.sync()
            reserved += 1
        assert reserved > 0, "use_reserve let nothing into the reserve"
        assert await st.space_low()
        with pytest.raises(StorageFullError):
            await st.save(entries=entries(st.last_index() + 1, 1))
        # Compaction frees the space; the alarm condition clears.
        last = st.last_index()
        await st.save_snapshot(SnapshotMeta(last, 1), _chunks(b"snap"))
        await st.compact(last, 1)
        assert not await st.space_low()
        assert last > refused_at


@pytest.mark.parametrize("free_space_known", [True, False], ids=["reserve", "enospc"])
async def test_a_snapshot_that_fills_the_disk_is_refused_and_the_storage_stays_usable(
    free_space_known: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot that would eat into the last quarter of the reserve is refused before it is
    written; one that hits ENOSPC anyway (free space unknown) is refused the same way. Either
    is a ``StorageFullError`` with ``operation == "snapshot"``: the previous snapshot stays,
    and unlike any other write error the storage is not poisoned."""
    from trio_raft import StorageFullError

    fs = SimulatedFileSystem(capacity=60_000)
    if not free_space_known:  # as where statvfs is missing: only the write's ENOSPC tells
        from trio_raft import FileStorage

        monkeypatch.setattr(FileStorage, "_snapshot_room", lambda self, writer, size: None)
    async with open_file_storage("/d", fs=fs, reserve_bytes=2_000) as st:
        await st.save(entries=entries(1, 10))
        await st.sync()
        await st.save_snapshot(SnapshotMeta(5, 1), _chunks(b"small"))
        with pytest.raises(StorageFullError, match="writing a snapshot") as info:
            await st.save_snapshot(SnapshotMeta(10, 1), _chunks(b"x" * 100_000))
        assert info.value.operation == "snapshot"
        loaded = await st.load_snapshot()
        assert loaded is not None and loaded[0] == SnapshotMeta(5, 1)
        await st.save(entries=entries(11, 2))  # still usable
        await st.sync()
        await st.compact(5, 1)
    async with open_file_storage("/d", fs=fs) as st:
        assert st.last_index() == 12 and st.log_start_index == 5
