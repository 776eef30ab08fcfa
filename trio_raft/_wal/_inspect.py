"""``trio-raft inspect``: what a data directory holds, read without changing anything.

:func:`inspect_directory` runs the checks of opening a directory (``_recovery``) with the same
readers (the identity and state files, :func:`scan_segment` and the replay, the snapshot
file's reader), but never writes, never deletes, never takes the directory's lock: what opening
would repair (a torn tail, leftover temporary files, segments left behind by a compaction) or
refuse is *reported*. Reading a directory a node is writing is therefore possible: the end of
the newest segment may then be an append in progress (reported as a torn tail), and a segment
deleted by a compaction between the listing and the read makes the inspection start over.
"""

from __future__ import annotations

import os

import attrs

from .._types import HardState, Membership
from ._errors import StorageCorruptError
from ._fs import FileSystem, OsFileSystem
from ._identity import IDENTITY_FILE, IDENTITY_TMP, Identity, read_identity
from ._recovery import _check_snapshot, _list_segments, _read_all, _replay
from ._segments import (
    SEGMENT_TMP,
    STATE_FILE,
    STATE_TMP,
    Append,
    ScannedSegment,
    State,
    decode_state,
    scan_segment,
)
from ._snapshot_file import SNAPSHOT_FILE, SNAPSHOT_TMP, verify_snapshot
from ._wal import join_path

ATTEMPTS = 3
"""A directory that changes under the inspection (a compaction deleted a segment) is read
again, at most this many times in all."""


@attrs.frozen
class SegmentReport:
    """One segment file."""

    name: str
    seq: int
    first_index: int
    """The index its name and header give (the next append's when it was started)."""
    entries: tuple[int, int] | None
    """The first and last index of the entries its records append (``None``: none)."""
    live: tuple[int, int] | None
    """The first and last index of its entries the log still holds (``None``: none)."""
    size_bytes: int
    format: int


@attrs.frozen
class SnapshotReport:
    """The snapshot file."""

    index: int
    term: int
    size_bytes: int
    membership: Membership | None


@attrs.frozen
class DirectoryReport:
    """What :func:`inspect_directory` found."""

    path: str
    identity: Identity | None
    hard_state: HardState | None
    log_start: tuple[int, int] | None
    """``(index, term)`` of the last compacted entry, from the state file."""
    last_index: int | None
    """The last entry's index once replayed (``None`` if the replay is refused)."""
    snapshot: SnapshotReport | None
    segments: tuple[SegmentReport, ...]
    repairs: tuple[str, ...]
    """What opening the directory would repair."""
    problems: tuple[str, ...]
    """Why opening it would be refused (empty: it would open)."""

    def as_json(self) -> dict[str, object]:
        """The report as plain JSON values (``trio-raft inspect --json``)."""
        identity = self.identity
        hard = self.hard_state
        snap = self.snapshot
        return {
            "path": self.path,
            "identity": None if identity is None else attrs.asdict(identity),
            "hard_state": None
            if hard is None
            else {"term": hard.term, "voted_for": hard.voted_for},
            "log": {
                "start_index": None if self.log_start is None else self.log_start[0],
                "start_term": None if self.log_start is None else self.log_start[1],
                "last_index": self.last_index,
            },
            "snapshot": None
            if snap is None
            else {
                "index": snap.index,
                "term": snap.term,
                "bytes": snap.size_bytes,
                "voters": None if snap.membership is None else sorted(snap.membership.voters),
                "learners": None if snap.membership is None else sorted(snap.membership.learners),
            },
            "segments": [
                {
                    "file": s.name,
                    "seq": s.seq,
                    "first_index": s.first_index,
                    "entries": None if s.entries is None else list(s.entries),
                    "live": None if s.live is None else list(s.live),
                    "bytes": s.size_bytes,
                    "format": s.format,
                }
                for s in self.segments
            ],
            "repairs": list(self.repairs),
            "problems": list(self.problems),
        }


def inspect_directory(
    path: str, *, max_record_bytes: int, fs: FileSystem | None = None
) -> DirectoryReport:
    """Read the data directory ``path`` without writing to it or locking it.

    Raises:
        NotADirectoryError, FileNotFoundError: ``path`` is not a directory.
        OSError: it cannot be read.
    """
    fs = fs or OsFileSystem()
    if not os.path.isdir(path):
        raise NotADirectoryError(f"{path} is not a directory")
    for attempt in range(ATTEMPTS):
        try:
            return _inspect(fs, path, max_record_bytes)
        except FileNotFoundError:  # a file went away under us (a compaction): read again
            if attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _size(path: str) -> int:
    return os.stat(path).st_size


def _entries(seg: ScannedSegment) -> tuple[int, int] | None:
    indexes = [r.entry.index for _, r in seg.records if isinstance(r, Append)]
    return (indexes[0], indexes[-1]) if indexes else None


def _inspect(fs: FileSystem, directory: str, max_record_bytes: int) -> DirectoryReport:
    repairs: list[str] = []
    problems: list[str] = []
    identity = None
    try:
        identity = read_identity(fs, join_path(directory, IDENTITY_FILE))
    except StorageCorruptError as exc:
        problems.append(str(exc))
    for tmp in (STATE_TMP, SEGMENT_TMP, SNAPSHOT_TMP, IDENTITY_TMP):
        if fs.exists(join_path(directory, tmp)):
            repairs.append(f"delete {tmp}, a temporary file a crash (or a write now) left")
    state: State | None = None
    state_path = join_path(directory, STATE_FILE)
    if fs.exists(state_path):
        try:
            state = decode_state(_read_all(fs, state_path, 1 << 16), state_path)
        except StorageCorruptError as exc:
            problems.append(str(exc))
    snapshot = None
    snapshot_path = join_path(directory, SNAPSHOT_FILE)
    try:
        meta = verify_snapshot(fs, snapshot_path, max_record_bytes)
        if meta is not None:
            snapshot = SnapshotReport(meta.index, meta.term, _size(snapshot_path), meta.membership)
    except StorageCorruptError as exc:
        problems.append(str(exc))
    try:
        listed = _list_segments(fs, directory)
    except StorageCorruptError as exc:
        problems.append(str(exc))
        listed = []
    scanned: list[ScannedSegment] = []
    for i, (seq, first, seg_path) in enumerate(listed):
        try:
            seg = scan_segment(
                fs,
                seg_path,
                seq,
                first,
                max_record_bytes=max_record_bytes,
                last=i == len(listed) - 1,
            )
        except StorageCorruptError as exc:
            problems.append(str(exc))
            continue
        scanned.append(seg)
        if seg.torn is not None:
            cut = _size(seg_path) - seg.valid_bytes
            repairs.append(
                f"cut {cut} bytes off the end of {os.path.basename(seg_path)} at byte "
                f"{seg.valid_bytes}: {seg.torn} (a crash in an append, or an append in progress)"
            )
    live: dict[int, tuple[int, int] | None] = {}
    last_index = None
    if state is None and not problems:
        if [(s.seq, s.first_index) for s in scanned] not in ([], [(1, 1)]) or any(
            len(s.records) > 1 for s in scanned
        ):
            problems.append(
                f"{state_path}: the state file (term and vote) is missing, but the log is not"
            )
        elif snapshot is not None:
            problems.append(f"{state_path}: the state file is missing, but a snapshot is there")
        else:
            repairs.append("start a new log (the directory holds no state yet)")
    elif state is not None and not problems:
        try:
            _check_snapshot(fs, directory, state, max_record_bytes)
            if not scanned:
                raise StorageCorruptError(
                    directory, None, "the state file exists but no WAL segment"
                )
            if scanned[-1].seq < state.newest_segment:
                raise StorageCorruptError(
                    directory, None, f"the newest WAL segment is missing: the state file records "
                    f"segment {state.newest_segment}, the newest here is {scanned[-1].seq}",
                )  # fmt: skip
            _entries_kept, segments, next_index = _replay(scanned, state)
        except StorageCorruptError as exc:
            problems.append(str(exc))
        else:
            last_index = max(next_index - 1, state.log_start_index)
            for segment in segments:
                live[segment.seq] = (segment.live_lo, segment.live_hi - 1) if segment.live else None
            if state.newest_segment != scanned[-1].seq:
                repairs.append(f"record segment {scanned[-1].seq} as the newest in the state file")
            dead = []
            for segment in segments[:-1]:
                if segment.live:
                    break
                dead.append(os.path.basename(segment.path))
            if dead:
                repairs.append(f"delete {', '.join(dead)}: no live entry left (compacted)")
    reports = tuple(
        SegmentReport(
            os.path.basename(s.path),
            s.seq,
            s.first_index,
            _entries(s),
            live.get(s.seq),
            _size(s.path),
            s.version,
        )
        for s in scanned
    )
    return DirectoryReport(
        path=directory,
        identity=identity,
        hard_state=None if state is None else state.hard_state,
        log_start=None if state is None else (state.log_start_index, state.log_start_term),
        last_index=last_index,
        snapshot=snapshot,
        segments=reports,
        repairs=tuple(repairs),
        problems=tuple(problems),
    )
