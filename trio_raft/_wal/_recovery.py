"""Opening a data directory: lock it, verify and replay every segment, repair a torn tail.

Replay reads the segments in order of their sequence number and applies their records to a
log of *known* entries ``[base, next)``; every step is checked, and a check that fails names
the file and byte offset (:class:`StorageCorruptError`). A segment's name carries the index the
next append had when it was created (``first_index``); against the log replayed so far it is:

* equal to ``next``: a plain continuation (rotation);
* below ``next``: the segment was started by a truncation, and must say so with a truncation
  record at ``first_index`` right after its header;
* above ``next``: only if everything below it was compacted (``first_index <= log_start + 1``),
  otherwise entries are missing (see :func:`_gap` for which file is named).

A version-2 header also carries the term the entry at ``first_index - 1`` had when the
segment was started; whenever that entry is in the log replayed so far, its term must match
(:func:`_check_seam`).

Older segments are never rewritten, so a cut in one is damage, not a crash. It is found
whenever it removes a live entry (the next segment no longer follows on), ends inside a frame,
or (for a version-2 segment after it) removes a truncation record so that the entry before the
next segment is one the truncation dropped; a cut at a frame boundary that removes only records
a later truncation dropped (the tail of the segment before a truncation segment) leaves nothing
to find, and loses nothing.
"""

from __future__ import annotations

import posixpath

import attrs

from .._types import Entry, SnapshotMeta
from ._errors import StorageCorruptError, StorageLockedError
from ._fs import FileLock, FileSystem
from ._identity import (
    IDENTITY_FILE,
    IDENTITY_TMP,
    Identity,
    check_identity,
    encode_identity,
    read_identity,
)
from ._segments import (
    LOCK_FILE,
    SEGMENT_TMP,
    STATE_FILE,
    STATE_TMP,
    Append,
    Header,
    ScannedSegment,
    State,
    Truncate,
    decode_state,
    parse_segment_name,
    scan_segment,
)
from ._snapshot_file import SNAPSHOT_FILE, SNAPSHOT_TMP, read_snapshot_meta
from ._wal import (
    Counters,
    Segment,
    Wal,
    create_segment,
    join_path,
    write_atomic,
    write_state_file,
)


def _read_all(fs: FileSystem, path: str, limit: int) -> bytes:
    file = fs.open_read(path)
    try:
        data = file.read(limit + 1)
    finally:
        file.close()
    if len(data) > limit:
        raise StorageCorruptError(path, limit, f"file is larger than the {limit} bytes expected")
    return data


def _starts_with_truncation(seg: ScannedSegment) -> bool:
    return [r for _, r in seg.records[1:2]] == [Truncate(seg.first_index)]


def _gap(prev: ScannedSegment, seg: ScannedSegment, next_index: int) -> StorageCorruptError:
    """The error for entries ``next_index..seg.first_index - 1`` missing between two segments.

    Only a truncation deletes segments that are not a compacted prefix, and only those right
    before its own new segment holding nothing but entries it dropped (at its index or later).
    So when no segment can lie between the two (consecutive numbers), or ``seg`` was started by
    a truncation, the missing entries were in ``prev``, which was cut short: it is named, at its
    end. Otherwise a segment between them is missing: ``seg`` is named.
    """
    missing = f"entries {next_index}..{seg.first_index - 1} are missing"
    if seg.seq == prev.seq + 1 or _starts_with_truncation(seg):
        between = "" if seg.seq == prev.seq + 1 else ", or a segment between them was deleted"
        return StorageCorruptError(
            prev.path, prev.valid_bytes, f"{missing}: the segment ends here, at index "
            f"{next_index - 1}, but the next one ({seg.path}) starts at index {seg.first_index} "
            f"(this segment was cut short{between})",
        )  # fmt: skip
    lost = prev.seq + 1, seg.seq - 1
    gone = f"segment {lost[0]} was" if lost[0] == lost[1] else f"segments {lost[0]}..{lost[1]} were"
    return StorageCorruptError(
        seg.path, 0, f"{missing}: the previous segment ({prev.path}) ends at index "
        f"{next_index - 1}, this one starts at {seg.first_index} ({gone} deleted, or the "
        "previous one was cut short)",
    )  # fmt: skip


def _check_seam(
    scanned: list[ScannedSegment],
    seg: ScannedSegment,
    prev_term: int,
    before: Entry,
    owner: tuple[int, int],
) -> None:
    """Check that ``before``, the entry at ``seg.first_index - 1`` in the log replayed from the
    segments before ``seg``, has the term ``seg``'s header says it had when ``seg`` was started.

    Only damage to an earlier segment makes them differ: the one holding ``before`` lost a
    truncation record and the entries written after it, so ``before`` is an entry that
    truncation had dropped (a Raft log never holds two entries with the same index and term
    that differ), or a segment between them that started with a truncation was deleted.
    """
    if before.term == prev_term:
        return
    holder = scanned[owner[0]]
    present = [s.seq for s in scanned if holder.seq < s.seq < seg.seq]
    missing = seg.seq - holder.seq - 1 - len(present)
    between = f", or {missing} segment(s) between them were deleted" if missing else ""
    raise StorageCorruptError(
        holder.path, owner[1], f"entry {before.index} here has term {before.term}, but the "
        f"segment {seg.path} was started after entry {before.index} of term {prev_term}: this "
        "is an entry a truncation dropped (this segment lost the truncation record and the "
        f"entries written after it{between})",
    )  # fmt: skip


def _replay(scanned: list[ScannedSegment], state: State) -> tuple[list[Entry], list[Segment], int]:
    """The live entries, the segments' bookkeeping, and the WAL's next index."""
    base = next_index = scanned[0].first_index
    entries: list[Entry] = []
    owners: list[tuple[int, int]] = []  # position in ``scanned`` of each entry's segment, offset
    start = state.log_start_index
    for pos, seg in enumerate(scanned):
        records = seg.records
        if not records or not isinstance(records[0][1], Header):
            raise StorageCorruptError(seg.path, 0, "the segment does not start with a header")
        header = records[0][1]
        if (header.seq, header.first_index) != (seg.seq, seg.first_index):
            raise StorageCorruptError(
                seg.path, 0, f"its header says segment {header.seq} starting at index "
                f"{header.first_index}, its file name says {seg.seq} at {seg.first_index}",
            )  # fmt: skip
        first = seg.first_index
        if first > next_index:
            if first > start + 1:
                raise _gap(scanned[pos - 1], seg, next_index)
            base = next_index = first  # everything before was compacted
            entries.clear()
            owners.clear()
        elif first < next_index and not _starts_with_truncation(seg):
            prev = scanned[pos - 1]
            # Born right after ``prev``, which then ended at ``first - 1``, and its own records
            # intact (a cut of it would have taken all of them with its truncation record):
            # ``prev`` lost a truncation record and what followed it.
            if seg.seq == prev.seq + 1 and len(records) > 1:
                raise StorageCorruptError(
                    prev.path, prev.valid_bytes, f"the segment ends here at index "
                    f"{next_index - 1}, but the next one ({seg.path}) starts at {first} without "
                    "a truncation record (a truncation record in this segment was cut away)",
                )  # fmt: skip
            raise StorageCorruptError(
                seg.path, records[0][0], f"the segment starts at index {first}, below the end "
                f"of the previous segment ({next_index - 1}), without a truncation record",
            )  # fmt: skip
        if header.prev_term is not None and base <= first - 1 < next_index:
            at = first - 1 - base
            _check_seam(scanned, seg, header.prev_term, entries[at], owners[at])
        for offset, record in records[1:]:
            if isinstance(record, Append):
                if record.entry.index != next_index:
                    raise StorageCorruptError(
                        seg.path, offset,
                        f"entry {record.entry.index} where entry {next_index} was expected",
                    )  # fmt: skip
                entries.append(record.entry)
                owners.append((pos, offset))
                next_index += 1
            elif isinstance(record, Truncate):
                if record.index > next_index:
                    raise StorageCorruptError(
                        seg.path, offset, f"truncation at {record.index}, beyond the end of "
                        f"the log ({next_index - 1})",
                    )  # fmt: skip
                cut = max(record.index - base, 0)
                del entries[cut:], owners[cut:]
                base = min(base, record.index)
                next_index = record.index
            else:
                raise StorageCorruptError(seg.path, offset, "a second segment header")
    if next_index > start + 1 and base > start + 1:
        raise StorageCorruptError(
            scanned[0].path, 0, f"entries {start + 1}..{base - 1} are missing: the state file "
            f"keeps the log after index {start}, but the first segment starts at {base}",
        )  # fmt: skip
    if base <= start < next_index and entries[start - base].term != state.log_start_term:
        raise StorageCorruptError(
            scanned[0].path, None, f"entry {start} has term {entries[start - base].term}, but "
            f"the state file says the log was compacted up to it in term {state.log_start_term}",
        )  # fmt: skip
    cut = max(start + 1 - base, 0)
    live, live_owners = entries[cut:], owners[cut:]
    segments = []
    for pos, seg in enumerate(scanned):
        mine = [e.index for e, (owner, _) in zip(live, live_owners, strict=True) if owner == pos]
        lo, hi = (mine[0], mine[-1] + 1) if mine else (seg.first_index, seg.first_index)
        ends = [offset for offset, _ in seg.records[1:]] + [seg.valid_bytes]
        starts_with_truncation = seg.records[1:2] == [(ends[0], Truncate(seg.first_index))]
        header_bytes = ends[1] if starts_with_truncation else ends[0]
        size = seg.valid_bytes
        segments.append(
            Segment(seg.seq, seg.first_index, seg.path, size, header_bytes, lo, hi, seg.version)
        )
    return live, segments, next_index


def _list_segments(fs: FileSystem, directory: str) -> list[tuple[int, int, str]]:
    found: dict[int, tuple[int, int, str]] = {}
    for name in fs.listdir(directory):
        parsed = parse_segment_name(name)
        path = join_path(directory, name)
        if parsed is None:
            if name.startswith("wal-"):
                raise StorageCorruptError(path, None, "a file named like a segment but not one")
            continue
        seq, first_index = parsed
        if seq in found:
            raise StorageCorruptError(path, None, f"two segments numbered {seq}")
        found[seq] = (seq, first_index, path)
    return [found[seq] for seq in sorted(found)]


@attrs.frozen
class Opened:
    """What :func:`open_wal` hands to the storage."""

    wal: Wal
    lock: FileLock
    """The held locks (the caller releases them)."""
    entries: list[Entry]
    """The live entries."""
    snapshot: SnapshotMeta | None
    """The current snapshot's metadata (its header only was read), if there is one."""


class _Locks:
    def __init__(self, *locks: FileLock) -> None:
        self._locks = locks

    def release(self) -> None:
        for lock in reversed(self._locks):
            lock.release()


def _lock(fs: FileSystem, directory: str) -> FileLock:
    # The directory itself, which cannot be unlinked under us; and the LOCK file as well, which
    # older releases lock (so they are kept out too).
    try:
        directory_lock = fs.lock(directory)
    except BlockingIOError:
        raise StorageLockedError(directory) from None
    try:
        file_lock = fs.lock(join_path(directory, LOCK_FILE))
    except BlockingIOError:
        directory_lock.release()
        raise StorageLockedError(directory) from None
    except BaseException:
        directory_lock.release()
        raise
    return _Locks(directory_lock, file_lock)


def open_wal(
    fs: FileSystem,
    directory: str,
    *,
    segment_bytes: int,
    max_record_bytes: int,
    identity: Identity | None = None,
    reserve_bytes: int = 0,
) -> Opened:
    """Open (creating if needed), lock, verify and repair a data directory.

    With an ``identity``, a directory that holds another one is refused before anything in it
    is changed; a directory without one (new, or written by an older release) adopts it once
    it was recovered.

    Raises:
        StorageLockedError: another storage holds the directory.
        StorageIdentityError: the directory belongs to another node or cluster.
        StorageCorruptError: damage a crash cannot explain.
        OSError: the file system failed.
    """
    if fs.makedirs(directory):
        fs.fsync_dir(posixpath.dirname(directory.rstrip("/")) or "/")
    lock = _lock(fs, directory)
    try:
        identity_path = join_path(directory, IDENTITY_FILE)
        found = read_identity(fs, identity_path)
        if found is not None and identity is not None:
            check_identity(found, identity, directory)
        wal, entries, snapshot = _recover(
            fs, directory, segment_bytes, max_record_bytes, reserve_bytes
        )
        if found is None and identity is not None:
            write_atomic(
                fs, directory, IDENTITY_FILE, IDENTITY_TMP, encode_identity(identity),
                wal.counters,
            )  # fmt: skip
    except BaseException:
        lock.release()
        raise
    return Opened(wal, lock, entries, snapshot)


def _check_snapshot(
    fs: FileSystem, directory: str, state: State, max_record_bytes: int
) -> SnapshotMeta | None:
    """The snapshot's metadata; refuse a log start that no snapshot covers."""
    path = join_path(directory, SNAPSHOT_FILE)
    meta = read_snapshot_meta(fs, path, max_record_bytes)
    start, start_term = state.log_start_index, state.log_start_term
    if start == 0:
        return meta
    state_path = join_path(directory, STATE_FILE)
    if meta is None:
        raise StorageCorruptError(
            path, None, f"the snapshot file is missing, but the state file ({state_path}) says "
            f"the log was compacted up to index {start}, so a snapshot must hold that state",
        )  # fmt: skip
    if meta.index < start or (meta.index == start and meta.term != start_term):
        raise StorageCorruptError(
            state_path, None, f"the state file says the log starts after index {start} (term "
            f"{start_term}), beyond the snapshot at index {meta.index} (term {meta.term}): the "
            "entries in between are lost",
        )  # fmt: skip
    return meta


def _recover(
    fs: FileSystem, directory: str, segment_bytes: int, max_record_bytes: int, reserve_bytes: int
) -> tuple[Wal, list[Entry], SnapshotMeta | None]:
    counters = Counters()
    for tmp in (STATE_TMP, SEGMENT_TMP, SNAPSHOT_TMP, IDENTITY_TMP):  # cut short before rename
        if fs.exists(join_path(directory, tmp)):
            fs.unlink(join_path(directory, tmp))
    state_path = join_path(directory, STATE_FILE)
    state = None
    if fs.exists(state_path):
        state = decode_state(_read_all(fs, state_path, 1 << 16), state_path)
    listed = _list_segments(fs, directory)
    if state is None:
        fresh = [(1, 1)]  # a first start cut short after the segment, before the state
        if [(seq, first) for seq, first, _ in listed] not in ([], fresh):
            raise StorageCorruptError(
                state_path, None, "the state file (term and vote) is missing, but the log is not"
            )
        scanned = [
            scan_segment(fs, path, seq, first, max_record_bytes=max_record_bytes, last=True)
            for seq, first, path in listed
        ]
        if [len(s.records) for s in scanned] not in ([], [1]):
            raise StorageCorruptError(
                state_path, None, "the state file (term and vote) is missing, but the log is not"
            )
        if fs.exists(join_path(directory, SNAPSHOT_FILE)):
            raise StorageCorruptError(
                state_path, None, "the state file (term and vote) is missing, but a snapshot "
                "is there",
            )  # fmt: skip
        for seg in scanned:
            fs.unlink(seg.path)
        wal = _create(fs, directory, segment_bytes, counters)
        wal.reserve_bytes = reserve_bytes
        return wal, [], None
    snapshot = _check_snapshot(fs, directory, state, max_record_bytes)
    if not listed:
        raise StorageCorruptError(directory, None, "the state file exists but no WAL segment")
    newest = listed[-1][0]
    if newest < state.newest_segment:
        missing = f"{state.newest_segment:010d}"
        raise StorageCorruptError(
            directory, None, f"the newest WAL segment is missing: the state file ({state_path}) "
            f"records that segment {state.newest_segment} (wal-{missing}-*.log) was created, but "
            f"the newest segment here is {newest}; the entries at the end of the log are lost",
        )  # fmt: skip
    scanned = [
        scan_segment(fs, path, seq, first, max_record_bytes=max_record_bytes, last=i == n - 1)
        for n in [len(listed)]
        for i, (seq, first, path) in enumerate(listed)
    ]
    entries, segments, next_index = _replay(scanned, state)
    last = scanned[-1]
    file = fs.open_append(last.path, create=False)
    if last.torn is not None:
        file.truncate(last.valid_bytes)
        file.fsync()
    wal = Wal(
        fs, directory, segment_bytes=segment_bytes, state=state, segments=segments,
        active=file, next_index=next_index,
        last_term=entries[-1].term if entries else state.log_start_term,
        counters=counters, reserve_bytes=reserve_bytes,
    )  # fmt: skip
    if state.newest_segment != newest:  # a directory of an older release, or a crash in rotation
        wal.record_newest_segment()
    if next_index <= state.log_start_index:
        wal.compact(state.log_start_index, state.log_start_term)  # continue after log start
    wal.drop_dead_prefix()  # left over by a crash in the middle of a compaction
    return wal, entries, snapshot


def _create(fs: FileSystem, directory: str, segment_bytes: int, counters: Counters) -> Wal:
    segment, file = create_segment(fs, directory, 1, 1, 0, truncate=False)
    fs.fsync_dir(directory)
    state = State(newest_segment=1)
    write_state_file(fs, directory, state, counters)
    return Wal(
        fs, directory, segment_bytes=segment_bytes, state=state, segments=[segment],
        active=file, next_index=1, last_term=0, counters=counters,
    )  # fmt: skip
