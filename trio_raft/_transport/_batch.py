"""Batches: several frames in one WebSocket message (see :doc:`wire`, "Batches").

A batch is a CBOR array of 2 to :data:`MAX_BATCH_FRAMES` byte strings, each one frame of
:mod:`trio_raft._codec`. Only connections that negotiated the subprotocol
:data:`~trio_raft._transport._auth.BATCH_SUBPROTOCOL` carry them.
"""

from __future__ import annotations

from typing import Final

from .._codec import FrameError, cbor_head

__all__ = ["MAX_BATCH_FRAMES", "encode_batch", "split_batch"]

_BYTES: Final = 2
_ARRAY: Final = 4
_MAP: Final = 5

MAX_BATCH_FRAMES: Final = 256
"""The most frames one batch carries."""


def encode_batch(frames: list[bytes]) -> bytes:
    """Several frames as one message: a CBOR array of at least two byte strings, each one
    frame (see :doc:`wire`, "Batches"). Only for a connection that negotiated batches."""
    assert 2 <= len(frames) <= MAX_BATCH_FRAMES
    parts = [cbor_head(_ARRAY, len(frames))]
    for frame in frames:
        parts.append(cbor_head(_BYTES, len(frame)))
        parts.append(frame)
    return b"".join(parts)


def split_batch(data: bytes) -> list[bytes]:
    """The frames of a message that :func:`encode_batch` made, each still to be decoded.

    A message starting with a CBOR map is a single frame and comes back alone. Otherwise it
    must be a definite-length array of 2 to :data:`MAX_BATCH_FRAMES` definite-length byte
    strings with nothing after it (no tags, nothing nested); parsing only reads heads and
    slices, so its cost is bounded by the number of frames, not their content.

    Raises:
        FrameError: the message is neither.
    """
    if not data:
        raise FrameError("empty message")
    major = data[0] >> 5
    if major == _MAP:  # a map: one frame
        return [data]
    if major != _ARRAY:
        raise FrameError(
            f"expected a frame (a map) or a batch (an array), got CBOR major type {major}"
        )
    count, pos = _read_head(data, 0)
    if not 2 <= count <= MAX_BATCH_FRAMES:
        raise FrameError(f"batch of {count} frames (expected 2 to {MAX_BATCH_FRAMES})")
    frames = []
    for i in range(count):
        if pos >= len(data) or data[pos] >> 5 != _BYTES:
            raise FrameError(f"batch item {i}: expected a byte string")
        length, pos = _read_head(data, pos)
        if pos + length > len(data):
            raise FrameError(f"batch item {i}: {length} bytes, past the end of the message")
        frames.append(data[pos : pos + length])
        pos += length
    if pos != len(data):
        raise FrameError(f"{len(data) - pos} trailing bytes after the batch")
    return frames


def _read_head(data: bytes, pos: int) -> tuple[int, int]:
    """The argument of the definite-length head at ``pos`` and the position after it."""
    info = data[pos] & 0x1F
    if info < 24:
        return info, pos + 1
    if info > 27:  # reserved, or an indefinite length
        raise FrameError(f"batch: unsupported CBOR head 0x{data[pos]:02x} (definite lengths only)")
    size = 1 << (info - 24)
    if pos + 1 + size > len(data):
        raise FrameError("batch: truncated CBOR head")
    return int.from_bytes(data[pos + 1 : pos + 1 + size], "big"), pos + 1 + size
