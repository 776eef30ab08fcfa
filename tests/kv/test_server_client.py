"""The KV service end to end: real loopback WebSockets (port 0) in front of real nodes.

The three nodes run in this process and talk over :class:`~trio_raft.testing.MemoryNetwork`
(node-to-node WebSockets are another component); each serves its KV endpoint on a real socket,
so these tests use the real clock. Nothing sleeps to synchronize: tests wait for conditions
(``wait_leader``, ``wait_status``, events). Each is bounded by :func:`trio.fail_after`.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import cbor2
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

import trio_raft._write
import trio_raft.kv._server
from trio_raft import Config, MemoryStorage, Node, Role, Status, open_node
from trio_raft._util import unwrap_single_exception_group
from trio_raft.kv import (
    ClientClosedError,
    KVAuthError,
    KVClient,
    KVNoSpaceError,
    KVRequestError,
    KVServer,
    KVStateMachine,
    KVTimeoutError,
    open_client,
    serve_kv,
)
from trio_raft.kv._protocol import MAX_REQUEST_BYTES
from trio_raft.testing import MemoryNetwork, SimulatedStorage

FAST = Config(election_timeout_s_min=0.15, election_timeout_s_max=0.3, heartbeat_s=0.03)
"""Elections in a few hundred milliseconds of real time."""
TEST_S = 3.0
"""The time bound of every test."""


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll a server-side counter (there is no event for it); bounded by the caller."""
    while not predicate():  # noqa: ASYNC110  # a counter, not an event
        await trio.sleep(0.01)


def leader_is_not(node_id: str, status: Status) -> bool:
    return status.leader_id != node_id


@attrs.define
class Cluster:
    ids: tuple[str, ...]
    network: MemoryNetwork
    max_sessions: int
    nodes: dict[str, Node] = attrs.Factory(dict)
    machines: dict[str, KVStateMachine] = attrs.Factory(dict)
    servers: dict[str, KVServer] = attrs.Factory(dict)
    urls: dict[str, str] = attrs.Factory(dict)
    scopes: dict[str, trio.CancelScope] = attrs.Factory(dict)
    stopped: dict[str, trio.Event] = attrs.Factory(dict)
    storages: dict[str, SimulatedStorage] = attrs.Factory(dict)
    """Nodes given a storage with a disk-space model (others get a MemoryStorage)."""

    async def leader(self) -> Node:
        """The leader, as a running node agrees it is."""
        while True:
            node = next(iter(self.nodes.values()))
            leader_id = await node.wait_leader()
            if leader_id in self.nodes:
                return self.nodes[leader_id]
            # A crashed leader, still believed in: wait for the next one.
            await node.wait_status(partial(leader_is_not, leader_id))

    async def follower(self) -> Node:
        leader = await self.leader()
        return next(n for n in self.nodes.values() if n is not leader)

    async def crash(self, node_id: str) -> None:
        """Exit the node's context (its KV server goes with it)."""
        self.scopes[node_id].cancel()
        await self.stopped[node_id].wait()
        self.network.detach(node_id)

    async def run_node(
        self,
        node_id: str,
        serve_options: dict[str, object],
        *,
        join: bool = False,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``node_id`` and its KV server until :meth:`crash`; with ``join``, open it in
        join mode (``members=None``) to be added with ``add_learner``."""
        self.stopped[node_id] = trio.Event()
        machine = KVStateMachine(max_sessions=self.max_sessions)
        try:
            with trio.CancelScope() as self.scopes[node_id]:
                async with open_node(
                    node_id,
                    None if join else self.ids,
                    state_machine=machine,
                    transport=self.network.transport(node_id),
                    storage=self.storages.get(node_id) or MemoryStorage(),
                    config=FAST,
                    rng=random.Random(node_id),
                ) as node:
                    async with trio.open_nursery() as nursery:
                        server: KVServer = await nursery.start(
                            partial(
                                serve_kv,
                                node,
                                host="127.0.0.1",
                                port=0,
                                leader_urls=self.urls,  # filled in as the ports are bound
                                **serve_options,  # type: ignore[arg-type]
                            )
                        )
                        self.nodes[node_id], self.machines[node_id] = node, machine
                        self.servers[node_id] = server
                        self.urls[node_id] = f"ws://127.0.0.1:{server.port}/kv"
                        task_status.started()
        finally:
            self.nodes.pop(node_id, None)
            self.stopped[node_id].set()


@asynccontextmanager
async def kv_cluster(
    ids: Sequence[str] = ("n1", "n2", "n3"),
    max_sessions: int = 100,
    *,
    storages: dict[str, SimulatedStorage] | None = None,
    **serve_options: object,
) -> AsyncIterator[Cluster]:
    cluster = Cluster(tuple(ids), MemoryNetwork(random.Random(0)), max_sessions)
    cluster.storages.update(storages or {})
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.network.run)
        for node_id in ids:
            await nursery.start(cluster.run_node, node_id, serve_options)
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def raw_ws(url: str) -> AsyncIterator[WebSocketConnection]:
    """A bare WebSocket to ``url`` (``ws://127.0.0.1:port/path``) that speaks whatever the test
    sends. It owns its TCP stream: ``open_websocket_url`` leaks the socket when the server
    closes first, which is what these tests provoke."""
    address, _, resource = url.removeprefix("ws://").partition("/")
    host, _, port = address.partition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        with unwrap_single_exception_group():
            async with trio.open_nursery() as nursery:
                ws = await wrap_client_stream(nursery, stream, address, "/" + resource)
                try:
                    yield ws
                finally:
                    nursery.cancel_scope.cancel()


async def request(ws: WebSocketConnection, message: dict[str, object]) -> dict[str, Any]:
    """Send one raw request and return the decoded response (a CBOR map: its values are
    whatever the server sent, hence ``Any``)."""
    await ws.send_message(cbor2.dumps(message))
    data = await ws.get_message()
    assert isinstance(data, bytes)
    response = cbor2.loads(data)
    assert isinstance(response, dict)
    return response


# -- the client's calls ---------------------------------------------------------------------------


async def test_client_on_a_follower_finds_the_leader_and_reads_its_writes() -> None:
    with trio.fail_after(TEST_S):
        async with kv_cluster() as cluster:
            follower, leader = await cluster.follower(), await cluster.leader()
            async with open_client([cluster.urls[follower.id]], rng=random.Random(1)) as kv:
                assert await kv.get("greeting") is None
                assert kv.url == cluster.urls[leader.id]  # followed the not_leader hint
                await kv.put("greeting", b"hello")
                assert await kv.get("greeting") == b"hello"  # linearizable: sees the write
                await kv.put("text", "héllo")  # a str value is stored as UTF-8
                assert await kv.get("text") == "héllo".encode()
            # A second client, any URL: the acknowledged writes are there.
            async with open_client(list(cluster.urls.values())) as other:
                assert await other.get("greeting") == b"hello"
                assert await other.list() == ["greeting", "text"]


async def test_stale_read_is_answered_by_the_connected_follower() -> None:
    with trio.fail_after(TEST_S):
        async with kv_cluster() as cluster:
            follower = await cluster.follower()
            async with open_client(list(cluster.urls.values())) as kv:
                await kv.put("k", b"v")
            applied = (await cluster.leader()).status.commit_index
            await follower.wait_status(lambda s: s.last_applied >= applied)
            async with open_client(cluster.urls[follower.id]) as kv:
                assert await kv.get("k", consistency="stale") == b"v"
                assert await kv.list("k", consistency="stale") == ["k"]
                assert kv.url == cluster.urls[follower.id]  # no redirect for a stale read


async def test_cas_delete_and_list() -> None:
    with trio.fail_after(TEST_S):
        async with kv_cluster() as cluster, open_client(list(cluster.urls.values())) as kv:
            assert await kv.cas("lock", None, b"me") is True  # create if absent
            assert await kv.cas("lock", None, b"you") is False
            assert await kv.cas("lock", b"you", b"x") is False
            assert await kv.get("lock") == b"me"
            assert await kv.cas("lock", "me", "me2") is True
            assert await kv.cas("lock", b"me2", None) is True  # delete if equal
            assert await kv.get("lock") is None
            for key in ["app/b", "app/a", "app/c", "apple", "zoo"]:
                await kv.put(key, key.encode())
            assert await kv.list("app/") == ["app/a", "app/b", "app/c"]
            assert await kv.list("app", limit=2) == ["app/a", "app/b"]
            assert await kv.list("app/", limit=2, start_after="app/b") == ["app/c"]
            assert await kv.list("nothing") == []
            assert await kv.delete("zoo") is True
            assert await kv.delete("zoo") is False
            assert await kv.list() == ["app/a", "app/b", "app/c", "apple"]
            leader = await cluster.leader()
            assert cluster.machines[leader.id].revision == 12  # every write, even a failed cas


async def test_invalid_arguments_fail_before_sending() -> None:
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"]) as cluster, open_client(cluster.urls["solo"]) as kv:
            with pytest.raises(KVRequestError, match="key must be 1 to 1024 bytes"):
                await kv.put("k" * 2000, b"v")
            with pytest.raises(ValueError):  # KVRequestError is a ValueError
                await kv.get("")
            with pytest.raises(KVRequestError, match="limit"):
                await kv.list("p", limit=0)
            assert kv.url is None  # nothing was sent
            with pytest.raises(ValueError):
                await kv.get("k", timeout_s=-1)
        with pytest.raises(ValueError):
            async with open_client(["http://example.com"]):
                pass


async def test_an_evicted_session_is_replaced_when_nothing_was_applied() -> None:
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"], max_sessions=1) as cluster:
            url = cluster.urls["solo"]
            async with open_client(url) as a, open_client(url) as b:
                await a.put("k", b"a1")
                first = a.session_id
                await b.put("k", b"b1")  # opens b's session, evicting a's
                await a.put("k", b"a2")  # session_expired, definitely not applied: redone
                assert a.session_id != first
                assert await b.get("k") == b"a2"
                assert cluster.machines["solo"].revision == 3
            with pytest.raises(ClientClosedError):
                await a.get("k")


async def test_call_timeout_when_no_server_answers() -> None:
    with trio.fail_after(TEST_S):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        await listeners[0].aclose()  # a port nobody listens on: connections are refused
        async with open_client(f"ws://127.0.0.1:{port}/kv", timeout_s=0.3) as kv:
            with pytest.raises(KVTimeoutError, match="cannot connect"):
                await kv.get("k")
            with pytest.raises(KVTimeoutError, match="it was not applied"):
                await kv.put("k", b"v", timeout_s=0.2)


# -- protocol: tokens, bad requests, junk, limits --------------------------------------------------


async def test_token_is_required_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trio_raft.kv._server, "HELLO_TIMEOUT_S", 0.2)
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"], token="s3cret") as cluster:
            url = cluster.urls["solo"]
            async with open_client(url, token="s3cret") as kv:
                await kv.put("k", b"v")
                assert await kv.get("k") == b"v"
            for wrong in [None, "wrong", "s3cret "]:
                async with open_client(url, token=wrong) as kv:
                    with pytest.raises(KVAuthError, match="token"):
                        await kv.get("k")
            async with raw_ws(url) as ws:  # skipping the hello
                response = await request(ws, {"id": 1, "op": "get", "key": "k"})
                assert response == {
                    "id": 1,
                    "error": {"code": "unauthorized", "message": response["error"]["message"]},
                }
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason is not None and closed.value.reason.code == 1008
            async with raw_ws(url) as ws:  # saying nothing at all
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason is not None and closed.value.reason.code == 1008


async def test_bad_requests_are_answered_and_the_connection_stays_usable() -> None:
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"]) as cluster:
            await cluster.leader()
            async with raw_ws(cluster.urls["solo"]) as ws:
                bad: list[dict[str, object]] = [
                    {"id": 1, "op": "get", "key": 5},
                    {"id": 2, "op": "frobnicate"},
                    {"id": 3, "op": "get", "key": "k", "extra": True},
                    {"id": 4, "op": "put", "key": "k", "value": b"v"},  # no session, no seq
                    {"id": 5, "op": "put", "session": b"s", "seq": True, "key": "k", "value": b""},
                    {"id": 6, "op": "list", "prefix": "", "limit": 10**6},
                    {"id": 7, "op": "get", "key": "k", "consistency": "eventual"},
                    {"id": 8, "op": "hello", "v": 99},
                    {"id": 9, "op": "put", "session": b"never-opened", "seq": 1, "key": "k"},
                ]
                for message in bad:
                    response = await request(ws, message)
                    assert response["id"] == message["id"]
                    error = response["error"]
                    assert isinstance(error, dict) and error["code"] == "bad_request", response
                # A well-formed write on a session never opened: refused by the state machine.
                response = await request(
                    ws,
                    {"id": 10, "op": "put", "session": b"s", "seq": 1, "key": "k", "value": b""},
                )
                assert response["error"]["code"] == "session_expired"
                response = await request(ws, {"id": 11, "op": "get", "key": "k"})
                assert response == {"id": 11, "ok": None}
                response = await request(ws, {"id": 12, "op": "hello", "v": 1, "token": None})
                assert response == {"id": 12, "ok": {"v": 1, "node": "solo"}}


JUNK: list[tuple[bytes | str, int]] = [
    (b"\xff\xfe", 1007),  # not CBOR
    (cbor2.dumps([1, 2]), 1007),  # not a map
    (cbor2.dumps({"op": "get", "key": "k"}), 1007),  # no id to answer to
    (cbor2.dumps({"id": -1, "op": "get"}), 1007),
    (cbor2.dumps({"id": 1}) + b"\x00", 1007),  # trailing bytes
    (bytes.fromhex("a26269640162696402"), 1007),  # duplicate key
    ("a text frame", 1003),
    (b"\x00" * (MAX_REQUEST_BYTES + 1), 1009),  # too big (closed by trio-websocket)
]


async def test_junk_frames_close_the_connection_but_not_the_node() -> None:
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"]) as cluster:
            url = cluster.urls["solo"]
            for junk, code in JUNK:
                async with raw_ws(url) as ws:
                    await ws.send_message(junk)
                    with pytest.raises(ConnectionClosed) as closed:
                        await ws.get_message()
                    assert closed.value.reason is not None
                    assert closed.value.reason.code == code, junk[:20]
            async with open_client(url) as kv:
                await kv.put("still", b"alive")
                assert await kv.get("still") == b"alive"
            server = cluster.servers["solo"]
            await wait_until(lambda: server.connections == 0)  # the server saw every close


async def test_connection_limit_and_path() -> None:
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"], max_connections=1) as cluster:
            url = cluster.urls["solo"]
            with pytest.raises(ConnectionRejected) as rejected:
                async with raw_ws(url.replace("/kv", "/other")):
                    pass
            assert rejected.value.status_code == 404
            async with raw_ws(url) as first:  # evicts the one above if it is still closing
                await request(first, {"id": 1, "op": "hello", "v": 1})
                with pytest.raises(ConnectionRejected) as rejected:
                    async with raw_ws(url):
                        pass
                assert rejected.value.status_code == 503
                async with open_client(url, timeout_s=0.2) as kv:  # tries, backs off, gives up
                    with pytest.raises(KVTimeoutError, match="503"):
                        await kv.get("k")


# -- failover ----------------------------------------------------------------------------------


async def test_client_keeps_writing_through_a_leader_crash() -> None:
    """A client increments a counter with cas, 20 times, while the leader crashes after the
    fifth. Every cas must answer True (a cas applied twice would answer False), and every
    replica must end with exactly 21 writes applied and the counter at 20: no acknowledged
    write lost, none applied twice."""
    writes = 20
    with trio.fail_after(TEST_S):
        async with kv_cluster() as cluster:
            old = await cluster.leader()
            five_done = trio.Event()

            async def writer() -> None:
                async with open_client(list(cluster.urls.values()), rng=random.Random(2)) as kv:
                    await kv.put("counter", b"0")
                    for i in range(writes):
                        swapped = await kv.cas("counter", str(i).encode(), str(i + 1).encode())
                        assert swapped, f"cas {i} -> {i + 1} answered False"
                        if i == 4:
                            five_done.set()
                    assert await kv.get("counter") == str(writes).encode()
                    assert kv.url != cluster.urls[old.id]

            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                await five_done.wait()
                await cluster.crash(old.id)
            new = await cluster.leader()
            assert new is not old
            top = new.status.commit_index
            for node_id, node in cluster.nodes.items():
                await node.wait_status(lambda s: s.last_applied >= top)
                machine = cluster.machines[node_id]
                assert machine.as_dict() == {"counter": str(writes).encode()}
                assert machine.revision == writes + 1, node_id


def _view(status: Status) -> tuple[object, ...]:
    return status.term, status.leader_id, status.role


async def _stable_status(kv: KVClient, node: Node) -> tuple[dict[str, object], Status]:
    """``kv.status()`` from ``node`` with the node's own view, taken while neither its term
    nor its leader changed (the cluster runs on the wall clock with short timeouts: under load
    an election can slip in between, which is not what these tests are about)."""
    for _ in range(10):
        before = node.status
        answer = await kv.status()
        if _view(node.status) == _view(before):
            return answer, before
    raise AssertionError(f"{node.id}'s leader kept changing")


async def test_status_is_answered_by_the_connected_node() -> None:
    with trio.fail_after(TEST_S):
        async with kv_cluster() as cluster:
            follower = await cluster.follower()
            async with open_client([cluster.urls[follower.id]], rng=random.Random(1)) as kv:
                status, own = await _stable_status(kv, follower)
            assert status["node"] == follower.id
            assert status["role"] == own.role.value
            assert status["leader"] == own.leader_id
            leader = await cluster.leader()
            async with open_client([cluster.urls[leader.id]], rng=random.Random(2)) as kv:
                await kv.put("k", "v")
                status, own = await _stable_status(kv, leader)
            assert status["node"] == leader.id
            assert status["role"] == own.role.value
            if own.role is Role.LEADER:
                followers = status["followers"]
                assert isinstance(followers, dict)
                assert set(followers) == set(cluster.ids) - {leader.id}


async def test_a_leader_low_on_disk_refuses_writes_but_not_deletes_or_reads() -> None:
    """The disk-space alarm end to end: ``no_space`` in status, a typed client error for a put
    (not retried until the timeout), deletes and reads served, and writes back once space is."""
    storages = {n: SimulatedStorage(random.Random(n)) for n in ("n1", "n2", "n3")}
    with trio.fail_after(TEST_S + 2 * trio_raft._write.SPACE_POLL_S):
        async with kv_cluster(storages=storages) as cluster:
            async with open_client(list(cluster.urls.values()), timeout_s=TEST_S) as kv:
                await kv.put("keep", b"1")
                await kv.put("drop", b"2")
                for storage in storages.values():
                    storage.set_disk_space("low")
                leader = await cluster.leader()
                await leader.wait_status(lambda s: s.no_space)
                with pytest.raises(KVNoSpaceError, match="low on disk space"):
                    await kv.put("new", b"3")
                assert (await kv.status())["no_space"] is True
                assert await kv.delete("drop") is True
                assert await kv.get("keep") == b"1"
                assert await kv.get("new") is None
                for storage in storages.values():
                    storage.set_disk_space("ok")
                await leader.wait_status(lambda s: not s.no_space)
                await kv.put("new", b"3")
                assert await kv.list() == ["keep", "new"]
