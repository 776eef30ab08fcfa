"""Damaged data directories: recover a prefix at the tail, or refuse with StorageCorruptError.

A known directory (several segments, a truncation that started its own segment, a compacted
prefix, configuration entries among the commands) is built once on a
:class:`SimulatedFileSystem`. Hypothesis then truncates files and
flips bits in copies of it. Opening must either return exactly the true hard state and a
prefix of the true log, losing entries only from a damaged last segment, or raise
:class:`StorageCorruptError`; never a wrong log and never another exception. Cutting the last
segment short (what a crash does) must always recover. Damage to an older segment may go
unnoticed only as the one cut that loses nothing: at a frame boundary in the tail a later
truncation dropped. CI runs the same Hypothesis examples every time; ``nox -s hypothesis``
runs random ones (``tests/conftest.py``), and every cut of every older segment is checked
deterministically.
"""

from __future__ import annotations

import functools
import random
import struct
from collections.abc import AsyncIterator
from typing import TypedDict

import attrs
import cbor2
import pytest
import trio
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from trio_raft import Entry, EntryKind, HardState, Membership, StoredState
from trio_raft._types import SnapshotMeta
from trio_raft._wal._errors import StorageCorruptError, StorageIdentityError
from trio_raft._wal._file_storage import open_file_storage
from trio_raft._wal._segments import FRAME, Append, decode_record
from trio_raft._wal._simfs import SimulatedFileSystem

from ..conftest import hypothesis_settings

DIR = "/node"
SEGMENT_BYTES = 400
STATE = f"{DIR}/state"
IDENTITY = f"{DIR}/IDENTITY"


class _Identity(TypedDict):
    """The identity keywords of ``open_file_storage``."""

    cluster_id: str
    node_id: str


ID: _Identity = {"cluster_id": "c", "node_id": "n1"}


@attrs.frozen
class Truth:
    files: dict[str, bytes]
    state: StoredState
    segments: list[str]  # paths, oldest first
    last_segment_first_live: int  # index of the first entry stored in the last segment
    last_segment_header_bytes: int  # a crash never cuts into these (born complete)
    superseded_from: dict[str, int]  # per segment: offset of the first record a truncation
    # dropped (its size if none). A cut at a frame boundary from there on loses nothing live.


async def _build() -> Truth:
    fs = SimulatedFileSystem()
    async with open_file_storage(DIR, segment_bytes=SEGMENT_BYTES, fs=fs, **ID) as s:
        await s.save(hard_state=HardState(4, "n2"))
        for batch in range(12):
            first = s.last_index() + 1
            await s.save(entries=[_entry(i, batch) for i in range(first, first + 5)])
            await s.sync()
        # A truncation reaching into an older segment starts a new one.
        await s.save(truncate_from=52, entries=[Entry(2, i, {"i": i}) for i in range(52, 62)])
        await s.sync()
        await s.save_snapshot(SnapshotMeta(5, 1), _one(b"state at 5"))
        await s.compact(5, 1)
        state = await s.load()
        last = s._wal.segments[-1]
        first_live = last.live_lo if last.live else s.last_index() + 1
        segments = [seg.path for seg in s._wal.segments]
        header_bytes = last.header_bytes
        files = fs.files()
        superseded = {
            seg.path: _first_append_from(files[seg.path], seg.live_hi) for seg in s._wal.segments
        }
    assert len(segments) >= 4
    assert any(superseded[p] < len(files[p]) for p in segments[:-1])  # the shape of issue 8
    return Truth(files, state, segments, first_live, header_bytes, superseded)


def _first_append_from(data: bytes, index: int) -> int:
    """Offset of the first append record for an entry at ``index`` or later (else the size)."""
    for offset, length in _frames(data):
        record = decode_record(data[offset + FRAME.size : offset + FRAME.size + length])
        if isinstance(record, Append) and record.entry.index >= index:
            return offset
    return len(data)


def _entry(index: int, batch: int) -> Entry:
    if index % 7 == 0:  # configuration entries are damaged like any other record
        voters = {f"n{k}" for k in range(1, 2 + index % 4)}
        return Entry(1, index, Membership(voters, learners={"n9"}), EntryKind.CONFIG)
    return Entry(1, index, [index, "c" * (batch + index % 5)])


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


@functools.cache
def truth() -> Truth:
    return trio.run(_build)


def filesystem(files: dict[str, bytes]) -> SimulatedFileSystem:
    fs = SimulatedFileSystem()
    fs.makedirs(DIR)
    for path, data in files.items():
        fs.put_file(path, data)
    return fs


async def _open_and_load(files: dict[str, bytes]) -> StoredState:
    async with open_file_storage(DIR, segment_bytes=SEGMENT_BYTES, fs=filesystem(files), **ID) as s:
        return await s.load()


def open_and_load(files: dict[str, bytes]) -> StoredState:
    return trio.run(_open_and_load, files)


@st.composite
def damages(draw: st.DrawFn) -> tuple[dict[str, bytes], dict[str, set[str]]]:
    t = truth()
    files = dict(t.files)
    kinds: dict[str, set[str]] = {}
    targets = [*t.segments, STATE, IDENTITY]
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(targets))
        data = files[path]
        if not data:
            continue
        if path not in (STATE, IDENTITY) and draw(st.booleans()):
            files[path] = data[: draw(st.integers(0, len(data) - 1))]
            kinds.setdefault(path, set()).add("truncate")
        else:
            at, bit = draw(st.integers(0, len(data) - 1)), draw(st.integers(0, 7))
            files[path] = data[:at] + bytes([data[at] ^ (1 << bit)]) + data[at + 1 :]
            kinds.setdefault(path, set()).add("flip")
    damaged = {p: k for p, k in kinds.items() if files[p] != t.files[p]}
    return files, damaged


@hypothesis_settings(500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damages())
def test_damage_gives_a_true_prefix_or_an_error(
    case: tuple[dict[str, bytes], dict[str, set[str]]],
) -> None:
    files, damaged = case
    t = truth()
    last = t.segments[-1]
    torn_only = (
        set(damaged) <= {last}
        and damaged.get(last, set()) <= {"truncate"}
        and len(files[last]) >= t.last_segment_header_bytes
    )
    try:
        state = open_and_load(files)
    except (StorageCorruptError, StorageIdentityError) as exc:
        assert not torn_only, f"a crash-like cut of the last segment was refused: {exc}"
        assert isinstance(exc, StorageCorruptError), f"bit damage read as an identity: {exc}"
        assert exc.path.startswith(DIR) and exc.reason in str(exc)
        return
    assert STATE not in damaged, "a damaged state file went unnoticed"
    assert IDENTITY not in damaged, "a damaged identity file went unnoticed"
    assert state.hard_state == t.state.hard_state
    assert (state.log_start_index, state.log_start_term) == (5, 1)
    k = len(state.entries)
    assert state.entries == t.state.entries[:k], "recovered a log that is not a prefix"
    for path in set(damaged) - {last}:
        # Older segments are never rewritten, so damage to one is never a crash. It can only go
        # unnoticed as a cut at a frame boundary that removes nothing but records a later
        # truncation dropped (and then it loses nothing).
        cut_to = len(files[path])
        assert files[path] == t.files[path][:cut_to], f"damage to {path} went unnoticed"
        assert cut_to >= t.superseded_from[path], (
            f"a cut into live entries of {path} went unnoticed"
        )
    if k < len(t.state.entries):
        assert last in damaged, f"entries lost, but the last segment is intact: {damaged}"
        lost_from = t.state.log_start_index + k + 1
        assert lost_from >= t.last_segment_first_live, "lost entries from an older segment"


def test_undamaged_directory_loads_exactly() -> None:
    assert open_and_load(truth().files) == truth().state


def _frames(data: bytes) -> list[tuple[int, int]]:
    """``(offset, payload length)`` of each frame."""
    out, offset = [], 0
    while offset < len(data):
        length, _ = FRAME.unpack_from(data, offset)
        out.append((offset, length))
        offset += FRAME.size + length
    return out


def test_bit_flip_in_a_middle_segment_names_file_and_offset() -> None:
    t = truth()
    middle = t.segments[len(t.segments) // 2]
    data = t.files[middle]
    offset, length = _frames(data)[1]
    at = offset + FRAME.size + length // 2
    files = {**t.files, middle: data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :]}
    with pytest.raises(StorageCorruptError) as info:
        open_and_load(files)
    assert (info.value.path, info.value.offset) == (middle, offset)
    message = str(info.value)
    assert f"{middle} at byte offset {offset}" in message and "checksum" in message
    assert "backup" in message and "vote" in message  # says what to do, and the risk


def test_damaged_state_file_is_corruption() -> None:
    t = truth()
    data = t.files[STATE]
    with pytest.raises(StorageCorruptError, match="state file checksum") as info:
        open_and_load({**t.files, STATE: data[:-1] + bytes([data[-1] ^ 1])})
    assert info.value.path == STATE
    with pytest.raises(StorageCorruptError, match="state file frame"):
        open_and_load({**t.files, STATE: data[:-3]})
    with pytest.raises(StorageCorruptError, match="state file"):
        open_and_load({**t.files, STATE: b"\x00" * 3})


def test_missing_state_file_with_a_log_is_corruption() -> None:
    files = {p: d for p, d in truth().files.items() if p != STATE}
    with pytest.raises(StorageCorruptError, match="term and vote") as info:
        open_and_load(files)
    assert info.value.path == STATE


def test_missing_middle_segment_is_a_gap() -> None:
    t = truth()
    files = {p: d for p, d in t.files.items() if p != t.segments[1]}
    with pytest.raises(StorageCorruptError, match="missing") as info:
        open_and_load(files)
    assert info.value.path == t.segments[2]


def test_huge_length_field_is_corruption_not_an_allocation() -> None:
    t = truth()
    middle = t.segments[1]
    data = bytearray(t.files[middle])
    offset, _ = _frames(bytes(data))[1]
    struct.pack_into("<I", data, offset, 0xFFFFFFF0)
    with pytest.raises(StorageCorruptError, match=r"outside 1\.\.") as info:
        open_and_load({**t.files, middle: bytes(data)})
    assert info.value.offset == offset


def test_damaged_length_running_past_the_end_is_not_mistaken_for_a_torn_tail() -> None:
    t = truth()
    last = t.segments[-1]
    data = bytearray(t.files[last])
    frames = _frames(bytes(data))
    assert len(frames) >= 3
    offset, _ = frames[-2]  # the last frame still follows it intact
    struct.pack_into("<I", data, offset, len(data))  # now runs past the end of the file
    with pytest.raises(StorageCorruptError, match="damaged length") as info:
        open_and_load({**t.files, last: bytes(data)})
    assert (info.value.path, info.value.offset) == (last, offset)


@pytest.mark.parametrize("cut", [1, 5, 9, -1])
def test_torn_last_record_is_cut_off(cut: int) -> None:
    t = truth()
    last = t.segments[-1]
    offset, _ = _frames(t.files[last])[-1]
    if cut == -1:
        cut = len(t.files[last]) - offset - 1  # all of the last frame but its first byte
    files = {**t.files, last: t.files[last][:-cut]}
    state = open_and_load(files)
    assert state.entries == t.state.entries[:-1]

    async def append_after_repair() -> StoredState:
        fs = filesystem(files)
        async with open_file_storage(DIR, segment_bytes=SEGMENT_BYTES, fs=fs) as s:
            await s.save(entries=[Entry(3, s.last_index() + 1, "new")])
            await s.sync()
        async with open_file_storage(DIR, segment_bytes=SEGMENT_BYTES, fs=fs) as s:
            return await s.load()

    again = trio.run(append_after_repair)
    assert again.entries[:-1] == t.state.entries[:-1] and again.entries[-1].command == "new"


def test_zero_filled_tail_is_cut_off() -> None:
    t = truth()
    last = t.segments[-1]
    assert open_and_load({**t.files, last: t.files[last] + bytes(100)}) == t.state


def test_bad_checksum_in_final_record_is_a_torn_tail_but_not_in_an_earlier_one() -> None:
    t = truth()
    last = t.segments[-1]
    data = t.files[last]
    flipped = data[:-1] + bytes([data[-1] ^ 4])
    assert open_and_load({**t.files, last: flipped}).entries == t.state.entries[:-1]
    offset, length = _frames(data)[-2]
    at = offset + FRAME.size + length - 1
    with pytest.raises(StorageCorruptError, match="followed by more data"):
        open_and_load({**t.files, last: data[:at] + bytes([data[at] ^ 4]) + data[at + 1 :]})


def _cuts(data: bytes) -> list[int]:
    """Every frame boundary of a segment but its end, and cuts inside each frame's header and
    payload."""
    cuts: set[int] = set()
    for offset, length in _frames(data):
        cuts |= {offset, offset + 3, offset + FRAME.size + length // 2}
    return sorted(cuts)


def _load_or_error(files: dict[str, bytes]) -> StoredState | StorageCorruptError:
    try:
        return open_and_load(files)
    except StorageCorruptError as exc:
        return exc


def test_a_cut_in_an_older_segment_is_refused_unless_it_drops_only_superseded_records() -> None:
    """Every cut of every segment but the last, alone and with the last segment torn the ways a
    crash tears it (every append gone, a frame boundary in the middle, inside the last frame).

    Older segments are never rewritten, so a cut in one is damage: it must be refused, naming
    that segment and where it now ends (a partial frame: where that frame starts). The one cut
    that cannot be seen is one at a frame boundary in a segment's superseded tail (records a
    later truncation dropped): the log must then be exactly what the last segment alone gives.
    """
    t = truth()
    last = t.segments[-1]
    last_data = t.files[last]
    last_frames = _frames(last_data)
    torn_last: list[bytes | None] = [
        None,
        last_data[: t.last_segment_header_bytes],
        last_data[: last_frames[len(last_frames) // 2][0]],
        last_data[: last_frames[-1][0] + 5],
    ]
    failures = []
    for path in t.segments[:-1]:
        data = t.files[path]
        boundaries = [offset for offset, _ in _frames(data)]
        for cut in _cuts(data):
            for torn in torn_last:
                tail = {} if torn is None else {last: torn}
                got = _load_or_error({**t.files, **tail, path: data[:cut]})
                torn_how = "intact" if torn is None else f"cut to {len(torn)}"
                what = f"{path} cut to {cut} bytes, last segment {torn_how}"
                if cut in boundaries and cut >= t.superseded_from[path]:
                    expected = open_and_load({**t.files, **tail})
                    if got != expected:
                        failures.append(f"{what}: {got!r}, expected the last segment's prefix")
                elif not isinstance(got, StorageCorruptError):
                    failures.append(f"{what}: loaded {len(got.entries)} entries")
                elif (got.path, got.offset) != (path, max(b for b in boundaries if b <= cut)):
                    failures.append(f"{what}: named {got.path} at {got.offset}: {got.reason}")
    assert any(t.superseded_from[p] < len(t.files[p]) for p in t.segments[:-1])
    assert not failures, f"{len(failures)} cases:\n" + "\n".join(failures[:20])


def test_cut_in_the_dropped_tail_of_a_segment_before_a_torn_truncation_segment() -> None:
    """The case of issue 8's corruption sweep: the segment before the truncation segment cut
    after entry 54 (52.. were dropped by the truncation), the truncation segment torn after
    its header and truncation record. Nothing live is lost from the older segment, so this
    loads the log up to the truncation point; cut into its live entries, it is refused."""
    t = truth()
    older, last = t.segments[-2:]
    data = t.files[older]
    offsets = {
        cbor2.loads(data[o + FRAME.size : o + FRAME.size + n])[1]: o for o, n in _frames(data)[1:]
    }
    assert t.superseded_from[older] == offsets[52] < offsets[55] < len(data)
    torn = {last: t.files[last][: t.last_segment_header_bytes]}
    state = open_and_load({**t.files, **torn, older: data[: offsets[55]]})
    assert state.entries[-1].index == 51 and state.entries == t.state.entries[: len(state.entries)]
    with pytest.raises(StorageCorruptError, match=r"entries 51\.\.51 are missing") as info:
        open_and_load({**t.files, **torn, older: data[: offsets[51]]})
    assert (info.value.path, info.value.offset) == (older, offsets[51])


async def _truncated_inside_an_older_segment() -> tuple[dict[str, bytes], StoredState]:
    """Segment 1: entries 1..14 in term 1, a truncation at 5, entry 5 in term 2; segment 2
    (a rotation) starts at 6."""
    fs = SimulatedFileSystem()
    async with open_file_storage(DIR, segment_bytes=SEGMENT_BYTES, fs=fs, **ID) as s:
        await s.save(hard_state=HardState(2, None))
        await s.save(entries=[Entry(1, i, "x" * 10) for i in range(1, 15)])
        await s.save(truncate_from=5, entries=[Entry(2, 5, "y" * 10)])
        await s.save(entries=[Entry(2, i, "z" * 10) for i in range(6, 8)])
        await s.sync()
        assert [seg.first_index for seg in s._wal.segments] == [1, 6]
        return fs.files(), await s.load()


def test_cut_removing_a_truncation_inside_an_older_segment_is_refused() -> None:
    """Cut segment 1 after the dropped entry 5 of term 1: its truncation record and the entry 5
    that replaced it are gone, and segment 2 still follows on at 6. Segment 2's header says
    entry 5 had term 2 when it was started, so the dropped entry 5 is refused, not loaded: the
    error names segment 1 at that entry."""
    files, _ = trio.run(_truncated_inside_an_older_segment)
    first = f"{DIR}/wal-0000000001-00000000000000000001.log"
    second = f"{DIR}/wal-0000000002-00000000000000000006.log"
    at = [(o, _index(files, first, o)) for o, _ in _frames(files[first])[1:]]
    old_5, cut = (next(o for o, index in at if index == i) for i in (5, 6))
    with pytest.raises(StorageCorruptError, match="a truncation dropped") as info:
        open_and_load({**files, first: files[first][:cut]})
    assert (info.value.path, info.value.offset) == (first, old_5)
    assert f"segment {second} was started after entry 5 of term 2" in info.value.reason
    assert "entry 5 here has term 1" in info.value.reason


def _index(files: dict[str, bytes], path: str, offset: int) -> int:
    length, _ = FRAME.unpack_from(files[path], offset)
    index: int = cbor2.loads(files[path][offset + FRAME.size : offset + FRAME.size + length])[1]
    return index


def test_cut_removing_a_truncation_inside_an_older_segment_names_it_when_seen() -> None:
    """Cut segment 1 just before its dropped entry 7: the truncation record at 5 is gone, so it
    ends at index 6, past where segment 2 starts; segment 1 is named, at its new end."""
    files, _ = trio.run(_truncated_inside_an_older_segment)
    first = f"{DIR}/wal-0000000001-00000000000000000001.log"
    offset = next(o for o, n in _frames(files[first]) if o > 0 and _index(files, first, o) == 7)
    with pytest.raises(
        StorageCorruptError, match="truncation record in this segment was cut"
    ) as info:
        open_and_load({**files, first: files[first][:offset]})
    assert (info.value.path, info.value.offset) == (first, offset)


async def _random_workload(seed: int) -> tuple[dict[str, bytes], StoredState, list[str]]:
    """Appends in rising terms, truncations (into older segments too), compactions, a
    compaction past the end of the log and snapshot installs that drop the whole log first,
    with small segments: every way a segment is started, many seams."""
    rng = random.Random(seed)
    fs = SimulatedFileSystem()
    async with open_file_storage(DIR, segment_bytes=rng.choice([256, 400]), fs=fs) as s:
        term = 1
        await s.save(hard_state=HardState(1, None))
        for _ in range(rng.randint(8, 25)):
            r, last, start = rng.random(), s.last_index(), s.log_start_index
            if r < 0.35:
                first = last + 1
                entries = [
                    Entry(term, i, "x" * rng.randint(0, 40)) for i in range(first, first + 4)
                ]
                await s.save(entries=entries)
            elif r < 0.6 and last > start + 1:
                term += 1
                at = rng.randint(start + 1, last)
                news = [Entry(term, i, "t" * rng.randint(0, 30)) for i in range(at, at + 3)]
                await s.save(hard_state=HardState(term, None), truncate_from=at, entries=news)
            elif r < 0.7 and last > start + 2:
                i = rng.randint(start + 1, last - 1)
                (entry,) = s.entries(i, i + 1)
                await s.save_snapshot(SnapshotMeta(i, entry.term), _one(b"s"))
                await s.compact(i, entry.term)
            elif r < 0.8 and last > start + 1:  # install a snapshot: drop the log, compact
                term += 1
                await s.save(hard_state=HardState(term, None), truncate_from=start + 1)
                await s.sync()
                i = last + rng.randint(0, 2)
                await s.save_snapshot(SnapshotMeta(i, term), _one(b"s"))
                await s.compact(i, term)
            await s.sync()
        return fs.files(), await s.load(), [seg.path for seg in s._wal.segments]


@pytest.mark.parametrize("seed", range(40))
def test_every_cut_or_loss_of_an_older_segment_in_random_workloads(seed: int) -> None:
    """Every frame-boundary cut and one mid-frame cut of each older segment, and its deletion,
    in a random workload: opening gives exactly a prefix of the true log, or refuses. (Before
    segment headers carried the previous entry's term, some of these loaded entries that a
    truncation had dropped: 4 of these 40 seeds.)"""
    files, state, segments = trio.run(_random_workload, seed)
    failures = []
    for path in segments[:-1]:
        data = files[path]
        damaged: list[tuple[str, bytes | None]] = [("deleted", None)]
        for offset, _ in _frames(data)[1:]:
            damaged += [
                (f"cut at {offset}", data[:offset]),
                (f"cut at {offset + 3}", data[: offset + 3]),
            ]
        for what, cut in damaged:
            copy = {p: d for p, d in files.items() if p != path}
            if cut is not None:
                copy[path] = cut
            got = _load_or_error(copy)
            if isinstance(got, StorageCorruptError):
                continue
            k = len(got.entries)
            if (got.log_start_index, got.entries) != (state.log_start_index, state.entries[:k]):
                failures.append(f"{path} {what}: loaded {got.entries}")
    assert not failures, f"{len(failures)} cases:\n" + "\n".join(failures[:10])
