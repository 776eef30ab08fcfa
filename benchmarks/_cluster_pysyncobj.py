"""A PySyncObj node process of the cluster benchmark: ``python -m benchmarks._cluster_pysyncobj
SPEC`` (the same JSON spec as :mod:`benchmarks._cluster_node`, with ``"batch": true|false``).

PySyncObj (the optional ``bench`` extra) runs a :class:`pysyncobj.batteries.ReplDict` in its
own ticking thread, with its own TCP transport between nodes; this process serves the
benchmark's protocol with asyncio in the main thread. Writes call ``ReplDict.set(key, value,
callback=...)`` on the leader; the callback (run in PySyncObj's thread) queues the reply, and one
``call_soon_threadsafe`` per batch of callbacks wakes the event loop, which writes every reply
ready on a connection at once (as the trio servers do). Reads answer from the leader's copy:
PySyncObj has no linearizable read, so its read rows favour it. Its log stays in memory and is
never fsynced (no ``journalFile``: its defaults). ``batch`` false sets
``appendEntriesUseBatch=False``, which sends each command to followers at once instead of at
the next tick (its fastest mode with one client).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sys
from collections.abc import Mapping
from typing import Any, Final

from ._cluster_protocol import (
    MAX_FRAME_BYTES,
    FrameBuffer,
    Op,
    ProtocolError,
    Request,
    Status,
    decode_request,
    encode_reply,
)

HOST: Final = "127.0.0.1"


class _Node:
    def __init__(self, spec: Mapping[str, Any]) -> None:
        from pysyncobj import SyncObj, SyncObjConf  # type: ignore[import-untyped, import-not-found, unused-ignore]
        from pysyncobj.batteries import ReplDict  # type: ignore[import-untyped, import-not-found, unused-ignore]

        self.id: str = spec["id"]
        nodes: dict[str, list[int]] = spec["nodes"]
        self.by_address = {f"{HOST}:{ports[0]}": nid for nid, ports in nodes.items()}
        me = f"{HOST}:{nodes[self.id][0]}"
        partners = [address for address in self.by_address if address != me]
        conf = SyncObjConf(appendEntriesUseBatch=bool(spec["batch"]), dynamicMembershipChange=False)
        self.dict = ReplDict()
        self.obj = SyncObj(me, partners, conf=conf, consumers=[self.dict])
        self.front_port: int = nodes[self.id][1]
        self.loop = asyncio.get_running_loop()
        self.done: collections.deque[tuple[_Connection, int, Status, bytes]] = collections.deque()
        self.flush_scheduled = False

    def leader(self) -> str:
        leader = self.obj._getLeader()
        if leader is None:
            return ""
        return self.by_address.get(getattr(leader, "address", str(leader)), "")

    def on_done(self, connection: _Connection, request_id: int, result: object, error: int) -> None:
        """PySyncObj's callback, in its thread: queue the reply, wake the loop once."""
        if error == 0:  # FAIL_REASON.SUCCESS
            self.done.append((connection, request_id, Status.OK, b""))
        else:
            self.done.append(
                (connection, request_id, Status.ERROR, f"FAIL_REASON {error}".encode())
            )
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon_threadsafe(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False  # before draining: a callback queued now schedules again
        touched: set[_Connection] = set()
        while self.done:
            connection, request_id, status, payload = self.done.popleft()
            connection.out.append(encode_reply(request_id, status, payload))
            touched.add(connection)
        for connection in touched:
            connection.write_out()

    def status(self) -> dict[str, object]:
        obj = self.obj
        return {
            "id": self.id,
            "role": "leader" if obj._isLeader() else "follower",
            "leader": self.leader() or None,
            "applied": obj.raftLastApplied,
            "commit": obj.raftCommitIndex,
            "last_index": obj.raftLastApplied,
            "pid": os.getpid(),
        }


class _Connection(asyncio.Protocol):
    def __init__(self, node: _Node) -> None:
        self.node = node
        self.frames = FrameBuffer(MAX_FRAME_BYTES)
        self.out: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def write_out(self) -> None:
        if self.transport is not None and self.out:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def data_received(self, data: bytes) -> None:
        try:
            for body in self.frames.feed(data):
                self.handle(decode_request(body))
        except ProtocolError:
            if self.transport is not None:
                self.transport.close()
            return
        self.write_out()

    def eof_received(self) -> bool | None:
        return None

    def handle(self, request: Request) -> None:
        node = self.node
        if request.op is Op.STATUS:
            payload = json.dumps(node.status()).encode()
            self.out.append(encode_reply(request.id, Status.OK, payload))
            return
        if not node.obj._isLeader():
            self.out.append(encode_reply(request.id, Status.REDIRECT, node.leader().encode()))
            return
        if request.op is Op.READ:
            value = node.dict.get(request.key, b"")
            self.out.append(encode_reply(request.id, Status.OK, value))
            return
        request_id = request.id

        def callback(result: object, error: int) -> None:
            node.on_done(self, request_id, result, error)

        node.dict.set(request.key, request.value, callback=callback)


async def _serve(spec: Mapping[str, Any]) -> None:
    node = _Node(spec)
    server = await node.loop.create_server(
        lambda: _Connection(node), HOST, node.front_port, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """Run the PySyncObj node described by the JSON spec in ``argv[0]`` until killed."""
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(args[0])
    code = 0
    try:
        asyncio.run(_serve(spec))
    except KeyboardInterrupt:
        code = 130
    os._exit(code)  # PySyncObj's ticking thread is not a daemon: do not wait for it


if __name__ == "__main__":
    sys.exit(main())
