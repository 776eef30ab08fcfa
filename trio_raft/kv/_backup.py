"""The ``snapshot`` op on the server: a backup of a live cluster, streamed as a snapshot file.

A request with ``offset`` 0 makes the leader (a follower answers ``not_leader``) confirm its
leadership, apply everything committed and take a snapshot at the index it has then applied
(:meth:`Node.snapshot(linearizable=True) <trio_raft.Node.snapshot>`: durable before anything
is sent), so the backup holds every write acknowledged before the request; it then opens the
storage's current snapshot (that one, or a newer one taken meanwhile) and starts encoding it
as a snapshot file (``trio_raft._wal._export``). Every response carries the next
:data:`~trio_raft.kv._protocol.MAX_SNAPSHOT_PIECE_BYTES` bytes at most, with the snapshot's
metadata; the last one (``done``) carries the file's size and its SHA-256, which the client
checks against what it received.

Per connection there is one :class:`Downloads` slot: one download at a time, a new one
(offset 0) abandons the previous one, and the connection closes the open one when it ends, so
an abandoned download holds the snapshot file open no longer than its connection. The
download reads the storage's snapshot as it is sent (nothing is buffered beyond one piece and
one frame), so a server holds at most ``max_connections`` pieces of snapshots in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import trio

from .._errors import NodeClosedError, NotLeaderError
from .._node import Node
from .._types import NodeId, SnapshotMeta
from .._wal._errors import StorageError, StorageFullError
from .._wal._export import snapshot_file_bytes
from ._protocol import MAX_SNAPSHOT_PIECE_BYTES, ErrorCode, Failure, Ok, Response


class _Download:
    """One download: the snapshot file's bytes, read a piece at a time."""

    def __init__(
        self, meta: SnapshotMeta, chunks: AsyncIterator[bytes], frames: AsyncGenerator[bytes, None]
    ) -> None:
        self.meta = meta
        self._chunks = chunks
        self._frames = frames
        self._buffer = bytearray()
        self._exhausted = False
        self.offset = 0
        self.digest = hashlib.sha256()

    async def next_piece(self) -> tuple[bytes, bool]:
        """The next piece (at most ``MAX_SNAPSHOT_PIECE_BYTES``) and whether it is the last."""
        while len(self._buffer) < MAX_SNAPSHOT_PIECE_BYTES and not self._exhausted:
            try:
                self._buffer += await self._frames.__anext__()
            except StopAsyncIteration:
                self._exhausted = True
        piece = bytes(self._buffer[:MAX_SNAPSHOT_PIECE_BYTES])
        del self._buffer[:MAX_SNAPSHOT_PIECE_BYTES]
        self.offset += len(piece)
        self.digest.update(piece)
        return piece, self._exhausted and not self._buffer

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._frames.aclose()
            close = getattr(self._chunks, "aclose", None)
            if close is not None:
                await close()  # the storage's reader: closes the snapshot file


class Downloads:
    """A connection's download slot (at most one download open)."""

    def __init__(self) -> None:
        self._current: _Download | None = None
        self._lock = trio.Lock()  # requests of one connection run in tasks of their own

    async def answer(
        self,
        node: Node,
        cluster_id: str | None,
        rid: int,
        offset: int,
        leader_url: Callable[[NodeId | None], str | None],
    ) -> Response:
        """The response to ``{"op": "snapshot", "offset": offset}`` (``leader_url`` tells a
        client sent to a follower where the leader is)."""
        async with self._lock:
            if offset == 0:
                await self.aclose()
                try:
                    started = await self._start(node)
                except NotLeaderError as exc:
                    return Failure(
                        rid, ErrorCode.NOT_LEADER, f"{exc}; the leader takes backups",
                        leader_url(exc.leader_id),
                    )  # fmt: skip
                except NodeClosedError as exc:
                    return Failure(rid, ErrorCode.UNAVAILABLE, str(exc))
                except StorageFullError as exc:  # before StorageError: a subclass
                    return Failure(
                        rid, ErrorCode.NO_SPACE, f"{node.id}: the snapshot did not fit on its "
                        f"disk ({exc}); free space there, or hand leadership to another node "
                        "(trio-raft transfer-leader) and retry",
                    )  # fmt: skip
                except StorageError as exc:
                    return _unreadable(rid, node, exc)
                if started is None:
                    return Failure(
                        rid, ErrorCode.UNAVAILABLE, f"{node.id} has applied nothing yet: "
                        "there is nothing to back up; retry once the cluster has a leader",
                    )  # fmt: skip
                self._current = started
            download = self._current
            if download is None or offset != download.offset:
                where = "none" if download is None else f"the next byte is {download.offset}"
                return Failure(
                    rid, ErrorCode.BAD_REQUEST, f"no snapshot download at offset {offset} on "
                    f"this connection ({where}); start again from offset 0",
                )  # fmt: skip
            try:
                data, done = await download.next_piece()
            except StorageError as exc:
                await self.aclose()
                return _unreadable(rid, node, exc)
            meta = download.meta
            membership = meta.membership
            result: dict[str, object] = {
                "node": node.id,
                "cluster_id": cluster_id,
                "index": meta.index,
                "term": meta.term,
                "voters": [] if membership is None else sorted(membership.voters),
                "learners": [] if membership is None else sorted(membership.learners),
                "offset": offset,
                "data": data,
                "done": done,
                "size": download.offset if done else None,
                "sha256": download.digest.digest() if done else None,
            }
            if done:
                await self.aclose()
            return Ok(rid, result)

    async def _start(self, node: Node) -> _Download | None:
        if await node.snapshot(linearizable=True) == 0:
            return None
        loaded = await node._storage.load_snapshot()
        if loaded is None:  # pragma: no cover  (snapshot() returned a durable one)
            return None
        meta, chunks = loaded
        return _Download(meta, chunks, snapshot_file_bytes(meta, chunks))

    async def aclose(self) -> None:
        """Abandon the open download, if any (its snapshot file is closed)."""
        download, self._current = self._current, None
        if download is not None:
            await download.aclose()


def _unreadable(rid: int, node: Node, exc: StorageError) -> Failure:
    """The answer when the node's storage fails to give its snapshot (damaged, or a disk
    error): the download is over; the message says what the storage said."""
    return Failure(
        rid, ErrorCode.INTERNAL, f"{node.id}: its snapshot cannot be read ({exc}); hand "
        "leadership to another node (trio-raft transfer-leader) and retry",
    )  # fmt: skip
