"""The cluster benchmark's client protocol: the codec, and a front server fed bad frames."""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from benchmarks._cluster_node import BenchStateMachine, null_handler, raft_handler, serve_front
from benchmarks._cluster_node import Reply as Answer
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
from trio_raft.testing import open_simulated_cluster


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


@pytest.mark.parametrize("task_per_write", [False, True], ids=["on_done", "task"])
async def test_the_raft_handler_answers_writes_reads_and_redirects(
    autojump_clock: trio.testing.MockClock, task_per_write: bool
) -> None:
    """Both ways the benchmark node answers writes (``propose_nowait`` with ``on_done``, or a
    task per write awaiting ``propose``) commit them and reply once each; a follower redirects
    to the leader; reads see the writes."""
    replies: list[Answer] = []
    all_in = trio.Event()

    def reply(item: Answer) -> None:
        replies.append(item)
        if len(replies) == 21:
            all_in.set()

    async def run(waiting: Awaitable[None]) -> None:
        await waiting

    with trio.fail_after(30):
        async with open_simulated_cluster(
            3, seed=2, state_machine_factory=BenchStateMachine
        ) as cluster:
            leader = await cluster.wait_leader()
            await cluster.wait_converged()
            follower = cluster.node(next(n for n in cluster.node_ids if n != leader.id))
            on_leader = raft_handler(leader, task_per_write=task_per_write)
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    waiting = on_leader(Request(i, Op.WRITE, b"k%d" % i, b"v%d" % i), reply)
                    assert (waiting is None) is not task_per_write  # no task per write
                    if waiting is not None:
                        nursery.start_soon(run, waiting)
                waiting = raft_handler(follower, task_per_write=task_per_write)(
                    Request(20, Op.WRITE, b"k", b"v"), reply
                )
                if waiting is not None:
                    nursery.start_soon(run, waiting)
                await all_in.wait()  # answered from on_done: no task here waits for them
            assert sorted(r[0] for r in replies) == list(range(21))  # one reply each
            by_id = {r[0]: r for r in replies}
            assert by_id[20][1:] == (Status.REDIRECT, leader.id.encode())
            assert all(by_id[i][1:] == (Status.OK, b"") for i in range(20))
            read = on_leader(Request(21, Op.READ, b"k7", b""), replies.append)
            assert read is not None
            await read
            assert replies[-1] == (21, Status.OK, b"v7")
