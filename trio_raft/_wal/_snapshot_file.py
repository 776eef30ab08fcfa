"""The snapshot file: written whole under a temporary name, fsynced, renamed into place.

A snapshot file is a sequence of frames (the WAL's framing) whose payload starts with a tag:

* ``b"H"`` + CBOR ``{"v": 2, "index": int, "term": int, "membership": map | None}``: the
  header, first (``membership``: the configuration at ``index`` in its plain form,
  :meth:`Membership.to_plain`; version 1, written by older releases, has no ``membership``
  and is read as ``membership=None``);
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

from .._types import MAX_INDEX, MAX_TERM, Membership, SnapshotMeta
from ._errors import StorageCorruptError
from ._fs import AppendFile, FileSystem, ReadFile
from ._segments import FRAME, Malformed, decode_cbor, frame

SNAPSHOT_FILE = "snapshot"
SNAPSHOT_TMP = "snapshot.tmp"
_HEADER, _CHUNK, _END = b"H", b"C", b"E"
SNAPSHOT_VERSION = 2
"""Version of the snapshot header written by this code (version 1 is read too)."""
_HEADER_KEYS = {1: {"v", "index", "term"}, 2: {"v", "index", "term", "membership"}}


def encode_snapshot_header(meta: SnapshotMeta, version: int = SNAPSHOT_VERSION) -> bytes:
    """The payload of a snapshot's header frame (tag included); ``version`` 1 (for tests that
    build the files of older releases) leaves the membership out."""
    header: dict[str, object] = {"v": version, "index": meta.index, "term": meta.term}
    if version >= 2:
        membership = meta.membership
        header["membership"] = None if membership is None else membership.to_plain()
    return _HEADER + cbor2.dumps(header)


def decode_snapshot_header(body: bytes) -> SnapshotMeta:
    """The metadata in a snapshot header (without its tag).

    Raises:
        Malformed: the header is not one this code writes (version 1 or 2, exactly its
            fields, an index and a term in range, a valid membership or ``None``).
    """
    header = decode_cbor(body)
    if not isinstance(header, dict):
        raise Malformed(f"expected a map, got {type(header).__name__}")
    version = header.get("v")
    keys = _HEADER_KEYS.get(version) if type(version) is int else None
    if keys is None:
        raise Malformed(f"snapshot format version {version!r}; this trio-raft reads 1 and 2")
    if set(header) != keys:
        raise Malformed(f"fields {sorted(map(repr, header))}, expected {sorted(keys)}")
    index, term = header["index"], header["term"]
    if type(index) is not int or not 1 <= index <= MAX_INDEX:
        raise Malformed(f"index {index!r} is not a log index")
    if type(term) is not int or not 1 <= term <= MAX_TERM:
        raise Malformed(f"term {term!r} is not a term")
    plain = header.get("membership")
    try:
        membership = None if plain is None else Membership.from_plain(plain)
    except (ValueError, TypeError) as exc:  # FieldError
        raise Malformed(f"bad membership: {exc}") from exc
    return SnapshotMeta(index, term, membership)


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

    def start(self, header: bytes) -> None:
        """Create the temporary file (replacing a leftover one) and write the header (from
        :func:`encode_snapshot_header`)."""
        if self._fs.exists(self._tmp):
            self._fs.unlink(self._tmp)
        self._file = self._fs.open_append(self._tmp, create=True)
        self._put(header)

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
            self.meta = decode_snapshot_header(body)
        except Malformed as exc:
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
