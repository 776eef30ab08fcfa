"""The on-disk format: frames, WAL records, segment names, the state file; scanning a segment.

Every record, in a segment or in the state file, is one *frame*::

    [u32 length, little-endian][u32 zlib.crc32(payload), little-endian][payload: length bytes]

with ``1 <= length <= max_record_bytes``. A WAL payload is a CBOR array whose first item says
what it is (the array length is fixed per kind, so the first two bytes of a payload are one of
four markers, which :func:`scan_segment` uses to recognise frame starts):

* ``[2, 2, seq, first_index, prev_term]``: the header, first record of every segment
  (``prev_term``: the term of the entry at ``first_index - 1`` when the segment was started,
  0 if there is none; a version-1 header is ``[2, 1, seq, first_index]``);
* ``[0, index, term, kind, command]``: append an entry;
* ``[1, index]``: truncate: drop every entry at ``index`` or later.

Segments are written in format ``FORMAT_VERSION`` (2) and read in formats 1 and 2. They differ in
two things: a version-2 header carries ``prev_term`` (so recovery can check that a segment
continues the log it was started after), and only a version-2 segment may hold entries of kind
2 (:attr:`EntryKind.CONFIG`), whose command is stored as the membership's plain form
(:meth:`Membership.to_plain`). The WAL
never appends to a version-1 segment (it starts a new segment first), so an older release,
which reads only version 1, refuses a directory this one wrote to with a message naming the
version rather than with "unknown entry kind".

The state file holds one frame whose payload is the CBOR map
``{"v": 2, "term": int, "vote": str | None, "start_index": int, "start_term": int,
"newest_segment": int}`` (version 1, written by older releases, lacks ``newest_segment``).
"""

from __future__ import annotations

import io
import re
import struct
import zlib

import attrs
import cbor2

from .._codec import FrameError, cbor_uint, command_bytes
from .._types import MAX_TERM, Entry, EntryKind, HardState, Membership
from ._errors import StorageCorruptError
from ._fs import FileSystem, ReadFile

FRAME = struct.Struct("<II")
"""A frame header: payload length, then the payload's crc32."""
FORMAT_VERSION = 2
"""Version of the segment format written by this code (version 1 is read too)."""
READ_VERSIONS = (1, 2)
"""The segment format versions this code reads."""
_CONFIG_SINCE = 2  # the first segment version that may hold CONFIG entries
STATE_VERSION = 2
"""Version of the state-file format written by this code (version 1 is read too)."""
STATE_FILE = "state"
STATE_TMP = "state.tmp"
SEGMENT_TMP = "segment.tmp"
LOCK_FILE = "LOCK"
_SEGMENT_NAME = re.compile(r"wal-(\d{10})-(\d{20})\.log")
_APPEND, _TRUNCATE, _HEADER = 0, 1, 2
_MARKERS = (b"\x85\x00", b"\x82\x01", b"\x85\x02", b"\x84\x02")  # array(n) + record type
_CHUNK_BYTES = 1 << 20


def segment_name(seq: int, first_index: int) -> str:
    """File name of segment number ``seq`` whose first entry (if any) has ``first_index``."""
    return f"wal-{seq:010d}-{first_index:020d}.log"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    """``(seq, first_index)`` of a segment file name, or ``None`` if it is not one."""
    match = _SEGMENT_NAME.fullmatch(name)
    if match is None:
        return None
    return int(match[1]), int(match[2])


def frame(payload: bytes) -> bytes:
    """Frame ``payload`` (length, crc32, payload)."""
    assert 1 <= len(payload) < 1 << 32
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


# -- WAL records ---------------------------------------------------------------------------------


@attrs.frozen
class Header:
    """First record of every segment; must agree with the file name."""

    seq: int
    first_index: int
    version: int = FORMAT_VERSION
    """The segment's format version (one of :data:`READ_VERSIONS`)."""
    prev_term: int | None = 0
    """Term of the entry at ``first_index - 1`` when the segment was started (0: none, the
    log was empty); ``None`` in a version-1 header, which does not carry it."""


@attrs.frozen
class Append:
    """Append ``entry`` (whose index must be the next one)."""

    entry: Entry


@attrs.frozen
class Truncate:
    """Drop every entry at ``index`` or later."""

    index: int


Record = Header | Append | Truncate


def encode_header(
    seq: int, first_index: int, *, prev_term: int | None, version: int = FORMAT_VERSION
) -> bytes:
    """The payload of a segment header; ``prev_term`` is the term of the entry at
    ``first_index - 1`` (0 if there is none), ``None`` for version 1 (``version`` other than the
    current one: for tests that build the directories of older releases)."""
    assert version in READ_VERSIONS and (prev_term is None) == (version == 1)
    if prev_term is None:
        return cbor2.dumps([_HEADER, version, seq, first_index])
    return cbor2.dumps([_HEADER, version, seq, first_index, prev_term])


def encode_truncate(index: int) -> bytes:
    """The payload of a truncation record."""
    return cbor2.dumps([_TRUNCATE, index])


def encode_append(entry: Entry) -> bytes:
    """The payload of an append record (a :attr:`EntryKind.CONFIG` entry's membership in its
    plain form), built around the command's cached encoding (see
    :func:`~trio_raft._codec.command_bytes`): the same bytes as encoding the whole array, since
    CBOR is concatenative, without encoding the command again.

    Raises:
        TypeError: the command is not CBOR-encodable.
    """
    try:
        data = command_bytes(entry)
    except FrameError:  # outside the wire's data model: store it if CBOR can (as always)
        return _encode_append_slowly(entry)
    return b"".join(
        (_APPEND_HEAD, cbor_uint(entry.index), cbor_uint(entry.term), _KIND[entry.kind], data)
    )


_APPEND_HEAD = b"\x85\x00"  # array(5), record type 0
_KIND = {kind: cbor_uint(int(kind)) for kind in EntryKind}


def _encode_append_slowly(entry: Entry) -> bytes:
    command = entry.command
    if isinstance(command, Membership):  # exactly when the kind is CONFIG (an Entry invariant)
        command = command.to_plain()
    try:
        return cbor2.dumps([_APPEND, entry.index, entry.term, int(entry.kind), command])
    except (cbor2.CBOREncodeError, ValueError, TypeError, RecursionError) as exc:
        raise TypeError(
            f"entry {entry.index}: the command cannot be stored, it is not CBOR-encodable "
            f"({exc}); commands must be CBOR values (None, bool, int, float, str, bytes, lists, "
            "dicts, ...)"
        ) from exc


class Malformed(Exception):
    """A payload whose checksum is fine but whose content is not a valid record."""


class UnknownVersion(Malformed):
    """A header naming a format version this code does not read (a newer release wrote it)."""


def decode_cbor(payload: bytes) -> object:
    buffer = io.BytesIO(payload)
    try:
        value: object = cbor2.CBORDecoder(buffer, allow_duplicate_keys=False).decode()
    except Exception as exc:  # the gateway: whatever the decoder raises means "not a record"
        raise Malformed(f"not valid CBOR ({type(exc).__name__}: {exc})") from exc
    if buffer.tell() != len(payload):
        raise Malformed(f"{len(payload) - buffer.tell()} stray bytes after the CBOR value")
    return value


def _ints(values: list[object], count: int) -> list[int]:
    out = [v for v in values[:count] if type(v) is int and v >= 0]
    if len(out) != count:
        raise Malformed(f"expected {count} non-negative integers, got {values[:count]!r}")
    return out


def decode_record(payload: bytes, version: int = FORMAT_VERSION) -> Record:
    """Decode a WAL payload found in a segment of format ``version`` (that of the segment's
    header; a header itself is read whatever ``version`` is).

    Raises:
        UnknownVersion: a header names a version this code does not read.
        Malformed: it is not a valid record (a configuration entry in a version-1 segment
            is not).
    """
    value = decode_cbor(payload)
    if not isinstance(value, list) or not value or type(value[0]) is not int:
        raise Malformed(f"expected an array starting with a record type, got {type(value)}")
    kind, rest = value[0], value[1:]
    try:
        if kind == _APPEND and len(rest) == 4:
            index, term, entry_kind = _ints(rest, 3)
            if term > MAX_TERM:
                raise Malformed(f"entry {index} has term {term}, above the largest {MAX_TERM}")
            command = rest[3]
            if entry_kind == EntryKind.CONFIG:
                if version < _CONFIG_SINCE:
                    raise Malformed(
                        f"entry {index} is a configuration entry (kind 2), which a version-"
                        f"{version} segment cannot hold"
                    )
                command = Membership.from_plain(command)
            return Append(Entry(term, index, command, EntryKind(entry_kind)))
        if kind == _TRUNCATE and len(rest) == 1:
            (index,) = _ints(rest, 1)
            if index < 1:
                raise Malformed("truncation index 0")
            return Truncate(index)
        if kind == _HEADER and rest and type(rest[0]) is int:
            return _decode_header(rest)
    except (ValueError, TypeError) as exc:  # Entry / EntryKind / Membership validators
        raise Malformed(str(exc)) from exc
    raise Malformed(f"unknown record type {kind} with {len(rest)} fields")


def _decode_header(rest: list[object]) -> Header:
    """A header's fields after the record type: ``[version, seq, first_index]`` in version 1,
    ``[version, seq, first_index, prev_term]`` in version 2 (the version is read first, so a
    newer release's header, whatever its shape, is reported as such)."""
    version = rest[0]
    assert type(version) is int
    if version > max(READ_VERSIONS):
        raise UnknownVersion(
            f"segment format version {version}; this trio-raft reads "
            f"{' and '.join(map(str, READ_VERSIONS))} (a newer release wrote it: run "
            "that release, or start this node with an empty directory so it rejoins)"
        )
    if version not in READ_VERSIONS:
        raise Malformed(f"segment format version {version} does not exist")
    fields = 3 if version == 1 else 4
    if len(rest) != fields:
        raise Malformed(f"a version-{version} segment header with {len(rest)} fields, not {fields}")
    if version == 1:
        _, seq, first_index = _ints(rest, 3)
        return Header(seq, first_index, version, prev_term=None)
    _, seq, first_index, prev_term = _ints(rest, 4)
    if prev_term > MAX_TERM:
        raise Malformed(f"previous term {prev_term} is above the largest term {MAX_TERM}")
    if first_index < 1 or (first_index == 1) != (prev_term == 0):
        raise Malformed(
            f"a segment starting at index {first_index} after an entry of term {prev_term} "
            "(only a segment starting at index 1 has no entry before it, of term 0)"
        )
    return Header(seq, first_index, version, prev_term)


# -- the state file ------------------------------------------------------------------------------


@attrs.frozen
class State:
    """Content of the state file: the hard state, where the log starts, and the newest
    segment ever created (on open the directory must hold it or a later one)."""

    hard_state: HardState = attrs.field(factory=HardState)
    log_start_index: int = 0
    log_start_term: int = 0
    newest_segment: int = 0
    """Sequence number of the newest segment when the file was written (0: not recorded,
    a version 1 file). Segments are only ever deleted below a newer one, so a directory whose
    newest segment is older than this has lost the tail of its log."""


_STATE_KEYS_V1 = {"v", "term", "vote", "start_index", "start_term"}
_STATE_KEYS_V2 = _STATE_KEYS_V1 | {"newest_segment"}


def encode_state(state: State) -> bytes:
    """The whole state file (one frame)."""
    hs = state.hard_state
    return frame(
        cbor2.dumps(
            {
                "v": STATE_VERSION,
                "term": hs.term,
                "vote": hs.voted_for,
                "start_index": state.log_start_index,
                "start_term": state.log_start_term,
                "newest_segment": state.newest_segment,
            }
        )
    )


def unframe_single(data: bytes, path: str, what: str) -> bytes:
    """The payload of a file that holds exactly one frame (the state and identity files).

    Raises:
        StorageCorruptError: the file is truncated, longer, or fails its checksum.
    """
    if len(data) < FRAME.size:
        raise StorageCorruptError(path, 0, f"{what} is {len(data)} bytes, shorter than a frame")
    length, crc = FRAME.unpack_from(data)
    payload = data[FRAME.size :]
    if length != len(payload):
        raise StorageCorruptError(
            path, 0, f"{what} frame says {length} bytes but {len(payload)} follow"
        )
    if zlib.crc32(payload) != crc:
        raise StorageCorruptError(path, 0, f"{what} checksum mismatch")
    return payload


def decode_state(data: bytes, path: str) -> State:
    """Parse and validate a state file.

    Raises:
        StorageCorruptError: it is truncated, fails its checksum, does not parse, or holds
            values no storage writes (a term above ``MAX_TERM``, a vote that is not a node id,
            a log start index without a term or the other way round).
    """
    payload = unframe_single(data, path, "state file")
    try:
        value = decode_cbor(payload)
        if not isinstance(value, dict):
            raise Malformed(f"expected a map, got {type(value).__name__}")
        version = value.get("v")
        keys = {1: _STATE_KEYS_V1, 2: _STATE_KEYS_V2}.get(version) if type(version) is int else None
        if keys is None:
            raise Malformed(f"format version {version!r}; this trio-raft reads 1 and 2")
        if set(value) != keys:
            raise Malformed(f"fields {sorted(map(repr, value))}, expected {sorted(keys)}")
        term, start_index, start_term, newest = _ints(
            [value["term"], value["start_index"], value["start_term"],
             value.get("newest_segment", 0)], 4,
        )  # fmt: skip
        for name, t in (("term", term), ("start_term", start_term)):
            if t > MAX_TERM:
                raise Malformed(f"{name} {t} is above the largest term {MAX_TERM}")
        if (start_index == 0) != (start_term == 0):
            raise Malformed(
                f"the log starts after index {start_index} in term {start_term}: one is 0 and "
                "the other is not"
            )
        vote = value["vote"]
        if vote is not None and (type(vote) is not str or not vote):
            raise Malformed(f"vote {vote!r} is not a node id")
    except Malformed as exc:
        raise StorageCorruptError(path, FRAME.size, f"state file does not parse: {exc}") from exc
    return State(HardState(term, vote), start_index, start_term, newest)


# -- scanning a segment --------------------------------------------------------------------------


@attrs.define
class ScannedSegment:
    """The valid records of one segment file and what follows them."""

    path: str
    seq: int
    first_index: int
    records: list[tuple[int, Record]]
    """``(byte offset, record)`` of each valid record, in file order."""
    valid_bytes: int
    """Offset just past the last valid record."""
    torn: str | None = None
    """Why the bytes after ``valid_bytes`` are a torn tail (to be cut off), if there are any."""
    version: int = FORMAT_VERSION
    """The format version its header names (until the header is read: the current one)."""


def _rest_is_zero(file: ReadFile) -> bool:
    while chunk := file.read(_CHUNK_BYTES):
        if chunk.count(0) != len(chunk):
            return False
    return True


def _frame_within(buf: bytes, start: int, max_record_bytes: int) -> int | None:
    """Offset (>= ``start``) of a complete, valid frame inside ``buf``, if there is one."""
    for marker in _MARKERS:
        pos = buf.find(marker, start + FRAME.size)
        while pos != -1:
            at = pos - FRAME.size
            length, crc = FRAME.unpack_from(buf, at)
            payload = buf[pos : pos + length]
            if (
                1 <= length <= max_record_bytes
                and len(payload) == length
                and zlib.crc32(payload) == crc
            ):
                try:
                    decode_record(payload)
                except Malformed:
                    pass
                else:
                    return at
            pos = buf.find(marker, pos + 1)
    return None


def scan_segment(
    fs: FileSystem, path: str, seq: int, first_index: int, *, max_record_bytes: int, last: bool
) -> ScannedSegment:
    """Read and verify every frame of a segment.

    A damaged frame is a *torn tail* (reported in ``torn``, to be cut off) only in the ``last``
    segment and only if a crash in the middle of an append explains it: a partial frame
    header; a frame running past the end of the file with no valid frame inside what follows;
    a checksum mismatch in the final frame (nothing but zeros after it); or zeros to the end.

    Raises:
        StorageCorruptError: any other damage, or a torn tail in a segment that is not last.
    """
    scanned = ScannedSegment(path, seq, first_index, [], 0)
    file = fs.open_read(path)
    try:
        offset = 0
        while header := file.read(FRAME.size):
            if len(header) < FRAME.size:
                return _torn(scanned, offset, last, "a partial frame header at the end")
            length, crc = FRAME.unpack(header)
            if not 1 <= length <= max_record_bytes:
                if header.count(0) == len(header) and _rest_is_zero(file):
                    return _torn(scanned, offset, last, "zeros to the end of the file")
                raise StorageCorruptError(
                    path, offset, f"frame length {length} is outside 1..{max_record_bytes}"
                )
            payload = file.read(length)
            if len(payload) < length:
                found = _frame_within(header + payload, 1, max_record_bytes)
                if found is not None:
                    raise StorageCorruptError(
                        path,
                        offset,
                        f"frame of {length} bytes runs past the end of the file, but a valid "
                        f"frame starts inside it at offset {offset + found} (a damaged length)",
                    )
                return _torn(scanned, offset, last, "a frame cut short by the end of the file")
            if zlib.crc32(payload) != crc:
                if _rest_is_zero(file):
                    return _torn(scanned, offset, last, "a checksum mismatch in the final frame")
                raise StorageCorruptError(
                    path, offset, "checksum mismatch in a frame that is followed by more data"
                )
            try:
                record = decode_record(payload, scanned.version)
            except UnknownVersion as exc:
                raise StorageCorruptError(path, offset, str(exc)) from exc
            except Malformed as exc:
                raise StorageCorruptError(
                    path, offset, f"a frame with a valid checksum holds no valid record: {exc}"
                ) from exc
            if isinstance(record, Header) and not scanned.records:
                scanned.version = record.version
            scanned.records.append((offset, record))
            offset += FRAME.size + length
            scanned.valid_bytes = offset
    finally:
        file.close()
    return scanned


def _torn(scanned: ScannedSegment, offset: int, last: bool, why: str) -> ScannedSegment:
    if not last:
        raise StorageCorruptError(
            scanned.path, offset, f"{why}, in a segment that is not the last one"
        )
    scanned.torn = why
    return scanned
