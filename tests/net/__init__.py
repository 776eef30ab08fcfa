"""Tests of the network layer: the wire format and the WebSocket transport.

Shared helpers live here: transports with fast reconnection, a mesh of them, a hand-driven
WebSocket client (built on trio-websocket's bottom tier so that the test owns, and closes, its
socket), and a cluster of real nodes on real transports.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import attrs
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from trio_raft import (
    Config,
    LeadershipLostError,
    MemoryStorage,
    Node,
    NotLeaderError,
    Role,
    StateMachine,
    open_node,
)
from trio_raft._messages import VoteRequest
from trio_raft._transport import TransportStatistics, WebSocketTransport, open_websocket_transport
from trio_raft._transport._auth import SUBPROTOCOL, client_handshake
from trio_raft._util import unwrap_single_exception_group
from trio_raft.testing import KVStateMachine

SECRET = bytes(range(32))
CLUSTER = "net-test"
FAST: dict[str, Any] = {
    "backoff_s_min": 0.01,
    "backoff_s_max": 0.05,
    "connect_timeout_s": 1.0,
    "handshake_timeout_s": 1.0,
}
"""Reconnect quickly: real sockets, real time."""


def transport(
    node_id: str, peers: dict[str, str | None], **kwargs: Any
) -> AbstractAsyncContextManager[WebSocketTransport]:
    """``open_websocket_transport`` with the test cluster, secret and fast reconnection."""
    options: dict[str, Any] = {"cluster_id": CLUSTER, "secret": SECRET, **FAST, **kwargs}
    return open_websocket_transport(node_id, peers, **options)


@asynccontextmanager
async def open_mesh(
    ids: Iterable[str], **kwargs: Any
) -> AsyncIterator[dict[str, WebSocketTransport]]:
    """Transports for ``ids`` on port 0, each told every other's URL once all are bound."""
    ids = list(ids)
    async with AsyncExitStack() as stack:
        mesh = {}
        for nid in ids:
            peers: dict[str, str | None] = {p: None for p in ids if p != nid}
            mesh[nid] = await stack.enter_async_context(transport(nid, peers, **kwargs))
        for a in mesh.values():
            for b in mesh.values():
                if a is not b:
                    a.set_peer_url(b.node_id, b.url)
        yield mesh


def all_connected(stats: TransportStatistics) -> bool:
    return all(p.connected for p in stats.peers.values())


async def wait_all_connected(mesh: dict[str, WebSocketTransport]) -> None:
    for t in mesh.values():
        await t.wait_statistics(all_connected)


def vote(src: str, dst: str, term: int = 1) -> VoteRequest:
    return VoteRequest(src, dst, term, last_log_index=0, last_log_term=0)


def nothing_delivered(t: WebSocketTransport) -> bool:
    return t.receive_channel.statistics().current_buffer_used == 0


@asynccontextmanager
async def raw_client(
    url: str,
    *,
    client_id: str | None = "a",
    server_id: str = "b",
    secret: bytes = SECRET,
    cluster_id: str = CLUSTER,
    subprotocols: list[str] | None = None,
) -> AsyncIterator[WebSocketConnection]:
    """A hand-driven WebSocket client; authenticated as ``client_id`` unless it is None."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    try:
        with unwrap_single_exception_group():  # e.g. ConnectionRejected from the reader task
            async with trio.open_nursery() as nursery:
                ws = await wrap_client_stream(
                    nursery,
                    stream,
                    f"{parts.hostname}:{parts.port}",
                    parts.path,
                    subprotocols=[SUBPROTOCOL] if subprotocols is None else subprotocols,
                )
                if client_id is not None:
                    await client_handshake(
                        ws,
                        secret=secret,
                        cluster_id=cluster_id,
                        client_id=client_id,
                        server_id=server_id,
                    )
                yield ws
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


async def closed_with(ws: WebSocketConnection) -> tuple[int, str | None]:
    """Wait for the server to close ``ws``; return its close code and reason."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await ws.get_message()
    assert info.value.reason is not None
    return info.value.reason.code, info.value.reason.reason


# -- a cluster of real nodes ---------------------------------------------------------------

IDS = ("n1", "n2", "n3")
CONFIG = Config(election_timeout_s_min=0.1, election_timeout_s_max=0.2, heartbeat_s=0.02)
"""Loopback round trips take well under a millisecond: short timeouts keep the test fast."""


@attrs.define
class Member:
    storage: MemoryStorage = attrs.Factory(MemoryStorage)
    port: int = 0
    node: Node | None = None
    transport: WebSocketTransport | None = None
    scope: trio.CancelScope | None = None
    incarnation: int = 0


@attrs.define
class Cluster:
    nursery: trio.Nursery
    config: Config
    members: dict[str, Member] = attrs.Factory(lambda: {nid: Member() for nid in IDS})
    state_machine: Callable[[], StateMachine] = KVStateMachine

    def urls(self, nid: str) -> dict[str, str | None]:
        others = {p: m for p, m in self.members.items() if p != nid}
        return {p: f"ws://127.0.0.1:{m.port}/raft" if m.port else None for p, m in others.items()}

    async def start(self, nid: str) -> Node:
        node: Node = await self.nursery.start(self._run, nid)
        return node

    async def _run(self, nid: str, *, task_status: trio.TaskStatus[Node]) -> None:
        member = self.members[nid]
        member.incarnation += 1
        rng = random.Random(f"{nid}/{member.incarnation}")
        with trio.CancelScope() as member.scope:
            async with transport(nid, self.urls(nid), port=member.port) as t:
                member.port, member.transport = t.port, t
                async with open_node(
                    nid, IDS, state_machine=self.state_machine(), transport=t,
                    storage=member.storage, config=self.config, rng=rng,
                ) as node:  # fmt: skip
                    member.node = node
                    task_status.started(node)
                    await trio.sleep_forever()

    def stop(self, nid: str) -> None:
        member = self.members[nid]
        assert member.scope is not None
        member.scope.cancel()
        member.node = member.transport = None

    def running(self) -> dict[str, Node]:
        return {nid: m.node for nid, m in self.members.items() if m.node is not None}


@asynccontextmanager
async def open_cluster(
    config: Config = CONFIG, state_machine: Callable[[], StateMachine] = KVStateMachine
) -> AsyncIterator[Cluster]:
    """Three nodes (``IDS``) with :class:`MemoryStorage` and ``state_machine()`` (the testing
    :class:`KVStateMachine` by default), each on its own WebSocket transport on a loopback
    port."""
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, config, state_machine=state_machine)
        for nid in IDS:
            await cluster.start(nid)
        for a in cluster.members.values():  # ports are known only now
            for b_id, url in cluster.urls("").items():
                if a.transport is not None and b_id != a.transport.node_id and url is not None:
                    a.transport.set_peer_url(b_id, url)
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()


async def wait_leader(nodes: dict[str, Node], *, not_: str | None = None) -> Node:
    """Wait until one of ``nodes`` (other than ``not_``) leads, and return it."""
    found: list[Node] = []
    async with trio.open_nursery() as nursery:

        async def watch(node: Node) -> None:
            await node.wait_status(lambda s: s.role is Role.LEADER)
            found.append(node)
            nursery.cancel_scope.cancel()

        for nid, node in nodes.items():
            if nid != not_:
                nursery.start_soon(watch, node)
    return found[0]


async def propose_all(nodes: dict[str, Node], commands: list[object]) -> None:
    """Propose every command through whichever node leads, retrying refused proposals (puts of
    distinct keys are idempotent, so retrying an unknown outcome is safe)."""
    pending = list(commands)

    async def worker() -> None:
        while pending:
            command = pending.pop()
            while True:
                leader = await wait_leader(nodes)
                try:
                    await leader.propose(command)
                    break
                except (NotLeaderError, LeadershipLostError):
                    await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(worker)


async def wait_caught_up(nodes: dict[str, Node], leader: Node) -> None:
    """Wait until every node has applied what any node knows committed (under load the
    leadership may have moved during the proposals, so ``leader`` alone may know less)."""
    target = max(leader.status.commit_index, *(n.status.commit_index for n in nodes.values()))
    for node in nodes.values():
        await node.wait_status(lambda s: s.last_applied >= target)


def kv(node: Node) -> dict[str, str]:
    sm = node._sm
    assert isinstance(sm, KVStateMachine)
    return sm.as_dict()
