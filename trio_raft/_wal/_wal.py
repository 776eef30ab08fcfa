"""The blocking WAL writer: appends, rotation, truncation, compaction, fsync.

:class:`Wal` owns the segment files of one data directory. Its methods block (they write and
fsync) and run in a worker thread, one at a time; :class:`~trio_raft.FileStorage` serializes
them and keeps the entries themselves.

Rules that keep recovery unambiguous (``docs/source/storage.rst`` explains them):

1. Before a new segment is created, the old one and the directory are fsynced, so only the
   newest segment can ever hold a torn tail; and a segment is born complete with its header
   (written and fsynced under a temporary name, then renamed), so it never lacks one.
2. Before the state file is replaced, the WAL written so far is fsynced, so a crash leaves the
   state of some prefix of the calls (a new term is never durable ahead of older appends).
3. A segment is deleted only when no live entry is in it, and only as a prefix (compaction) or
   as a suffix before a truncation segment that is already durable; each unlink is followed by
   a directory fsync, so every crash state is a valid directory.
4. Each new segment's sequence number is recorded in the state file (``newest_segment``) as
   soon as the segment's name is durable, before anything is appended to it. The newest
   segment is never deleted, so on open a directory whose newest segment is older than the
   recorded one has lost the tail of its log (a deleted file), which recovery refuses.
5. Appends are refused with :class:`StorageFullError`, before anything is written, when they
   would leave less than ``reserve_bytes`` free on the file system (appends marked
   ``use_reserve``: less than half of it); snapshots may use the reserve down to its last
   quarter, state changes, truncations and compaction all of it.
6. Entries are appended only to a segment of the current format version: the first append
   to a directory whose active segment is older (written by an older release) starts a new
   segment first, as a rotation does. So a record kind that only the current format knows
   never lands in an old segment, and an older release refuses the directory by the version
   in the new segment's header.
7. Each segment's header carries the term of the entry just before its first index at the
   time it is started (``prev_term``: the last appended entry's for a rotation, the kept
   entry's before the truncation point for a truncation, the compaction's term when it
   restarts the log, 0 for an empty log). Recovery checks it against the log replayed from the
   segments before, so a cut of an older segment that removes a truncation record (and with
   it the entries that replaced the dropped ones) cannot bring dropped entries back unnoticed.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

import attrs

from .._types import HardState
from ._errors import StorageFullError
from ._fs import AppendFile, FileSystem
from ._segments import (
    FORMAT_VERSION,
    FRAME,
    SEGMENT_TMP,
    STATE_FILE,
    STATE_TMP,
    State,
    encode_header,
    encode_state,
    encode_truncate,
    frame,
    segment_name,
)


def join_path(directory: str, name: str) -> str:
    return posixpath.join(directory, name) if directory.startswith("/") else f"{directory}/{name}"


@attrs.define
class Segment:
    """Bookkeeping for one segment file."""

    seq: int
    """Position in the order of segments (file names sort by it)."""
    first_index: int
    """Index the next append had when the segment was created (in its name and header)."""
    path: str
    size: int
    """Bytes written so far."""
    header_bytes: int
    """Size of the leading header (and truncation) records: below it, the segment is empty."""
    live_lo: int
    """Live entries (kept, not compacted) in this segment: ``live_lo <= index < live_hi``."""
    live_hi: int
    version: int = FORMAT_VERSION
    """The segment's format version. Appends go only to a segment of the current version: a
    directory an older release wrote continues in a new segment (rule 6)."""

    @property
    def live(self) -> bool:
        """Whether any live entry is in this segment."""
        return self.live_lo < self.live_hi


@attrs.define
class Counters:
    """Work done, for :meth:`FileStorage.statistics`."""

    syncs: int = 0
    fsyncs: int = 0
    directory_fsyncs: int = 0
    bytes_written: int = 0


def write_atomic(
    fs: FileSystem, directory: str, name: str, tmp_name: str, data: bytes, counters: Counters
) -> None:
    """Replace file ``name`` atomically: temp file, fsync, rename, fsync the directory."""
    tmp = join_path(directory, tmp_name)
    file = fs.open_append(tmp, create=True)
    try:
        file.write(data)
        file.fsync()
    finally:
        file.close()
    fs.rename(tmp, join_path(directory, name))
    fs.fsync_dir(directory)
    counters.fsyncs += 1
    counters.directory_fsyncs += 1
    counters.bytes_written += len(data)


def write_state_file(fs: FileSystem, directory: str, state: State, counters: Counters) -> None:
    """Replace the state file atomically."""
    write_atomic(fs, directory, STATE_FILE, STATE_TMP, encode_state(state), counters)


def create_segment(
    fs: FileSystem, directory: str, seq: int, first_index: int, prev_term: int, *, truncate: bool
) -> tuple[Segment, AppendFile]:
    """Create a segment holding its header (and a truncation record at ``first_index`` if
    ``truncate``), durably, under a temporary name renamed into place: a segment file never
    exists without its header. ``prev_term`` is the term of entry ``first_index - 1`` (0 if
    there is none). The name is durable once the caller fsyncs the directory."""
    tmp = join_path(directory, SEGMENT_TMP)
    path = join_path(directory, segment_name(seq, first_index))
    head = frame(encode_header(seq, first_index, prev_term=prev_term))
    if truncate:
        head += frame(encode_truncate(first_index))
    file = fs.open_append(tmp, create=True)
    try:
        file.write(head)
        file.fsync()
        fs.rename(tmp, path)
    except BaseException:
        file.close()
        raise
    segment = Segment(seq, first_index, path, len(head), len(head), first_index, first_index)
    return segment, file


class Wal:
    """The segment files of one data directory, and the state file.

    Args:
        fs: The file system.
        directory: The data directory.
        segment_bytes: Start a new segment rather than grow one past this size (a segment
            holding a single record larger than this is allowed).
        state: The durable content of the state file.
        segments: Every segment, in order; the last one is the active one.
        active: The active segment, open for appending.
        next_index: Index of the next append.
        last_term: Term of entry ``next_index - 1`` (the log start's term if that entry was
            compacted, 0 if there is none).
        counters: Where to count the work done.
        reserve_bytes: Refuse appends that would leave less free space than this.
    """

    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        *,
        segment_bytes: int,
        state: State,
        segments: list[Segment],
        active: AppendFile,
        next_index: int,
        last_term: int,
        counters: Counters,
        reserve_bytes: int = 0,
    ) -> None:
        assert segments, "there is always an active segment"
        self.reserve_bytes = reserve_bytes
        self.fs = fs
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.state = state
        self.segments = segments
        self.next_index = next_index
        self.last_term = last_term
        self.counters = counters
        self._active = active
        self._unsynced = False  # bytes written to the active segment since its last fsync
        self._dir_unsynced = False  # a segment created since the last directory fsync
        self._doomed: list[Segment] = []  # to delete once the next sync made its cause durable

    @property
    def needs_sync(self) -> bool:
        """Whether :meth:`sync` has anything to do."""
        return self._unsynced or self._dir_unsynced or bool(self._doomed)

    # -- the blocking operations ------------------------------------------------------------

    def save(
        self,
        hard_state: HardState | None,
        truncate: tuple[int, int] | None,
        appends: Sequence[tuple[int, bytes]],
        use_reserve: bool = False,
    ) -> None:
        """Write, in this order: a new hard state in the state file (durably, after the WAL
        so far), a truncation (``(index, term of entry index - 1)``) of every entry at
        ``index`` or later (``< next_index``), and one append record per ``(term, payload)``
        (their indexes follow on). Appends are not durable yet.

        Raises:
            StorageFullError: there are payloads, and writing them would leave less than
                ``reserve_bytes`` free (with ``use_reserve``, less than half of it);
                nothing was written.
        """
        if appends:
            floor = self.reserve_bytes // 2 if use_reserve else self.reserve_bytes
            self.check_space(sum(FRAME.size + len(p) for _, p in appends), floor)
        if hard_state is not None:
            self._write_state(attrs.evolve(self.state, hard_state=hard_state))
        if truncate is not None:
            self._truncate(*truncate)
        pending: list[bytes] = []
        pending_bytes = 0
        active = self.segments[-1]
        if appends and active.version != FORMAT_VERSION:  # rule 6
            active = self._rotate(self.next_index, truncate=False)
        for term, payload in appends:
            record = frame(payload)
            size = active.size + pending_bytes
            if size + len(record) > self.segment_bytes and size > active.header_bytes:
                self._write(pending)
                pending, pending_bytes = [], 0
                active = self._rotate(self.next_index, truncate=False)
            pending.append(record)
            pending_bytes += len(record)
            if not active.live:
                active.live_lo = self.next_index
            self.next_index += 1
            self.last_term = term
            active.live_hi = self.next_index
        self._write(pending)

    def check_space(self, needed: int, floor: int | None = None) -> None:
        """Raise :class:`StorageFullError` if writing ``needed`` more bytes would leave less
        than ``floor`` (by default ``reserve_bytes``) free, when the free space can be known."""
        free = self.fs.free_bytes(self.directory)
        if floor is None:
            floor = self.reserve_bytes
        if free is not None and free - needed < floor:
            raise StorageFullError(
                self.directory,
                free_bytes=free,
                reserve_bytes=self.reserve_bytes,
                needed_bytes=needed,
            )

    def space_low(self) -> bool:
        """Whether less than ``reserve_bytes`` is free (false if that cannot be known)."""
        free = self.fs.free_bytes(self.directory)
        return free is not None and free < self.reserve_bytes

    def sync(self) -> None:
        """Make everything written so far durable, then delete segments a durable truncation
        made obsolete."""
        self._flush()
        self.counters.syncs += 1
        doomed, self._doomed = self._doomed, []
        for segment in sorted(doomed, key=lambda s: -s.seq):  # newest first: always a suffix
            self._delete(segment)

    def compact(self, index: int, term: int) -> None:
        """Durably discard every entry at or below ``index`` (``> log_start_index``), whose
        term is ``term``; delete the segments that then hold no live entry."""
        self.sync()
        self._write_state(attrs.evolve(self.state, log_start_index=index, log_start_term=term))
        for segment in self.segments:
            segment.live_lo = min(max(segment.live_lo, index + 1), segment.live_hi)
        if index + 1 >= self.next_index:  # the whole log: continue in a fresh segment
            active = self.segments[-1]
            if not (active.first_index == index + 1 and active.size == active.header_bytes):
                self._rotate(index + 1, truncate=False, prev_term=term)
            self.next_index = index + 1
            self.last_term = term
            self._flush()
        self.drop_dead_prefix()

    def record_newest_segment(self) -> None:
        """Rewrite the state file with the newest segment's sequence number (rule 4)."""
        self._write_state(attrs.evolve(self.state, newest_segment=self.segments[-1].seq))

    def drop_dead_prefix(self) -> None:
        """Delete the oldest segments while they hold no live entry (never the active one)."""
        while len(self.segments) > 1 and not self.segments[0].live:
            self._delete(self.segments[0])

    def close(self) -> None:
        """Close the active segment (nothing is made durable)."""
        self._active.close()

    # -- helpers ----------------------------------------------------------------------------

    def _write(self, records: list[bytes]) -> None:
        if not records:
            return
        data = b"".join(records)
        self._active.write(data)
        self.segments[-1].size += len(data)
        self.counters.bytes_written += len(data)
        self._unsynced = True

    def _flush(self) -> None:
        if self._unsynced:
            self._active.fsync()
            self.counters.fsyncs += 1
            self._unsynced = False
        if self._dir_unsynced:
            self._fsync_dir()

    def _fsync_dir(self) -> None:
        self.fs.fsync_dir(self.directory)
        self.counters.directory_fsyncs += 1
        self._dir_unsynced = False

    def _write_state(self, state: State) -> None:
        self._flush()  # rule 2: the WAL so far goes first
        write_state_file(self.fs, self.directory, state, self.counters)
        self.state = state

    def _truncate(self, index: int, prev_term: int) -> None:
        assert self.state.log_start_index < index < self.next_index
        for segment in self.segments:
            segment.live_hi = min(segment.live_hi, index)
            segment.live_lo = min(segment.live_lo, segment.live_hi)
        if index >= self.segments[-1].first_index:
            self._write([frame(encode_truncate(index))])
        else:  # the truncation reaches into older segments: start a new one at ``index``
            self._rotate(index, truncate=True, prev_term=prev_term)
            # Segments right before the new one that hold nothing live can go, once the
            # truncation record is durable (a suffix: see rule 3).
            for segment in reversed(self.segments[:-1]):
                if segment.live:
                    break
                if segment not in self._doomed:
                    self._doomed.append(segment)
        self.next_index = index
        self.last_term = prev_term

    def _rotate(self, first_index: int, *, truncate: bool, prev_term: int | None = None) -> Segment:
        """Start the next segment at ``first_index``; ``prev_term`` is the term of entry
        ``first_index - 1`` (by default: the last entry's, for a segment that continues the
        log at ``next_index``)."""
        assert prev_term is not None or first_index == self.next_index
        self._flush()  # rule 1
        self._active.close()
        segment, file = create_segment(
            self.fs, self.directory, self.segments[-1].seq + 1, first_index,
            self.last_term if prev_term is None else prev_term, truncate=truncate,
        )  # fmt: skip
        self._active = file
        self.segments.append(segment)
        self._dir_unsynced = True
        self.counters.fsyncs += 1
        self.counters.bytes_written += segment.size
        # Rule 4: the new name is made durable first (by _write_state's flush), then recorded.
        self.record_newest_segment()
        return segment

    def _delete(self, segment: Segment) -> None:
        assert not segment.live and segment is not self.segments[-1]
        self.fs.unlink(segment.path)
        self._fsync_dir()
        self.segments.remove(segment)
