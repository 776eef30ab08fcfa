"""A node process of the cluster benchmark: ``python -m benchmarks._cluster_node SPEC``.

``SPEC`` is a JSON object (written by :mod:`benchmarks.bench_cluster`)::

    {"system": "trio-raft" | "null", "id": "n1", "storage": "file" | "memory",
     "data_dir": "...", "nodes": {"n1": [peer_port, front_port], ...}, "secret": "hex"}

``trio-raft`` embeds a node the way ``trio-raft serve`` does (:func:`trio_raft.open_node` with
:func:`trio_raft.open_file_storage` or :class:`trio_raft.MemoryStorage`, the WebSocket
transport between nodes), with :class:`BenchStateMachine`, and serves the benchmark's protocol
(:mod:`benchmarks._cluster_protocol`) on its front port: writes are :meth:`Node.propose_nowait`
answered from its ``on_done`` (``TRIO_RAFT_BENCH_WRITES=task``: :meth:`Node.propose` in a task
per write), reads :meth:`Node.read` (ReadIndex, linearizable). ``null`` serves the same
protocol and acknowledges every request at once: the harness's own ceiling.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Final, final

import cbor2
import trio

import trio_raft

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
MAX_IN_FLIGHT: Final = 8192
"""Requests one connection may have outstanding before the server stops reading it."""

Reply = tuple[int, Status, bytes]
Handler = Callable[[Request, Callable[[Reply], None]], Awaitable[None] | None]
"""Handles one request and hands its reply to the callback; returns an awaitable to run in a
task of its own when the reply has to wait (a proposal), else ``None``."""


@final
class BenchStateMachine:
    """A replicated ``bytes -> bytes`` map: commands ``("put", key, value)``, queries a key.

    Snapshots are one CBOR chunk of the whole map, taken at once.
    """

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}

    def apply(self, command: object) -> object:
        """Set a key; the result is ``None``.

        Raises:
            ValueError: the command is not ``("put", bytes, bytes)``.
        """
        match command:
            case ("put", bytes() as key, bytes() as value) | [
                "put",
                bytes() as key,
                bytes() as value,
            ]:
                self._data[key] = value
                return None
        raise ValueError(f"malformed benchmark command {command!r}")

    def query(self, query: object) -> object:
        """The value of key ``query``, or ``b""`` if absent."""
        assert isinstance(query, bytes)
        return self._data.get(query, b"")

    def snapshot(self) -> Iterable[bytes]:
        """The whole map, encoded now."""
        return [cbor2.dumps(self._data)]

    def restore(self, chunks: Iterable[bytes]) -> None:
        """Replace the map with a snapshot's."""
        data = cbor2.loads(b"".join(chunks))
        assert isinstance(data, dict)
        self._data = data


async def serve_front(
    handler: Handler,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the benchmark protocol on ``127.0.0.1:port`` until cancelled (``task_status``
    gets the port bound: useful with 0). One task reads each connection, requests that must
    wait run in tasks of their own (pipelined), and one task per connection writes the
    replies, coalescing those ready at the same time. A malformed frame closes its connection."""
    listeners = await trio.open_tcp_listeners(port, host=HOST)
    task_status.started(listeners[0].socket.getsockname()[1])

    async def connection(stream: trio.SocketStream) -> None:
        await _connection(stream, handler)

    await trio.serve_listeners(connection, listeners)


async def _connection(stream: trio.abc.Stream, handler: Handler) -> None:
    frames = FrameBuffer(MAX_FRAME_BYTES)
    pending: list[bytes] = []
    wake = trio.Event()
    slots = trio.Semaphore(MAX_IN_FLIGHT)
    in_flight = 0
    reading = True

    def reply(item: Reply) -> None:
        nonlocal in_flight
        pending.append(encode_reply(*item))
        in_flight -= 1
        slots.release()
        wake.set()

    async def writer() -> None:
        nonlocal wake
        while True:
            await wake.wait()
            wake = trio.Event()
            if pending:
                out = b"".join(pending)
                pending.clear()
                await stream.send_all(out)
            if not reading and not in_flight and not pending:
                return  # the client is done (EOF) or misbehaved: every reply is out

    async def run(awaitable: Awaitable[None]) -> None:
        await awaitable

    try:
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            try:
                while True:
                    data = await stream.receive_some(1 << 16)
                    if not data:
                        frames.check_eof()
                        break
                    for body in frames.feed(data):
                        request = decode_request(body)
                        await slots.acquire()
                        in_flight += 1
                        waiting = handler(request, reply)
                        if waiting is not None:
                            nursery.start_soon(run, waiting)
                    if frames.error is not None:
                        break
            except ProtocolError:
                pass  # answer what came before, then drop the connection
            reading = False
            wake.set()
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away (or reset the connection): keep serving the others


def _status_reply(request: Request, status: Mapping[str, object]) -> Reply:
    return request.id, Status.OK, json.dumps(status).encode()


def null_handler(node_id: str) -> Handler:
    """A node that acknowledges every request at once (writes are kept in a dict)."""
    data: dict[bytes, bytes] = {}
    applied = 0

    def handle(request: Request, reply: Callable[[Reply], None]) -> None:
        nonlocal applied
        if request.op is Op.WRITE:
            data[request.key] = request.value
            applied += 1
            reply((request.id, Status.OK, b""))
        elif request.op is Op.READ:
            reply((request.id, Status.OK, data.get(request.key, b"")))
        else:
            status = {
                "id": node_id,
                "role": "leader",
                "leader": node_id,
                "applied": applied,
                "commit": applied,
                "last_index": applied,
                "pid": os.getpid(),
            }
            reply(_status_reply(request, status))

    return handle


def _failure(rid: int, exc: Exception) -> Reply:
    """The reply to a request that failed with ``exc``: a redirect to the leader if the node
    is not it, else an error naming the exception."""
    if isinstance(exc, trio_raft.NotLeaderError):
        return rid, Status.REDIRECT, (exc.leader_id or "").encode()
    return rid, Status.ERROR, f"{type(exc).__name__}: {exc}".encode()


def raft_handler(node: trio_raft.Node, *, task_per_write: bool = False) -> Handler:
    """Writes are proposals, reads ReadIndex reads; not the leader: a redirect.

    Writes are handed over with :meth:`Node.propose_nowait` and answered from its ``on_done``
    (no task per write); ``task_per_write`` awaits :meth:`Node.propose` in a task per write
    instead (and so does a write that finds the node's inbox full)."""

    def answer(rid: int, reply: Callable[[Reply], None], proposal: trio_raft.Proposal) -> None:
        try:
            proposal.result_nowait()
        except (trio_raft.RaftError, ValueError) as exc:
            reply(_failure(rid, exc))
        else:
            reply((rid, Status.OK, b""))

    async def write(request: Request, reply: Callable[[Reply], None]) -> None:
        try:
            await node.propose(("put", request.key, request.value))
        except (trio_raft.RaftError, ValueError) as exc:
            reply(_failure(request.id, exc))
        else:
            reply((request.id, Status.OK, b""))

    def write_nowait(request: Request, reply: Callable[[Reply], None]) -> Awaitable[None] | None:
        rid = request.id
        try:
            node.propose_nowait(
                ("put", request.key, request.value),
                on_done=lambda proposal: answer(rid, reply, proposal),
            )
        except trio.WouldBlock:
            return write(request, reply)  # the inbox is full: wait for room in a task
        except (trio_raft.RaftError, ValueError) as exc:
            reply(_failure(rid, exc))
        return None

    async def read(request: Request, reply: Callable[[Reply], None]) -> None:
        try:
            value = await node.read(request.key)
        except trio_raft.RaftError as exc:
            reply(_failure(request.id, exc))
        else:
            assert isinstance(value, bytes)
            reply((request.id, Status.OK, value))

    def handle(request: Request, reply: Callable[[Reply], None]) -> Awaitable[None] | None:
        if request.op is Op.WRITE:
            return write(request, reply) if task_per_write else write_nowait(request, reply)
        if request.op is Op.READ:
            return read(request, reply)
        st = node.status
        status = {
            "id": node.id,
            "role": st.role.value,
            "leader": st.leader_id,
            "term": st.term,
            "applied": st.last_applied,
            "commit": st.commit_index,
            "last_index": st.last_log_index,
            "pid": os.getpid(),
        }
        reply(_status_reply(request, status))
        return None

    return handle


async def _run_raft(spec: Mapping[str, object]) -> None:
    node_id = str(spec["id"])
    nodes = spec["nodes"]
    assert isinstance(nodes, dict)
    peer_port, front_port = nodes[node_id]
    peers = {nid: f"ws://{HOST}:{ports[0]}/raft" for nid, ports in nodes.items() if nid != node_id}
    secret = bytes.fromhex(str(spec["secret"]))
    async with trio.open_nursery() as nursery:
        storage_cm: contextlib.AbstractAsyncContextManager[trio_raft.Storage]
        if spec["storage"] == "file":
            storage_cm = trio_raft.open_file_storage(
                str(spec["data_dir"]), cluster_id="bench", node_id=node_id
            )
        else:
            storage_cm = contextlib.nullcontext(trio_raft.MemoryStorage())
        async with (
            storage_cm as storage,
            trio_raft.open_websocket_transport(
                node_id, peers, cluster_id="bench", secret=secret, host=HOST, port=peer_port
            ) as transport,
            trio_raft.open_node(
                node_id,
                sorted(nodes),
                state_machine=BenchStateMachine(),
                transport=transport,
                storage=storage,
            ) as node,
        ):
            # TRIO_RAFT_BENCH_WRITES=task: the A/B of issue 9 (a task per write, awaiting
            # propose, against propose_nowait with on_done).
            task_per_write = os.environ.get("TRIO_RAFT_BENCH_WRITES", "") == "task"
            handler = raft_handler(node, task_per_write=task_per_write)
            await nursery.start(serve_front, handler, front_port)
            await _tune_gc(os.environ.get("TRIO_RAFT_BENCH_GC", ""))


async def _tune_gc(mode: str) -> None:
    """The garbage-collector experiment of issue 9 (``TRIO_RAFT_BENCH_GC`` in the environment
    of ``bench_cluster``): ``threshold`` raises generation 0's threshold to 10,000; ``freeze``
    calls :func:`gc.freeze` every second (the log and the state grow; a full collection then
    skips what was frozen); anything else keeps CPython's defaults. Then sleeps forever."""
    if mode == "threshold":
        gc.set_threshold(10_000, 10, 10)
    while mode == "freeze":
        gc.freeze()
        await trio.sleep(1)
    await trio.sleep_forever()


async def _run_null(spec: Mapping[str, object]) -> None:
    node_id = str(spec["id"])
    nodes = spec["nodes"]
    assert isinstance(nodes, dict)
    await serve_front(null_handler(node_id), nodes[node_id][1])


def main(argv: list[str] | None = None) -> int:
    """Run the node described by the JSON spec in ``argv[0]`` until killed."""
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(args[0])
    runner = {"trio-raft": _run_raft, "null": _run_null}[spec["system"]]
    try:
        trio.run(runner, spec)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
