"""The snapshot file: written whole under a temporary name, fsynced, renamed into place.

A snapshot file is a sequence of frames (the WAL's framing) whose payload starts with a tag:

* ``b"H"`` + CBOR ``{"v": 1, "index": int, "term": int}``: the header, first;
* ``b"C"`` + bytes: one chunk of the state machine's serialization (at most
  ``max_record_bytes`` per frame; the writer splits larger chunks);
* ``b"E"`` + CBOR ``{"chunks": int, "bytes": int}``: the trailer, last.

Because the file appears under its name only once complete and fsynced, a crash leaves the
previous snapshot or the new one, never a torn one: any damage is corruption.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import cbor2

from .._types import MAX_TERM, SnapshotMeta
from ._errors import StorageCorruptError
from ._fs import AppendFile, FileSystem, ReadFile
from ._segments import FORMAT_VERSION, FRAME, Malformed, decode_cbor, frame

SNAPSHOT_FILE = "snapshot"
SNAPSHOT_TMP = "snapshot.tmp"
_HEADER, _CHUNK, _END = b"H", b"C", b"E"


class SnapshotWriter:
    """Writes one snapshot to the temporary file; :meth:`commit` puts it in place durably."""

    def __init__(
        self, fs: FileSystem, tmp: str, path: str, directory: str, max_record_bytes: int
    ) -> None:
        self._fs = fs
        self._tmp = tmp
        self._path = path
        self._directory = directory
        self._max_chunk = max_record_bytes - 1
        self._file: AppendFile | None = None
        self._chunks = 0
        self._bytes = 0
        self.bytes_written = 0
        self.renamed = False
        """Whether :meth:`commit` got as far as renaming the file into place."""

    def start(self, meta: SnapshotMeta) -> None:
        """Create the temporary file (replacing a leftover one) and write the header."""
        if self._fs.exists(self._tmp):
            self._fs.unlink(self._tmp)
        self._file = self._fs.open_append(self._tmp, create=True)
        header = {"v": FORMAT_VERSION, "index": meta.index, "term": meta.term}
        self._put(_HEADER + cbor2.dumps(header))

    def write(self, chunks: Sequence[bytes]) -> None:
        """Append chunks (not durable yet)."""
        for chunk in chunks:
            for at in range(0, len(chunk), self._max_chunk):
                part = chunk[at : at + self._max_chunk]
                self._put(_CHUNK + part)
                self._chunks += 1
                self._bytes += len(part)

    def commit(self) -> None:
        """Write the trailer, fsync, rename over the current snapshot, fsync the directory."""
        assert self._file is not None
        self._put(_END + cbor2.dumps({"chunks": self._chunks, "bytes": self._bytes}))
        self._file.fsync()
        self._file.close()
        self._file = None
        self._fs.rename(self._tmp, self._path)
        self.renamed = True
        self._fs.fsync_dir(self._directory)

    def abort(self) -> None:
        """Throw the temporary file away (best effort); the current snapshot stays."""
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            if self._fs.exists(self._tmp):
                self._fs.unlink(self._tmp)
        except OSError:
            pass  # a leftover temporary file is removed on the next open

    def _put(self, payload: bytes) -> None:
        assert self._file is not None
        data = frame(payload)
        self._file.write(data)
        self.bytes_written += len(data)


class SnapshotReader:
    """Reads and verifies a snapshot file frame by frame."""

    def __init__(self, fs: FileSystem, path: str, max_record_bytes: int) -> None:
        self._path = path
        self._max = max_record_bytes
        self._file: ReadFile | None = fs.open_read(path)
        self._offset = 0
        self._chunks = 0
        self._bytes = 0
        tag, body = self._frame()
        if tag != _HEADER:
            raise self._corrupt(0, "the snapshot does not start with its header")
        try:
            header = decode_cbor(body)
            if not isinstance(header, dict) or header.get("v") != FORMAT_VERSION:
                raise Malformed(f"unexpected header {header!r}")
            if type(header["term"]) is not int or header["term"] > MAX_TERM:
                raise Malformed(f"term {header['term']!r} is not a term")
            self.meta = SnapshotMeta(header["index"], header["term"])
        except (Malformed, KeyError, TypeError, ValueError) as exc:
            raise self._corrupt(0, f"bad snapshot header: {exc}") from exc

    def next_chunk(self) -> bytes | None:
        """The next chunk, or ``None`` after the (verified) trailer."""
        at = self._offset
        tag, body = self._frame()
        if tag == _CHUNK:
            self._chunks += 1
            self._bytes += len(body)
            return body
        if tag != _END:
            raise self._corrupt(at, f"unexpected frame tag {tag!r}")
        try:
            trailer = decode_cbor(body)
        except Malformed as exc:
            raise self._corrupt(at, f"bad trailer: {exc}") from exc
        if trailer != {"chunks": self._chunks, "bytes": self._bytes}:
            raise self._corrupt(at, f"trailer {trailer!r} does not match the chunks read")
        assert self._file is not None
        if self._file.read(1):
            raise self._corrupt(self._offset, "data after the trailer")
        self.close()
        return None

    def close(self) -> None:
        """Release the file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _frame(self) -> tuple[bytes, bytes]:
        assert self._file is not None, "read past the end of the snapshot"
        at = self._offset
        header = self._file.read(FRAME.size)
        if len(header) < FRAME.size:
            raise self._corrupt(at, "the snapshot ends before its trailer")
        length, crc = FRAME.unpack(header)
        if not 1 <= length <= self._max:
            raise self._corrupt(at, f"frame length {length} is outside 1..{self._max}")
        payload = self._file.read(length)
        if len(payload) < length:
            raise self._corrupt(at, "the snapshot ends inside a frame")
        if zlib.crc32(payload) != crc:
            raise self._corrupt(at, "checksum mismatch")
        self._offset += FRAME.size + length
        return payload[:1], payload[1:]

    def _corrupt(self, offset: int, reason: str) -> StorageCorruptError:
        self.close()
        return StorageCorruptError(self._path, offset, reason)


def verify_snapshot(fs: FileSystem, path: str, max_record_bytes: int) -> SnapshotMeta | None:
    """Read the whole snapshot file once, checking every frame; its metadata, or ``None`` if
    there is no snapshot.

    Raises:
        StorageCorruptError: the file is damaged.
    """
    if not fs.exists(path):
        return None
    reader = SnapshotReader(fs, path, max_record_bytes)
    while reader.next_chunk() is not None:
        pass
    return reader.meta


def read_snapshot_meta(fs: FileSystem, path: str, max_record_bytes: int) -> SnapshotMeta | None:
    """The snapshot's metadata from its header alone (the rest is verified when it is
    loaded), or ``None`` if there is no snapshot.

    Raises:
        StorageCorruptError: the header is damaged.
    """
    if not fs.exists(path):
        return None
    reader = SnapshotReader(fs, path, max_record_bytes)
    reader.close()
    return reader.meta
