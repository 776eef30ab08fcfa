"""Junk, oversize frames, a wrong secret, a wrong cluster id and a wrong token against the peer
port and the client port of a live leader: each connection is refused (closed), the node logs
why, and the cluster keeps its leader and term and keeps serving writes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import cbor2
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from trio_raft import kv
from trio_raft._codec import PROTOCOL_VERSION, encode
from trio_raft._messages import VoteResponse
from trio_raft._transport._auth import SUBPROTOCOL, Transcript, client_handshake, new_nonce
from trio_raft._transport._stats import MAX_MESSAGE_BYTES
from trio_raft._types import NodeId
from trio_raft._util import unwrap_single_exception_group
from trio_raft.kv._protocol import MAX_REQUEST_BYTES, Hello, encode_request

from ._harness import HOST, ProcessCluster, as_int, leader_of, open_process_cluster
from ._harness import Status as NodeStatus

TOKEN = "the-client-token"
REFUSED_S = 5.0
"""Bound on the server closing a refused connection."""


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


@asynccontextmanager
async def raw_websocket(
    port: int, resource: str, subprotocols: Sequence[str] = ()
) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket to 127.0.0.1:``port``; we own the TCP stream, so it is always closed."""
    stream = await trio.open_tcp_stream(HOST, port)
    try:
        with unwrap_single_exception_group():
            async with trio.open_nursery() as nursery:
                ws = await wrap_client_stream(
                    nursery, stream, f"{HOST}:{port}", resource, subprotocols=list(subprotocols)
                )
                try:
                    yield ws
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


async def close_code(ws: WebSocketConnection, *messages: bytes | str) -> int:
    """Send ``messages`` and return the close code the server answers with."""
    with trio.fail_after(REFUSED_S):
        try:
            for message in messages:
                await ws.send_message(message)
            while True:
                await ws.get_message()
        except ConnectionClosed as exc:
            assert exc.reason is not None
            return int(exc.reason.code)
        except trio.BrokenResourceError:
            return -1  # the server closed the TCP connection under our big write


async def raw_tcp_is_closed(port: int, junk: bytes) -> bytes:
    """Send ``junk`` on a plain TCP connection; return what came back before the close."""
    received = b""
    with trio.fail_after(REFUSED_S):
        stream = await trio.open_tcp_stream(HOST, port)
        async with stream:
            await stream.send_all(junk)
            try:
                while chunk := await stream.receive_some(4096):
                    received += chunk
            except trio.BrokenResourceError:
                pass  # reset: closed all the same
    return received


async def authenticated_peer(
    ws: WebSocketConnection, cluster: ProcessCluster, claim: NodeId, server: NodeId
) -> None:
    """The real handshake with the real secret (what a member does), claiming ``claim``."""
    await client_handshake(
        ws,
        secret=cluster.file.secret,
        cluster_id=cluster.file.cluster_id,
        client_id=claim,
        server_id=server,
    )


def hello(cluster_id: str, client: NodeId, server: NodeId, nonce: bytes) -> bytes:
    return cbor2.dumps(
        {"t": "hello", "v": PROTOCOL_VERSION, "c": cluster_id, "s": client, "d": server, "n": nonce}
    )


async def wait_stable(cluster: ProcessCluster) -> tuple[str, int]:
    leader, statuses = await cluster.wait_leader()
    return leader, as_int(statuses[leader] or {}, "term")


async def test_peer_port_refuses_junk_oversize_wrong_secret_and_wrong_cluster(
    tmp_path: Path,
) -> None:
    with trio.fail_after(20):
        async with open_process_cluster(tmp_path) as cluster:
            leader, term = await wait_stable(cluster)
            peer_port = port_of(cluster.file.nodes[leader].peer)
            member = next(n for n in cluster.ids if n != leader)
            cluster_id = cluster.file.cluster_id

            # Not HTTP at all.
            await raw_tcp_is_closed(peer_port, b"\x00\xffjunk\r\n\r\n" * 10)
            # Not the Raft path, or no subprotocol: the upgrade is rejected.
            with pytest.raises(ConnectionRejected) as rejected:
                async with raw_websocket(peer_port, "/nope", [SUBPROTOCOL]):
                    pass
            assert rejected.value.status_code == 404
            with pytest.raises(ConnectionRejected) as rejected:
                async with raw_websocket(peer_port, "/raft"):
                    pass
            assert rejected.value.status_code == 400

            codes: dict[str, int] = {}
            # Before the handshake: junk, text, oversize, wrong cluster, unknown node.
            async with raw_websocket(peer_port, "/raft", [SUBPROTOCOL]) as ws:
                codes["junk hello"] = await close_code(ws, b"\xff\x00 not cbor")
            async with raw_websocket(peer_port, "/raft", [SUBPROTOCOL]) as ws:
                codes["text hello"] = await close_code(ws, "hello")
            async with raw_websocket(peer_port, "/raft", [SUBPROTOCOL]) as ws:
                codes["oversize hello"] = await close_code(ws, b"\x00" * (MAX_MESSAGE_BYTES + 1))
            async with raw_websocket(peer_port, "/raft", [SUBPROTOCOL]) as ws:
                message = hello("another-cluster", member, leader, new_nonce())
                codes["wrong cluster id"] = await close_code(ws, message)
            async with raw_websocket(peer_port, "/raft", [SUBPROTOCOL]) as ws:
                codes["unknown node"] = await close_code(
                    ws, hello(cluster_id, "n9", leader, new_nonce())
                )
            # The wrong secret: a hello, then a proof made with another secret.
            async with raw_websocket(peer_port, "/raft", [SUBPROTOCOL]) as ws:
                nonce = new_nonce()
                await ws.send_message(hello(cluster_id, member, leader, nonce))
                data = await ws.get_message()
                assert isinstance(data, bytes)
                challenge = cbor2.loads(data)
                assert challenge["t"] == "challenge"
                transcript = Transcript(cluster_id, member, leader, nonce, challenge["n"])
                # Without the secret, the server's proof cannot be checked...
                assert challenge["p"] != transcript.proof(b"w" * 32, server=True)
                # ...and the server refuses ours.
                proof = transcript.proof(b"w" * 32, server=False)
                codes["wrong secret"] = await close_code(
                    ws, cbor2.dumps({"t": "proof", "p": proof})
                )
            # After a real handshake (with the real secret): bad frames still close it.
            async with raw_websocket(peer_port, "/raft", [SUBPROTOCOL]) as ws:
                await authenticated_peer(ws, cluster, member, leader)
                codes["junk frame"] = await close_code(ws, b"\xa1\x01\x02junk")
            async with raw_websocket(peer_port, "/raft", [SUBPROTOCOL]) as ws:
                await authenticated_peer(ws, cluster, member, leader)
                codes["text frame"] = await close_code(ws, "text")
            async with raw_websocket(peer_port, "/raft", [SUBPROTOCOL]) as ws:
                await authenticated_peer(ws, cluster, member, leader)
                frame = encode(VoteResponse(member, leader, 0, False), cluster_id="another")
                codes["frame of another cluster"] = await close_code(ws, frame)
            async with raw_websocket(peer_port, "/raft", [SUBPROTOCOL]) as ws:
                await authenticated_peer(ws, cluster, member, leader)
                third = next(n for n in cluster.ids if n not in (leader, member))
                frame = encode(VoteResponse(third, leader, 0, False), cluster_id=cluster_id)
                codes["forged sender"] = await close_code(ws, frame)
            async with raw_websocket(peer_port, "/raft", [SUBPROTOCOL]) as ws:
                await authenticated_peer(ws, cluster, member, leader)
                codes["oversize frame"] = await close_code(ws, b"\x00" * (MAX_MESSAGE_BYTES + 1))

            assert codes == {
                "junk hello": 1008,
                "text hello": 1008,
                "oversize hello": 1009,
                "wrong cluster id": 1008,
                "unknown node": 1008,
                "wrong secret": 1008,
                "junk frame": 1007,
                "text frame": 1003,
                "frame of another cluster": 1007,
                "forged sender": 1008,
                "oversize frame": 1009,
            }, codes
            await still_serving(cluster, leader, term)
            log = cluster.log(leader)
            for reason in (
                "wrong cluster id",
                "authentication failed",
                "unknown node",
                "invalid frame",
            ):
                assert reason in log, reason
            print(f"FIGURE hostile peer (test 7): close codes {codes}")


async def test_client_port_refuses_junk_oversize_and_wrong_token(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_process_cluster(tmp_path, token=TOKEN) as cluster:
            leader, term = await wait_stable(cluster)
            client_port = port_of(cluster.file.nodes[leader].client)
            url = cluster.file.nodes[leader].client

            await raw_tcp_is_closed(client_port, b"GET /kv HTTP/1.1\r\nHost: \x00\r\n\r\n" * 3)
            await raw_tcp_is_closed(client_port, b"\x16\x03\x01 not tls either" * 10)
            with pytest.raises(ConnectionRejected) as rejected:
                async with raw_websocket(client_port, "/nope"):
                    pass
            assert rejected.value.status_code == 404

            codes: dict[str, int] = {}
            async with raw_websocket(client_port, "/kv") as ws:
                codes["junk"] = await close_code(ws, b"\xff\x00 not cbor")
            async with raw_websocket(client_port, "/kv") as ws:
                codes["oversize"] = await close_code(ws, b"\x00" * (MAX_REQUEST_BYTES + 1))
            async with raw_websocket(client_port, "/kv") as ws:
                request = encode_request(1, Hello(token="wrong token"))
                codes["wrong token"] = await close_code(ws, request)
            async with raw_websocket(client_port, "/kv") as ws:
                await ws.send_message(encode_request(1, Hello(token=TOKEN)))
                await ws.get_message()  # welcome
                codes["junk after hello"] = await close_code(ws, b"\xff\x00 not cbor")
            assert codes == {
                "junk": 1007,
                "oversize": 1009,
                "wrong token": 1008,
                "junk after hello": 1007,
            }, codes

            # The frames that ended a node, or froze it, before the client port decoded
            # strictly: each closes its connection (1007) and nothing else.
            huge = 10**5000
            for frame in (
                cbor2.dumps({"id": 1, "op": huge}),
                cbor2.dumps({"id": 1, "op": "get", huge: 1}),
                b"\xa3\x62id\x01\x62op\x63get\x63key" + b"\xd8\x1c\x82\x00\xd8\x1d\x00",
                b"\xa3\x62id\x01\x62op\x63get\x63key" + b"\x81" * 10_000 + b"\x00",
            ):
                for _ in range(3):  # three such frames used to take down a 3-node cluster
                    async with raw_websocket(client_port, "/kv") as ws:
                        assert await close_code(ws, frame) == 1007
                codes[f"hostile frame of {len(frame)} bytes"] = 1007

            for token in ("wrong token", None):
                with pytest.raises(kv.KVAuthError):
                    async with kv.open_client([url], token=token, timeout_s=2) as client:
                        await client.put("intruder", "x")
            await still_serving(cluster, leader, term)
            async with cluster.client() as client:
                assert await client.get("intruder") is None
            print(f"FIGURE hostile client (test 7): close codes {codes}")


async def still_serving(cluster: ProcessCluster, leader: str, term: int) -> None:
    """The same leader in the same term, and writes still work, on every node."""
    async with cluster.client() as client:
        for i in range(5):
            await client.put(f"after{i}", "ok")
    statuses: dict[str, NodeStatus | None] = await cluster.wait_converged()
    assert leader_of(statuses) == leader
    assert all(s is not None and s["term"] == term for s in statuses.values()), statuses
    for node_id in cluster.ids:
        values = await cluster.stale_reads(node_id, [f"after{i}" for i in range(5)])
        assert set(values.values()) == {"ok"}, (node_id, values)
