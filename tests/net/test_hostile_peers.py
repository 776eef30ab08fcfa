"""The peer port against a stranger without the secret, on real loopback sockets.

A stranger used to be able to hold every inbound slot (connections that never upgrade, or that
say hello and never prove anything), so a restarted member could not rejoin until they timed
out. Now pending connections are a pool where newcomers evict the oldest, and authenticated
connections do not count against it: a member always gets in.
"""

from __future__ import annotations

import cbor2
import pytest
import trio

import trio_raft._transport._websocket as websocket_module
from trio_raft._codec import PROTOCOL_VERSION, encode
from trio_raft._transport._auth import new_nonce

from . import CLUSTER, closed_with, raw_client, transport, vote


def hello(client: str, server: str) -> bytes:
    return cbor2.dumps(
        {"t": "hello", "v": PROTOCOL_VERSION, "c": CLUSTER, "s": client, "d": server,
         "n": new_nonce()}
    )  # fmt: skip


async def test_a_member_gets_in_while_a_stranger_holds_every_pending_slot() -> None:
    slots = 4
    with trio.fail_after(5):
        # A long handshake timeout: the stranger's connections would hold their slots 30 s.
        async with transport("b", {"a": None}, max_connections=slots, handshake_timeout_s=30) as b:
            silent = [await trio.open_tcp_stream("127.0.0.1", b.port) for _ in range(3 * slots)]
            async with raw_client(b.url, client_id=None) as stuck:
                await stuck.send_message(hello("a", "b"))  # claims to be a; cannot prove it
                await stuck.get_message()  # the challenge: now it just sits there
                with trio.fail_after(2):  # the member: a full handshake, then a frame
                    async with raw_client(b.url) as member:
                        await member.send_message(encode(vote("a", "b"), cluster_id=CLUSTER))
                        assert await b.receive_channel.receive() == vote("a", "b")
                        stats = b.statistics()
                        assert stats.peers["a"].inbound_connections == 1
            for stream in silent:
                await stream.aclose()
    assert stats.evicted_connections >= 2 * slots
    assert stats.refused_connections == 0


async def test_authenticated_connections_do_not_count_against_the_pending_pool() -> None:
    with trio.fail_after(5):
        async with transport("b", {"a": None, "c": None}, max_connections=1) as b:
            async with raw_client(b.url) as from_a, raw_client(b.url, client_id="c") as from_c:
                for ws, sender in ((from_a, "a"), (from_c, "c")):
                    await ws.send_message(encode(vote(sender, "b"), cluster_id=CLUSTER))
                    assert await b.receive_channel.receive() == vote(sender, "b")
                assert b.statistics().open_connections == 2


async def test_an_unexpected_exception_ends_only_its_connection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The barrier: a bug while serving one inbound connection (planted in the frame decoder)
    closes that connection and is logged once per interval; the transport goes on."""

    def broken(data: bytes, **kwargs: object) -> object:
        raise RuntimeError("a bug in the decoder")

    with trio.fail_after(5):
        async with transport("b", {"a": None}) as b:
            with monkeypatch.context() as patch:
                patch.setattr(websocket_module, "decode", broken)
                for _ in range(2):
                    async with raw_client(b.url) as ws:
                        await ws.send_message(encode(vote("a", "b"), cluster_id=CLUSTER))
                        code, _ = await closed_with(ws)
                        assert code == 1006  # dropped (the stream is closed under it)
                await b.wait_statistics(lambda s: s.failed_connections == 2)
            async with raw_client(b.url) as ws:
                await ws.send_message(encode(vote("a", "b"), cluster_id=CLUSTER))
                assert await b.receive_channel.receive() == vote("a", "b")
    reports = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert len(reports) == 1


async def test_a_member_gets_in_while_a_stranger_floods_from_another_address() -> None:
    """A stranger opening connections as fast as it can (from 127.0.0.2, another address on
    Linux's loopback) only ever evicts its own: every handshake of the member succeeds."""
    with trio.fail_after(10):
        async with transport("b", {"a": None}, max_connections=4, handshake_timeout_s=30) as b:
            try:
                probe = await trio.open_tcp_stream("127.0.0.1", b.port, local_address="127.0.0.2")
            except OSError as exc:  # pragma: no cover  # e.g. macOS: only 127.0.0.1
                pytest.skip(f"cannot connect from 127.0.0.2: {exc}")
            await probe.aclose()
            opened = 0

            async def flood() -> None:
                nonlocal opened
                streams: list[trio.SocketStream] = []
                try:
                    while True:
                        streams.append(
                            await trio.open_tcp_stream(
                                "127.0.0.1", b.port, local_address="127.0.0.2"
                            )
                        )
                        opened += 1
                        if len(streams) > 100:
                            await streams.pop(0).aclose()
                finally:  # cancelled: close synchronously (an await would stop at the first)
                    for stream in streams:
                        stream.socket.close()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                await b.wait_statistics(lambda s: s.evicted_connections >= 20)
                for _ in range(10):
                    with trio.fail_after(2):
                        async with raw_client(b.url) as member:
                            await member.send_message(encode(vote("a", "b"), cluster_id=CLUSTER))
                            assert await b.receive_channel.receive() == vote("a", "b")
                nursery.cancel_scope.cancel()
            print(f"FIGURE peer flood: {opened} stranger connections, 10/10 member handshakes")
