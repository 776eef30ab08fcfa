"""Format versions: segment format 2 with configuration entries, snapshot header 2 with the
membership, and the directories of older releases (segment format 1, snapshot header 1).

An older directory opens unchanged and goes on in a new, version-2 segment at its first
append, so configuration entries only ever land in version-2 segments; a configuration entry
in a version-1 segment, a version this release does not read, and a damaged membership are
corruption, reported with the file (and offset).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import cbor2
import pytest

from trio_raft import Entry, EntryKind, HardState, Membership, StorageCorruptError
from trio_raft._types import SnapshotMeta
from trio_raft._wal import _segments
from trio_raft._wal._file_storage import FileStorage, open_file_storage
from trio_raft._wal._segments import (
    FORMAT_VERSION,
    Append,
    Header,
    decode_record,
    encode_append,
    encode_header,
    frame,
    parse_segment_name,
)
from trio_raft._wal._simfs import SimulatedFileSystem
from trio_raft._wal._snapshot_file import SNAPSHOT_VERSION, encode_snapshot_header

from ._old_format import frames, header_version, make_old, old_segment, old_snapshot_header

D = "/d"
JOINT = Membership(
    {"n1", "n2", "n4"},
    learners={"n5"},
    outgoing={"n1", "n2", "n3"},
    addresses={
        n: {"peer": f"ws://{n}:7000", "client": f"http://{n}:8000"}
        for n in ["n1", "n2", "n3", "n4", "n5"]
    },
)
ONE = Membership({"n1"})


def commands(first: int, count: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, ["cmd", i, "x" * 30]) for i in range(first, first + count)]


def config(index: int, membership: Membership = JOINT, term: int = 1) -> Entry:
    return Entry(term, index, membership, EntryKind.CONFIG)


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def segments(fs: SimulatedFileSystem) -> list[str]:
    """Segment paths, oldest first."""
    found = [(parse_segment_name(p.rsplit("/", 1)[1]), p) for p in fs.walk_files()]
    return [p for name, p in sorted((n, p) for n, p in found if n is not None)]


async def _old_directory(fs: SimulatedFileSystem) -> list[Entry]:
    """A directory as an older release leaves it: several version-1 segments, a version-1
    snapshot, a compacted prefix. Returns its live entries."""
    async with open_file_storage(D, fs=fs, segment_bytes=300) as st:
        await st.save(hard_state=HardState(2, "n1"), entries=commands(1, 12))
        await st.save(entries=[Entry(2, 13, None, EntryKind.NOOP), *commands(14, 3, term=2)])
        await st.sync()
        await st.save_snapshot(SnapshotMeta(5, 1), _chunks(b"state at 5"))
        await st.compact(5, 1)
        live = st.entries(1, 100)
    make_old(fs, D)
    return live


# -- the record and the headers ---------------------------------------------------------------


def test_configuration_record_holds_the_plain_membership() -> None:
    payload = encode_append(config(7))
    assert cbor2.loads(payload) == [0, 7, 1, 2, JOINT.to_plain()]
    record = decode_record(payload)
    assert record == Append(config(7))
    assert isinstance(record, Append) and type(record.entry.command) is Membership
    header = encode_header(3, 40, prev_term=5)
    assert cbor2.loads(header) == [2, FORMAT_VERSION, 3, 40, 5] == [2, 2, 3, 40, 5]


def test_old_headers_are_what_older_releases_wrote() -> None:
    assert encode_header(3, 40, prev_term=None, version=1) == cbor2.dumps([2, 1, 3, 40])
    old = encode_snapshot_header(SnapshotMeta(9, 2, JOINT), version=1)
    assert old == old_snapshot_header(9, 2)  # version 1 has no room for the membership
    assert SNAPSHOT_VERSION == 2
    new = cbor2.loads(encode_snapshot_header(SnapshotMeta(9, 2, JOINT))[1:])
    assert new == {"v": 2, "index": 9, "term": 2, "membership": JOINT.to_plain()}
    none = cbor2.loads(encode_snapshot_header(SnapshotMeta(9, 2))[1:])
    assert none == {"v": 2, "index": 9, "term": 2, "membership": None}


@pytest.mark.parametrize(
    ("plain", "match"),
    [
        ({"voters": []}, "keys"),
        ({**JOINT.to_plain(), "voters": []}, "at least one voter"),
        ({**JOINT.to_plain(), "voters": ["n4", "n1"]}, "sorted"),
        ({**ONE.to_plain(), "learners": ["n1"]}, "voter and learner"),
        ({**ONE.to_plain(), "addresses": {"n2": None}}, "one per member"),
        ("n1", "expected a map"),
    ],
)
def test_a_bad_membership_is_not_a_record(plain: object, match: str) -> None:
    payload = cbor2.dumps([0, 7, 1, 2, plain])
    with pytest.raises(_segments.Malformed, match=match):
        decode_record(payload)


# -- configuration entries on disk --------------------------------------------------------------


async def test_configuration_entries_round_trip_in_a_version_2_segment() -> None:
    fs = SimulatedFileSystem()
    log = [*commands(1, 3), config(4, ONE), config(5), *commands(6, 2), config(8, JOINT.leave())]
    async with open_file_storage(D, fs=fs) as st:
        await st.save(entries=log)
        await st.sync()
    (path,) = segments(fs)
    assert header_version(fs.files()[path]) == 2
    async with open_file_storage(D, fs=fs) as st:
        assert list((await st.load()).entries) == log
        assert all(type(e.command) is Membership for e in st.entries(1, 9) if e.kind == 2)


@pytest.mark.parametrize("cut", [1, 20, 50])
async def test_a_torn_configuration_record_at_the_tail_is_cut_off(cut: int) -> None:
    fs = SimulatedFileSystem()
    async with open_file_storage(D, fs=fs) as st:
        await st.save(entries=[*commands(1, 2), config(3)])
        await st.sync()
    (path,) = segments(fs)
    data = fs.files()[path]
    assert len(frames(data)[-1][1]) > cut
    fs.put_file(path, data[:-cut])
    async with open_file_storage(D, fs=fs) as st:
        assert (await st.load()).entries == tuple(commands(1, 2))
        await st.save(entries=[config(3, ONE, term=2)])
        await st.sync()
    async with open_file_storage(D, fs=fs) as st:
        assert (await st.load()).entries == (*commands(1, 2), config(3, ONE, term=2))


async def test_a_configuration_entry_with_a_damaged_membership_is_corruption() -> None:
    fs = SimulatedFileSystem()
    async with open_file_storage(D, fs=fs) as st:
        await st.save(entries=[*commands(1, 2), config(3), *commands(4, 2)])
        await st.sync()
    (path,) = segments(fs)
    data = fs.files()[path]
    offset, payload = frames(data)[3]  # header, two commands, the configuration entry
    bad = {**JOINT.to_plain(), "learners": ["n1"]}  # a voter cannot also be a learner
    record = frame(cbor2.dumps([0, 3, 1, 2, bad]))  # a valid checksum: not a torn write
    fs.put_file(path, data[:offset] + record + data[offset + 8 + len(payload) :])
    with pytest.raises(StorageCorruptError, match="voter and learner") as info:
        async with open_file_storage(D, fs=fs):
            pass  # pragma: no cover
    assert (info.value.path, info.value.offset) == (path, offset)


# -- the directories of older releases ---------------------------------------------------------


async def test_an_old_directory_opens_unchanged_and_continues_in_a_version_2_segment() -> None:
    fs = SimulatedFileSystem()
    live = await _old_directory(fs)
    old = segments(fs)
    assert len(old) >= 2 and {header_version(fs.files()[p]) for p in old} == {1}
    before = {p: d for p, d in fs.files().items() if p in old or p.endswith("/snapshot")}
    async with open_file_storage(D, fs=fs, segment_bytes=4096) as st:
        state = await st.load()
        assert (state.hard_state, state.entries) == (HardState(2, "n1"), tuple(live))
        assert (state.log_start_index, state.log_start_term) == (5, 1)
        loaded = await st.load_snapshot()
        assert loaded is not None and loaded[0] == SnapshotMeta(5, 1, None)
        assert segments(fs) == old  # opening alone writes no new segment
        # A truncation inside the active old segment is a plain version-1 record.
        await st.save(truncate_from=16)
        await st.sync()
        assert segments(fs) == old
        # The first append starts a version-2 segment, even with room left in the old one.
        assert len(fs.files()[old[-1]]) + len(encode_append(config(16, ONE, term=3))) < 4096
        await st.save(entries=[config(16, ONE, term=3), *commands(17, 2, term=3)])
        await st.sync()
        new = segments(fs)
        assert new[:-1] == old and header_version(fs.files()[new[-1]]) == 2
        last_old = parse_segment_name(old[-1].rsplit("/", 1)[1])
        assert last_old is not None
        assert parse_segment_name(new[-1].rsplit("/", 1)[1]) == (last_old[0] + 1, 16)
        assert all(fs.files()[p] == data for p, data in before.items() if p in old[:-1])
    async with open_file_storage(D, fs=fs, segment_bytes=4096) as st:
        state = await st.load()
        assert state.entries == (*live[:-1], config(16, ONE, term=3), *commands(17, 2, term=3))
        # A new snapshot is written with the version-2 header.
        await st.save_snapshot(SnapshotMeta(16, 3, ONE), _chunks(b"state at 16"))
        await st.compact(16, 3)
    async with open_file_storage(D, fs=fs, segment_bytes=4096) as st:
        loaded = await st.load_snapshot()
        assert loaded is not None and loaded[0] == SnapshotMeta(16, 3, ONE)
        assert all(header_version(fs.files()[p]) == 2 for p in segments(fs))


async def test_an_old_directory_whose_last_segment_is_empty_continues_in_a_new_one() -> None:
    fs = SimulatedFileSystem()
    async with open_file_storage(D, fs=fs) as st:
        await st.save(entries=commands(1, 4))
        await st.save_snapshot(SnapshotMeta(10, 2), _chunks(b"from the leader"))
        await st.compact(10, 2)  # the whole log: an empty segment at 11
    make_old(fs, D)
    assert [header_version(fs.files()[p]) for p in segments(fs)] == [1]
    async with open_file_storage(D, fs=fs) as st:
        await st.save(entries=[config(11, term=2)])
        await st.sync()
    async with open_file_storage(D, fs=fs) as st:
        assert (await st.load()).entries == (config(11, term=2),)
        assert [header_version(fs.files()[p]) for p in segments(fs)] == [2]  # the old one went


async def test_a_configuration_entry_in_a_version_1_segment_is_corruption() -> None:
    fs = SimulatedFileSystem()
    async with open_file_storage(D, fs=fs) as st:
        await st.save(entries=commands(1, 3))
        await st.sync()
    (path,) = segments(fs)
    data = old_segment(fs.files()[path])
    record = frame(encode_append(config(4)))
    fs.put_file(path, data + record + frame(encode_append(commands(5, 1)[0])))
    with pytest.raises(StorageCorruptError, match="version-1 segment cannot hold") as info:
        async with open_file_storage(D, fs=fs):
            pass  # pragma: no cover
    assert (info.value.path, info.value.offset) == (path, len(data))
    # Even as the very last record (where a torn write would be forgiven): it is no tear.
    fs.put_file(path, data + record)
    with pytest.raises(StorageCorruptError, match="kind 2"):
        async with open_file_storage(D, fs=fs):
            pass  # pragma: no cover


async def test_a_newer_segment_version_is_refused_with_the_version() -> None:
    fs = SimulatedFileSystem()
    async with open_file_storage(D, fs=fs) as st:
        await st.save(entries=commands(1, 3))
        await st.sync()
    (path,) = segments(fs)
    data = fs.files()[path]
    newer = frame(cbor2.dumps([2, 3, 1, 1]))
    fs.put_file(path, newer + data[len(newer) :])
    with pytest.raises(StorageCorruptError) as info:
        async with open_file_storage(D, fs=fs):
            pass  # pragma: no cover
    assert info.value.reason.startswith("segment format version 3; this trio-raft reads 1 and 2")
    assert "newer release" in info.value.reason and info.value.path == path
    none = frame(cbor2.dumps([2, 0, 1, 1]))  # damage, not a newer release
    fs.put_file(path, none + data[len(none) :])
    with pytest.raises(StorageCorruptError, match="version 0 does not exist") as info:
        async with open_file_storage(D, fs=fs):
            pass  # pragma: no cover
    assert "newer release" not in info.value.reason


async def test_a_reader_of_version_1_only_refuses_what_this_release_wrote(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reader of version 1 only (this code with READ_VERSIONS limited, standing in for an
    older release) refuses the upgraded directory at the new segment's header. An actual older
    release, which knows only the four-item header, says "unknown record type 2 with 4 fields"
    there instead (storage.rst, "Upgrading and downgrading")."""
    fs = SimulatedFileSystem()
    await _old_directory(fs)
    async with open_file_storage(D, fs=fs, segment_bytes=300) as st:
        await st.save(entries=[config(17, ONE, term=3)])
        await st.sync()
    monkeypatch.setattr(_segments, "READ_VERSIONS", (1,))
    with pytest.raises(StorageCorruptError) as info:
        async with open_file_storage(D, fs=fs, segment_bytes=300):
            pass  # pragma: no cover
    assert info.value.reason.startswith("segment format version 2; this trio-raft reads 1 (")
    assert info.value.path == segments(fs)[-1] and info.value.offset == 0


# -- the snapshot header -------------------------------------------------------------------------


async def test_snapshot_membership_is_stored_whole() -> None:
    fs = SimulatedFileSystem()
    for meta in [SnapshotMeta(3, 1, JOINT), SnapshotMeta(4, 1, ONE), SnapshotMeta(5, 1)]:
        async with open_file_storage(D, fs=fs) as st:
            await st.save_snapshot(meta, _chunks(b"state"))
            loaded = await st.load_snapshot()
            assert loaded is not None and loaded[0] == meta
        async with open_file_storage(D, fs=fs) as st:  # from the file, not from memory
            loaded = await st.load_snapshot()
            assert loaded is not None and loaded[0] == meta
            assert loaded[0].membership is None or type(loaded[0].membership) is Membership


async def test_a_snapshot_header_too_large_for_a_record_is_refused_before_writing() -> None:
    fs = SimulatedFileSystem()
    async with open_file_storage(D, fs=fs, max_record_bytes=200) as st:
        with pytest.raises(ValueError, match="max_record_bytes=200"):
            await st.save_snapshot(SnapshotMeta(3, 1, JOINT), _chunks(b"state"))
        assert await st.load_snapshot() is None
        with pytest.raises(TypeError, match="SnapshotMeta"):
            await st.save_snapshot((3, 1), _chunks(b"state"))  # type: ignore[arg-type]
        await st.save(entries=commands(1, 1))  # still usable


def _header_fields(**fields: object) -> dict[str, object]:
    value: dict[str, object] = {"v": 2, "index": 3, "term": 1, "membership": JOINT.to_plain()}
    value.update(fields)
    return {k: v for k, v in value.items() if v is not _GONE}


_GONE = object()


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"membership": {**JOINT.to_plain(), "outgoing": JOINT.to_plain()["voters"]}}, "joint"),
        ({"membership": {**JOINT.to_plain(), "addresses": {}}}, "one address per member"),
        ({"membership": ["n1"]}, "expected a map"),
        ({"membership": _GONE}, "fields"),
        ({"v": 1}, "fields"),  # a version-1 header has no membership
        ({"v": 3}, "snapshot format version 3; this trio-raft reads 1 and 2"),
        ({"v": "2"}, "snapshot format version '2'"),
        ({"index": 0}, "not a log index"),
        ({"index": True}, "not a log index"),
        ({"index": 2**63}, "not a log index"),
        ({"term": 2**62 + 1}, "not a term"),
        ({"extra": 1}, "fields"),
    ],
)
async def test_a_damaged_snapshot_header_is_corruption_naming_the_file(
    fields: dict[str, object], match: str
) -> None:
    fs = SimulatedFileSystem()
    async with open_file_storage(D, fs=fs) as st:
        await st.save_snapshot(SnapshotMeta(3, 1, JOINT), _chunks(b"state"))
    data = fs.files()[f"{D}/snapshot"]
    (_, first), *_ = frames(data)
    header = frame(b"H" + cbor2.dumps(_header_fields(**fields)))
    fs.put_file(f"{D}/snapshot", header + data[8 + len(first) :])
    with pytest.raises(StorageCorruptError, match=match) as info:
        async with open_file_storage(D, fs=fs):
            pass  # pragma: no cover  (the header is read on open)
    assert info.value.path == f"{D}/snapshot" and info.value.offset == 0
    assert "bad snapshot header" in info.value.reason


async def test_a_version_1_snapshot_header_is_read_without_a_membership() -> None:
    fs = SimulatedFileSystem()
    async with open_file_storage(D, fs=fs) as st:
        await st.save_snapshot(SnapshotMeta(3, 1), _chunks(b"old ", b"state"))
    make_old(fs, D)
    data = fs.files()[f"{D}/snapshot"]
    assert frames(data)[0][1] == old_snapshot_header(3, 1)
    async with open_file_storage(D, fs=fs) as st:
        loaded = await st.load_snapshot()
        assert loaded is not None
        meta, chunks = loaded
        assert meta == SnapshotMeta(3, 1) and meta.membership is None
        assert b"".join([c async for c in chunks]) == b"old state"


# -- the previous entry's term in version-2 headers ----------------------------------------------


def _header(data: bytes) -> Header:
    header = decode_record(frames(data)[0][1])
    assert isinstance(header, Header)
    return header


class _Seams:
    """Checks, after each call, that every segment created since has in its header the term
    of the entry just before its first index (0 for none), as the log is after the call."""

    def __init__(self, fs: SimulatedFileSystem) -> None:
        self.fs = fs
        self.seen: set[str] = set()
        self.checked: list[tuple[int, int]] = []  # (first_index, prev_term) of each new one

    def check(self, st: FileStorage) -> None:
        start, start_term = st.log_start_index, st.log_start_term
        for path in segments(self.fs):
            if path in self.seen:
                continue
            self.seen.add(path)
            header = _header(self.fs.files()[path])
            before = header.first_index - 1
            if before == 0:
                expected = 0
            elif before == start:
                expected = start_term
            else:
                (entry,) = st.entries(before, before + 1)
                expected = entry.term
            assert header.version == 2 and header.prev_term == expected, (path, header)
            self.checked.append((header.first_index, expected))


async def test_every_new_segment_header_holds_the_previous_entry_s_term() -> None:
    """Each way a segment is started: the empty log, a rotation, a truncation reaching into
    an older segment, a compaction past the end of the log, a snapshot install that drops the
    whole log first."""
    fs = SimulatedFileSystem()
    seams = _Seams(fs)
    async with open_file_storage(D, fs=fs, segment_bytes=300) as st:
        seams.check(st)  # the empty log: segment 1 at index 1, previous term 0
        for term in (1, 2, 3):  # rotations at segment_bytes, in several terms
            await st.save(hard_state=HardState(term, None))
            await st.save(entries=commands(st.last_index() + 1, 4, term=term))
            seams.check(st)
        await st.save(hard_state=HardState(4, None))
        await st.save(truncate_from=3, entries=commands(3, 2, term=4))  # into segment 1
        await st.sync()
        seams.check(st)
        await st.save_snapshot(SnapshotMeta(9, 5), _chunks(b"9"))
        await st.compact(9, 5)  # past the end (4): the log restarts at 10
        seams.check(st)
        await st.save(entries=commands(10, 6, term=5))
        await st.sync()
        seams.check(st)
        await st.save(truncate_from=10)  # a snapshot install drops the whole log
        await st.sync()
        seams.check(st)
        await st.save_snapshot(SnapshotMeta(12, 6), _chunks(b"12"))
        await st.compact(12, 6)
        await st.save(entries=commands(13, 3, term=6))
        await st.sync()
        seams.check(st)
    firsts = [first for first, _ in seams.checked]
    assert seams.checked[0] == (1, 0) and 3 in firsts and 10 in firsts and 13 in firsts
    assert len(seams.checked) >= 8
    async with open_file_storage(D, fs=fs, segment_bytes=300) as st:  # and it opens
        assert (await st.load()).entries == tuple(commands(13, 3, term=6))


async def test_the_upgrade_segment_holds_the_last_term_of_the_version_1_log() -> None:
    fs = SimulatedFileSystem()
    live = await _old_directory(fs)
    async with open_file_storage(D, fs=fs, segment_bytes=300) as st:
        await st.save(entries=commands(17, 1, term=3))
        await st.sync()
    header = _header(fs.files()[segments(fs)[-1]])
    assert (header.version, header.first_index, header.prev_term) == (2, 17, live[-1].term) == (
        2, 17, 2,
    )  # fmt: skip
    # A version-1 directory whose log was compacted whole: the log start's term.
    fs = SimulatedFileSystem()
    async with open_file_storage(D, fs=fs) as st:
        await st.save(entries=commands(1, 4))
        await st.save_snapshot(SnapshotMeta(10, 2), _chunks(b"from the leader"))
        await st.compact(10, 2)
    make_old(fs, D)
    async with open_file_storage(D, fs=fs) as st:
        await st.save(entries=[config(11, term=2)])
        await st.sync()
    header = _header(fs.files()[segments(fs)[-1]])
    assert (header.version, header.first_index, header.prev_term) == (2, 11, 2)


async def test_a_cut_of_the_last_version_1_segment_before_the_upgrade_segment_is_refused() -> None:
    """The seam between the last version-1 segment and the first version-2 one is checked:
    the version-2 header knows the term of the entry before it."""
    fs = SimulatedFileSystem()
    async with open_file_storage(D, fs=fs, segment_bytes=4096) as st:
        await st.save(hard_state=HardState(2, None), entries=commands(1, 8))
        await st.save(truncate_from=4, entries=commands(4, 3, term=2))
        await st.sync()
    make_old(fs, D)
    (old,) = segments(fs)
    async with open_file_storage(D, fs=fs, segment_bytes=4096) as st:
        await st.save(entries=commands(7, 2, term=2))  # the upgrade rotation, at 7
        await st.sync()
    data = fs.files()[old]
    at = [(o, cbor2.loads(p)) for o, p in frames(data)[1:]]
    cut = next(o for o, record in at if record[:2] == [0, 7])  # old entries 1..6 of term 1
    fs.put_file(old, data[:cut])
    with pytest.raises(StorageCorruptError, match="a truncation dropped") as info:
        async with open_file_storage(D, fs=fs):
            pass  # pragma: no cover
    old_6 = next(o for o, record in at if record[:3] == [0, 6, 1])
    assert (info.value.path, info.value.offset) == (old, old_6)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ([2, 2, 1, 1], "a version-2 segment header with 3 fields, not 4"),
        ([2, 1, 1, 1, 0], "a version-1 segment header with 4 fields, not 3"),
        ([2, 2, 1, 1, 3], "starting at index 1 after an entry of term 3"),
        ([2, 2, 1, 5, 0], "starting at index 5 after an entry of term 0"),
        ([2, 2, 1, 5, 2**62 + 1], "above the largest term"),
        ([2, 2, 1, 5, -1], "non-negative integers"),
    ],
)
def test_a_malformed_header_is_not_a_record(fields: list[int], reason: str) -> None:
    with pytest.raises(_segments.Malformed, match=reason):
        decode_record(cbor2.dumps(fields))
