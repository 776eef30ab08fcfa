"""The cluster benchmark's client protocol: the codec, and a front server fed bad frames."""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
import trio

from benchmarks._cluster_node import null_handler, serve_front
from benchmarks._cluster_protocol import (
    MAX_FRAME_BYTES,
    FrameBuffer,
    Op,
    ProtocolError,
    Reply,
    Request,
    Status,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
)


def test_requests_and_replies_round_trip_even_fed_one_byte_at_a_time() -> None:
    stream = (
        encode_request(1, Op.WRITE, b"key", b"v" * 100)
        + encode_request(2, Op.READ, b"key")
        + encode_request(0xFFFFFFFF, Op.STATUS)
    )
    frames = FrameBuffer()
    bodies = [body for i in range(len(stream)) for body in frames.feed(stream[i : i + 1])]
    frames.check_eof()
    assert [decode_request(b) for b in bodies] == [
        Request(1, Op.WRITE, b"key", b"v" * 100),
        Request(2, Op.READ, b"key", b""),
        Request(0xFFFFFFFF, Op.STATUS, b"", b""),
    ]
    reply = encode_reply(7, Status.REDIRECT, b"n2")
    [body] = FrameBuffer().feed(reply)
    assert decode_reply(body) == Reply(7, Status.REDIRECT, b"n2")


def test_an_oversized_length_is_refused_before_its_body_arrives() -> None:
    frames = FrameBuffer()
    with pytest.raises(ProtocolError, match="more than the limit"):
        frames.feed(struct.pack("!I", MAX_FRAME_BYTES + 1))


def test_an_empty_frame_is_refused() -> None:
    with pytest.raises(ProtocolError, match="empty body"):
        FrameBuffer().feed(struct.pack("!I", 0))


def test_a_stream_ending_inside_a_frame_is_reported() -> None:
    frames = FrameBuffer()
    assert frames.feed(encode_request(1, Op.WRITE, b"k", b"value")[:-2]) == []
    with pytest.raises(ProtocolError, match="ended inside a frame"):
        frames.check_eof()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x00\x00", "at least 7 bytes"),
        (struct.pack("!IBH", 1, 9, 0), "unknown op 9"),
        (struct.pack("!IBH", 1, Op.READ, 10) + b"abc", "does not fit"),
    ],
)
def test_malformed_requests_get_a_clear_error(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_request(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"\x00", "at least 5 bytes"), (struct.pack("!IB", 3, 42), "unknown status 42")],
)
def test_malformed_replies_get_a_clear_error(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_reply(body)


def test_the_encoder_refuses_what_the_decoder_would() -> None:
    with pytest.raises(ProtocolError, match="key is at most"):
        encode_request(1, Op.WRITE, b"k" * 70_000)
    with pytest.raises(ProtocolError, match="frame body is at most"):
        encode_request(1, Op.WRITE, b"k", b"v" * MAX_FRAME_BYTES)


async def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, then read until the server closes the connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = b""
    async with stream:
        await stream.send_all(data)
        while chunk := await stream.receive_some(1 << 16):
            received += chunk
    return received


async def test_the_front_server_answers_then_drops_a_connection_sending_garbage() -> None:
    with trio.fail_after(10):  # a hang detector on the real clock (real sockets)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_front, null_handler("n1"), 0)
            good = encode_request(5, Op.WRITE, b"k", b"v") + encode_request(6, Op.READ, b"k")
            received = await _exchange(port, good + struct.pack("!I", MAX_FRAME_BYTES + 1))
            frames = FrameBuffer()
            replies = sorted((decode_reply(b) for b in frames.feed(received)), key=lambda r: r.id)
            assert replies == [Reply(5, Status.OK, b""), Reply(6, Status.OK, b"v")]
            frames.check_eof()
            # A bad op, and a frame cut off by the end of the stream: dropped, no reply.
            assert await _exchange(port, struct.pack("!I", 7) + struct.pack("!IBH", 1, 9, 0)) == b""
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(encode_request(1, Op.WRITE, b"k", b"v")[:-1])
            await stream.send_eof()
            assert await stream.receive_some(1 << 16) == b""
            await stream.aclose()
            # The server still serves new connections.
            body = await _exchange_one(port, encode_request(8, Op.READ, b"k"))
            assert decode_reply(body) == Reply(8, Status.OK, b"v")
            nursery.cancel_scope.cancel()


async def _exchange_one(port: int, request: bytes) -> bytes:
    """Send one request; return the first reply's body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        frames = FrameBuffer()
        while True:
            bodies = frames.feed(await stream.receive_some(1 << 16))
            if bodies:
                return bodies[0]


async def test_a_client_resetting_its_connection_does_not_stop_the_server() -> None:
    # A client that gives up (a timeout) and resets the connection while its request is still
    # being handled: the reply's write fails, and the server must carry on serving others.
    release = trio.Event()

    def slow(
        request: Request, reply: Callable[[tuple[int, Status, bytes]], None]
    ) -> Awaitable[None]:
        async def later() -> None:
            await release.wait()
            reply((request.id, Status.OK, b"late"))

        return later()

    with trio.fail_after(10):  # a hang detector on the real clock (real sockets)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_front, slow, 0)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(encode_request(1, Op.WRITE, b"k", b"v"))
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await stream.aclose()  # RST: the server's next write to it fails
            await trio.sleep(0.05)
            release.set()
            await trio.sleep(0.05)
            release = trio.Event()
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(encode_request(2, Op.WRITE, b"k", b"v"))
                release.set()
                [body] = FrameBuffer().feed(await stream.receive_some(1 << 16))
            assert decode_reply(body) == Reply(2, Status.OK, b"late")
            nursery.cancel_scope.cancel()
