"""Data directories as a release before membership changes wrote them (segment format 1,
snapshot header 1), made by rewriting the headers of a directory this release wrote.

The two formats differ only in their headers (a version-2 header also holds the previous
entry's term) and in what version 2 may hold, so rewriting the segment headers to version 1
and the snapshot header to ``{"v": 1, "index", "term"}`` gives exactly the bytes an older
release writes for the same calls.
"""

from __future__ import annotations

import cbor2

from trio_raft._types import EntryKind, SnapshotMeta
from trio_raft._wal._segments import (
    FRAME,
    Append,
    Header,
    decode_record,
    encode_header,
    frame,
    parse_segment_name,
)
from trio_raft._wal._simfs import SimulatedFileSystem
from trio_raft._wal._snapshot_file import decode_snapshot_header, encode_snapshot_header


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """``(offset, payload)`` of each frame of a file."""
    out, offset = [], 0
    while offset < len(data):
        length, _ = FRAME.unpack_from(data, offset)
        out.append((offset, data[offset + FRAME.size : offset + FRAME.size + length]))
        offset += FRAME.size + length
    return out


def old_segment(data: bytes) -> bytes:
    """A version-2 segment rewritten as version 1 (it must hold no configuration entry)."""
    (_, first), *rest = frames(data)
    header = decode_record(first)
    assert isinstance(header, Header) and header.version == 2
    for _, payload in rest:
        record = decode_record(payload)
        assert not (isinstance(record, Append) and record.entry.kind is EntryKind.CONFIG)
    old = frame(encode_header(header.seq, header.first_index, prev_term=None, version=1))
    return old + data[FRAME.size + len(first) :]  # a version-1 header lacks the previous term


def old_snapshot(data: bytes) -> bytes:
    """A snapshot file rewritten with a version-1 header (whose membership must be None)."""
    (_, first), *_ = frames(data)
    meta = decode_snapshot_header(first[1:])
    assert meta.membership is None
    old = frame(encode_snapshot_header(SnapshotMeta(meta.index, meta.term), version=1))
    return old + data[FRAME.size + len(first) :]


def make_old(fs: SimulatedFileSystem, directory: str) -> None:
    """Rewrite every segment and the snapshot of ``directory`` in the old formats."""
    for path, data in fs.files().items():
        name = path.rsplit("/", 1)[1]
        if not path.startswith(directory + "/"):
            continue
        if parse_segment_name(name) is not None:
            fs.put_file(path, old_segment(data))
        elif name == "snapshot":
            fs.put_file(path, old_snapshot(data))


def header_version(data: bytes) -> int:
    """The format version in a segment's header."""
    header = decode_record(frames(data)[0][1])
    assert isinstance(header, Header)
    return header.version


def old_snapshot_header(index: int, term: int) -> bytes:
    """The header payload (tag included) an older release writes."""
    return b"H" + cbor2.dumps({"v": 1, "index": index, "term": term})
