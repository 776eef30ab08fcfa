"""A snapshot as the bytes of a snapshot file, for backups.

A backup is a snapshot file (``_snapshot_file``'s format: a header frame with the metadata,
chunk frames, a trailer with their count and size, each frame with its CRC-32), so a node's
``snapshot`` op streams one and ``trio-raft snapshot restore`` reads it back with the same
reader the storage uses. :func:`snapshot_file_bytes` encodes any storage's snapshot (from
``Storage.load_snapshot``) that way; a file storage's own file decodes to the same content.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable

import cbor2

from .._types import SnapshotMeta
from ._segments import frame
from ._snapshot_file import _CHUNK, _END, encode_snapshot_header

EXPORT_CHUNK_BYTES = 1 << 20
"""A chunk frame of an exported file holds at most this many bytes of the state machine's
serialization (well below any storage's ``max_record_bytes``, so any node can read it)."""


async def snapshot_file_bytes(
    meta: SnapshotMeta, chunks: AsyncIterable[bytes], *, max_chunk: int = EXPORT_CHUNK_BYTES
) -> AsyncGenerator[bytes, None]:
    """The snapshot file of ``meta`` and ``chunks``, frame by frame (each piece yielded is
    one frame; a piece holds at most ``max_chunk`` bytes of data plus its framing)."""
    yield frame(encode_snapshot_header(meta))
    count = size = 0
    async for chunk in chunks:
        for at in range(0, len(chunk), max_chunk):
            part = bytes(chunk[at : at + max_chunk])
            yield frame(_CHUNK + part)
            count += 1
            size += len(part)
    yield frame(_END + cbor2.dumps({"chunks": count, "bytes": size}))
