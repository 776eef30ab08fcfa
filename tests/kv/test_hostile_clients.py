"""The client port against strangers and misbehaving clients, on real loopback sockets.

No exception from one connection ends the server (the barrier); connections that never finish
the HTTP upgrade count against ``max_connections`` and are the first to go when it is full;
a client that never reads its replies is closed instead of buffered for. Each test waits for
conditions (bounded by :func:`trio.fail_after`), never for time to pass.
"""

from __future__ import annotations

import logging
import random

import cbor2
import pytest
import trio
from trio_websocket import ConnectionClosed

import trio_raft.kv._server
from trio_raft.kv import KVServer, open_client
from trio_raft.kv._protocol import MAX_VALUE_BYTES

from .test_server_client import TEST_S, kv_cluster, raw_ws, request, wait_until

HUGE = 10**5000


def host_port(url: str) -> tuple[str, int]:
    address = url.removeprefix("ws://").partition("/")[0]
    host, _, port = address.partition(":")
    return host, int(port)


async def is_closed_by_server(stream: trio.SocketStream) -> bool:
    """Read until the server closes the stream."""
    try:
        while await stream.receive_some(4096):
            pass
    except trio.BrokenResourceError:
        pass
    return True


async def test_bignum_frames_close_the_connection_not_the_node() -> None:
    """The frames that killed a node: a > 4,300-digit int as ``op`` or as a map key."""
    frames = [
        cbor2.dumps({"id": 1, "op": HUGE}),
        cbor2.dumps({"id": 1, "op": "get", HUGE: 1}),
    ]
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"]) as cluster:
            url = cluster.urls["solo"]
            for frame in frames * 2:
                async with raw_ws(url) as ws:
                    await ws.send_message(frame)
                    with pytest.raises(ConnectionClosed) as closed:
                        await ws.get_message()
                    assert closed.value.reason is not None
                    assert closed.value.reason.code == 1007
            async with open_client(url) as kv:
                await kv.put("still", b"alive")
                assert await kv.get("still") == b"alive"


async def test_an_unexpected_exception_ends_only_its_connection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever escapes a connection's handler (here a planted bug) is logged, rate-limited,
    and closes that connection with 1011; the server and the node go on."""

    def broken(data: bytes | str) -> object:
        raise RuntimeError("a bug in the request decoder")

    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"]) as cluster:
            url, server = cluster.urls["solo"], cluster.servers["solo"]
            with monkeypatch.context() as patch:
                patch.setattr(trio_raft.kv._server, "decode_request", broken)
                for _ in range(3):
                    async with raw_ws(url) as ws:
                        await ws.send_message(cbor2.dumps({"id": 1, "op": "get", "key": "k"}))
                        with pytest.raises(ConnectionClosed) as closed:
                            await ws.get_message()
                        assert closed.value.reason is not None
                        assert closed.value.reason.code == 1011
                await wait_until(lambda: server.failed_connections == 3)
            async with open_client(url) as kv:
                await kv.put("still", b"alive")
            await wait_until(lambda: server.connections == 0)
    reports = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert len(reports) == 1  # rate-limited: one line for the three
    assert reports[0].levelno == logging.ERROR


async def test_never_upgrading_connections_count_and_the_oldest_go_first() -> None:
    """Plain TCP connections that never send the HTTP upgrade count against max_connections;
    when it is full, the oldest of them is closed for each newcomer, so a real client still
    gets in."""
    limit = 4
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"], max_connections=limit) as cluster:
            url, server = cluster.urls["solo"], cluster.servers["solo"]
            host, port = host_port(url)
            silent = [await trio.open_tcp_stream(host, port) for _ in range(limit)]
            await wait_until(lambda: server.connections == limit)
            newer = [await trio.open_tcp_stream(host, port) for _ in range(limit)]
            for stream in silent:  # each newcomer evicted the oldest silent one
                assert await is_closed_by_server(stream)
            assert server.connections <= limit
            async with open_client(url, timeout_s=2) as kv:
                await kv.put("k", b"v")
                assert server.connections <= limit
            assert server.evicted_connections >= limit + 1
            for stream in silent + newer:
                await stream.aclose()
            await wait_until(lambda: server.connections == 0)


async def test_a_silent_connection_is_closed_after_the_handshake_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trio_raft.kv._server, "HANDSHAKE_TIMEOUT_S", 0.2)
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"]) as cluster:
            url, server = cluster.urls["solo"], cluster.servers["solo"]
            stream = await trio.open_tcp_stream(*host_port(url))
            async with stream:
                await stream.send_all(b"GET /kv HTTP/1.1\r\nHost: x\r\n")  # never finished
                assert await is_closed_by_server(stream)
            await wait_until(lambda: server.connections == 0)


async def test_a_client_that_never_reads_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """64 ``get`` of a 256 KiB value, replies never read: the server keeps at most
    MAX_OUTPUT_BYTES of replies waiting, then closes the connection as a slow reader."""
    monkeypatch.setattr(trio_raft.kv._server, "SLOW_READER_TIMEOUT_S", 0.5, raising=False)
    with trio.fail_after(TEST_S + 2):
        async with kv_cluster(ids=["solo"]) as cluster:
            url, server = cluster.urls["solo"], cluster.servers["solo"]
            async with open_client(url) as kv:
                await kv.put("big", random.Random(0).randbytes(MAX_VALUE_BYTES))
            await wait_until(lambda: server.connections == 0)
            host, port = host_port(url)
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(
                    b"GET /kv HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n"
                )
                for i in range(64):
                    await stream.send_all(masked_frame(cbor2.dumps({"id": i, "op": "get",
                                                                    "key": "big"})))  # fmt: skip
                await wait_until(lambda: server.connections == 1)
                # Never read: the server gives up on us.
                await wait_until(lambda: server.connections == 0)


def masked_frame(payload: bytes) -> bytes:
    """One binary WebSocket frame from a client (masked with a zero key)."""
    assert len(payload) < 126
    return bytes([0x82, 0x80 | len(payload)]) + b"\x00\x00\x00\x00" + payload


async def test_status_of_the_server_counts() -> None:
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"], max_connections=7) as cluster:
            server: KVServer = cluster.servers["solo"]
            assert server.max_connections == 7
            async with raw_ws(cluster.urls["solo"]) as ws:
                assert (await request(ws, {"id": 1, "op": "status"}))["id"] == 1
                assert server.connections == 1
