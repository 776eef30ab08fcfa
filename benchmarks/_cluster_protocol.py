"""The cluster benchmark's client protocol: one small binary protocol for every system measured.

Each frame is a 4-byte big-endian body length, then the body. A request's body is
``!IBH`` (request id, op, key length), the key, then the value (the rest of the body); a reply's
body is ``!IB`` (request id, status), then a payload: the value read, the leader's id (a
redirect), an error message, or (for ``STATUS``) a JSON object. Requests on one connection may
be pipelined: replies carry the request id and may come back in any order.

The codec is sans-IO (:class:`FrameBuffer` takes bytes, returns bodies), so the trio servers,
the asyncio server of the PySyncObj node and the load generator share it. Malformed input raises
:exc:`ProtocolError` at once (a length over :data:`MAX_FRAME_BYTES`, a body too short for its
header, an unknown op or status); a frame cut off by the end of the stream is reported by
:meth:`FrameBuffer.check_eof`.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

import attrs

LENGTH: Final = struct.Struct("!I")
REQUEST_HEAD: Final = struct.Struct("!IBH")
REPLY_HEAD: Final = struct.Struct("!IB")
MAX_FRAME_BYTES: Final = (1 << 20) + 1024
"""The largest body either side accepts: a 1 MiB value plus its key and header."""


class ProtocolError(Exception):
    """A peer sent bytes that are not a valid frame: close the connection."""


class Op(enum.IntEnum):
    """What a request asks for."""

    WRITE = 1
    """Replicate ``key = value``; the reply comes once it is committed (empty payload)."""
    READ = 2
    """Read ``key`` (linearizable where the system offers it); the payload is the value."""
    STATUS = 3
    """The node's role, leader, commit and applied indexes (a JSON payload)."""


class Status(enum.IntEnum):
    """How a request ended."""

    OK = 0
    REDIRECT = 1
    """Not the leader: the payload is the leader's id (empty if it knows none)."""
    ERROR = 2
    """Failed: the payload is a UTF-8 message."""


@attrs.frozen
class Request:
    """A decoded request."""

    id: int
    op: Op
    key: bytes
    value: bytes


@attrs.frozen
class Reply:
    """A decoded reply."""

    id: int
    status: Status
    payload: bytes


_OPS: Final = {int(op): op for op in Op}
_STATUSES: Final = {int(status): status for status in Status}


def encode_request(request_id: int, op: Op, key: bytes = b"", value: bytes = b"") -> bytes:
    """One request frame, length prefix included.

    Raises:
        ProtocolError: the key is longer than 65,535 bytes or the frame would be too large.
    """
    if len(key) > 0xFFFF:
        raise ProtocolError(f"a key is at most 65535 bytes, got {len(key)}")
    size = REQUEST_HEAD.size + len(key) + len(value)
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"a frame body is at most {MAX_FRAME_BYTES} bytes, got {size}")
    return b"".join((LENGTH.pack(size), REQUEST_HEAD.pack(request_id, op, len(key)), key, value))


def encode_reply(request_id: int, status: Status, payload: bytes = b"") -> bytes:
    """One reply frame, length prefix included."""
    size = REPLY_HEAD.size + len(payload)
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"a frame body is at most {MAX_FRAME_BYTES} bytes, got {size}")
    return b"".join((LENGTH.pack(size), REPLY_HEAD.pack(request_id, status), payload))


def decode_request(body: bytes) -> Request:
    """Parse a request body (without its length prefix).

    Raises:
        ProtocolError: too short, an unknown op, or a key running past the body's end.
    """
    if len(body) < REQUEST_HEAD.size:
        raise ProtocolError(
            f"a request body is at least {REQUEST_HEAD.size} bytes, got {len(body)}"
        )
    request_id, op, key_len = REQUEST_HEAD.unpack_from(body)
    known = _OPS.get(op)
    if known is None:
        raise ProtocolError(f"unknown op {op} in request {request_id}; expected one of {list(Op)}")
    end = REQUEST_HEAD.size + key_len
    if end > len(body):
        raise ProtocolError(
            f"request {request_id}: a key of {key_len} bytes does not fit in a body of "
            f"{len(body)} bytes"
        )
    return Request(request_id, known, body[REQUEST_HEAD.size : end], body[end:])


def decode_reply(body: bytes) -> Reply:
    """Parse a reply body (without its length prefix).

    Raises:
        ProtocolError: too short, or an unknown status.
    """
    if len(body) < REPLY_HEAD.size:
        raise ProtocolError(f"a reply body is at least {REPLY_HEAD.size} bytes, got {len(body)}")
    request_id, status = REPLY_HEAD.unpack_from(body)
    known = _STATUSES.get(status)
    if known is None:
        raise ProtocolError(f"unknown status {status} in the reply to request {request_id}")
    return Reply(request_id, known, body[REPLY_HEAD.size :])


class FrameBuffer:
    """Splits a byte stream into frame bodies (sans-IO).

    Args:
        max_frame_bytes: Bodies longer than this are refused (:exc:`ProtocolError`) as soon
            as their length prefix arrives, before any of the body is buffered.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_frame_bytes
        self._error: ProtocolError | None = None

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        """Add ``data``; return every body it completes, in order.

        Raises:
            ProtocolError: a length prefix announces a body over the limit, or an empty one
                (if good frames came before it in ``data``, they are returned first and the
                error is raised by the next call, of this or of :meth:`check_eof`).
        """
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        buffer += data
        bodies: list[bytes] = []
        offset = 0
        end = len(buffer)
        while end - offset >= LENGTH.size:
            (size,) = LENGTH.unpack_from(buffer, offset)
            if size > self._max or size == 0:
                self._error = ProtocolError(
                    "a frame announces an empty body"
                    if size == 0
                    else f"a frame announces {size} bytes, more than the limit of {self._max}"
                )
                if bodies:
                    return bodies
                raise self._error
            start = offset + LENGTH.size
            if end - start < size:
                break
            bodies.append(bytes(buffer[start : start + size]))
            offset = start + size
        if offset:
            del buffer[:offset]
        return bodies

    @property
    def error(self) -> ProtocolError | None:
        """The error of a bad frame seen after good ones (which :meth:`feed` returned first);
        the connection should be closed once they are answered."""
        return self._error

    def check_eof(self) -> None:
        """The stream ended: raise if it ended in the middle of a frame.

        Raises:
            ProtocolError: bytes of an incomplete frame are buffered (or a bad frame was seen).
        """
        if self._error is not None:
            raise self._error
        if self._buffer:
            raise ProtocolError(
                f"the stream ended inside a frame ({len(self._buffer)} bytes of it received)"
            )
