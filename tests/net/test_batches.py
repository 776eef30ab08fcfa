"""Frames coalesced into batches on connections that negotiate them (see wire.rst, "Batches").

Real loopback sockets on port 0; waits are event-driven and bounded by :func:`trio.fail_after`.
"""

from __future__ import annotations

import contextlib

import hypothesis.strategies as st
import pytest
import trio
from hypothesis import given

from trio_raft._codec import FrameError, cbor_uint, encode
from trio_raft._messages import AppendResponse, SnapshotRequest
from trio_raft._transport._auth import BATCH_SUBPROTOCOL, SUBPROTOCOL
from trio_raft._transport._batch import MAX_BATCH_FRAMES, encode_batch, split_batch
from trio_raft._types import Membership

from . import CLUSTER, closed_with, nothing_delivered, open_mesh, raw_client, transport, vote

# -- the batch framing ------------------------------------------------------------------------


@given(st.lists(st.binary(min_size=1, max_size=300), min_size=2, max_size=MAX_BATCH_FRAMES))
def test_batches_split_into_their_frames(frames: list[bytes]) -> None:
    assert split_batch(encode_batch(frames)) == frames


def test_a_frame_alone_is_not_a_batch() -> None:
    frame = encode(vote("a", "b"), cluster_id=CLUSTER)
    assert split_batch(frame) == [frame]


ONE = encode(vote("a", "b"), cluster_id=CLUSTER)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", r"^empty message$"),
        (b"\x05", r"got CBOR major type 0"),
        (b"\x81" + b"\x41x", r"^batch of 1 frames \(expected 2 to 256\)$"),
        (b"\x99\x01\x01", r"^batch of 257 frames"),
        (b"\x82\x41x\x01", r"^batch item 1: expected a byte string$"),
        (b"\x82\x41x", r"^batch item 1: expected a byte string$"),
        (b"\x82\x41x\x45ab", r"^batch item 1: 5 bytes, past the end"),
        (b"\x82\x41x\x41yz", r"^1 trailing bytes after the batch$"),
        (b"\x9f\x41x\x41y\xff", r"definite lengths only"),
        (b"\x82\x41x\x5f\x41y\xff", r"definite lengths only"),
        (b"\x82\x41x\xd8\x18\x41y", r"^batch item 1: expected a byte string$"),  # a tag
        (b"\x82\x41x\x5b\x00\x00", r"truncated CBOR head"),
    ],
)
def test_malformed_batches_are_refused(data: bytes, match: str) -> None:
    with pytest.raises(FrameError, match=match):
        split_batch(data)


@given(st.binary(max_size=64))
def test_random_bytes_raise_only_frame_error(data: bytes) -> None:
    with contextlib.suppress(FrameError):
        split_batch(data)


def test_heads_in_batches_are_the_shortest_form() -> None:
    frames = [b"x" * 300, ONE]
    assert 24 <= len(ONE) < 256
    head = b"\x58" + bytes([len(ONE)])
    assert encode_batch(frames) == b"\x82" + b"\x59\x01\x2c" + frames[0] + head + ONE
    assert cbor_uint(300) == b"\x19\x01\x2c"


# -- on the connection ------------------------------------------------------------------------


async def test_queued_frames_travel_in_batches_in_order() -> None:
    with trio.fail_after(5):
        async with open_mesh(["a", "b"], send_queue_size=256) as mesh:
            a, b = mesh["a"], mesh["b"]
            await a.wait_statistics(lambda s: s.peers["b"].connected)
            for term in range(200):  # sync sends: all queued before the writer runs
                a.send(AppendResponse("a", "b", term, True, term))
            for term in range(200):
                message = await b.receive_channel.receive()
                assert message.term == term
            stats = await a.wait_statistics(lambda s: s.peers["b"].frames_sent == 200)
    peer = stats.peers["b"]
    assert peer.messages_sent < 200  # coalesced
    frames = [encode(AppendResponse("a", "b", t, True, t), cluster_id=CLUSTER) for t in range(200)]
    assert peer.bytes_sent == sum(map(len, frames))  # frames, not batch heads
    assert b.statistics().peers["a"].frames_received == 200


async def test_batches_respect_the_size_cap() -> None:
    """Frames bigger than half the cap never share a message."""
    with trio.fail_after(5):
        async with open_mesh(["a", "b"], max_message_bytes=8192) as mesh:
            a, b = mesh["a"], mesh["b"]
            await a.wait_statistics(lambda s: s.peers["b"].connected)
            members = Membership({"a", "b"})
            for i in range(6):
                a.send(SnapshotRequest("a", "b", 2, 1, 1, i, b"x" * 5000, False, members))
            a.send(vote("a", "b"))
            for i in range(6):
                message = await b.receive_channel.receive()
                assert isinstance(message, SnapshotRequest) and message.offset == i
            assert (await b.receive_channel.receive()) == vote("a", "b")
            stats = await a.wait_statistics(lambda s: s.peers["b"].frames_sent == 7)
    assert stats.peers["b"].messages_sent >= 6


async def test_a_listener_picks_batches_only_if_offered() -> None:
    with trio.fail_after(5):
        async with transport("b", {"a": None}) as b:
            async with raw_client(b.url) as ws:
                assert ws.subprotocol == SUBPROTOCOL  # a dialer of an earlier release
                await ws.send_message(ONE)
                assert (await b.receive_channel.receive()) == vote("a", "b")
            async with raw_client(b.url, subprotocols=[BATCH_SUBPROTOCOL, SUBPROTOCOL]) as ws:
                assert ws.subprotocol == BATCH_SUBPROTOCOL
                two = encode(vote("a", "b", 2), cluster_id=CLUSTER)
                await ws.send_message(encode_batch([ONE, two]))
                assert (await b.receive_channel.receive()).term == 1
                assert (await b.receive_channel.receive()).term == 2


async def test_a_batch_on_a_connection_without_batches_is_an_invalid_frame() -> None:
    with trio.fail_after(5):
        async with transport("b", {"a": None}) as b:
            async with raw_client(b.url) as ws:
                await ws.send_message(encode_batch([ONE, ONE]))
                assert (await closed_with(ws))[0] == 1007
            await b.wait_statistics(lambda s: s.decode_failures == 1)
            assert nothing_delivered(b)


async def test_a_forged_frame_inside_a_batch_drops_the_connection() -> None:
    with trio.fail_after(5):
        async with transport("b", {"a": None, "c": None}) as b:
            async with raw_client(b.url, subprotocols=[BATCH_SUBPROTOCOL]) as ws:
                forged = encode(vote("c", "b"), cluster_id=CLUSTER)
                await ws.send_message(encode_batch([ONE, forged]))
                assert (await closed_with(ws))[0] == 1008
            assert (await b.receive_channel.receive()) == vote("a", "b")  # the one before
            await b.wait_statistics(lambda s: s.decode_failures == 1)


async def test_a_malformed_batch_drops_the_connection() -> None:
    with trio.fail_after(5):
        async with transport("b", {"a": None}) as b:
            async with raw_client(b.url, subprotocols=[BATCH_SUBPROTOCOL]) as ws:
                await ws.send_message(b"\x82\x41x")
                assert (await closed_with(ws))[0] == 1007
            await b.wait_statistics(lambda s: s.decode_failures == 1)
            assert nothing_delivered(b)


async def test_a_dialer_without_batches_on_the_other_side_sends_frames_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listener of an earlier release accepts only the plain subprotocol."""
    from trio_raft._transport import _auth

    monkeypatch.setattr(_auth, "BATCH_SUBPROTOCOL", "not offered by anyone")
    with trio.fail_after(5):
        async with open_mesh(["a", "b"]) as mesh:
            a, b = mesh["a"], mesh["b"]
            await a.wait_statistics(lambda s: s.peers["b"].connected)
            for term in range(50):
                a.send(vote("a", "b", term))
            for term in range(50):
                assert (await b.receive_channel.receive()).term == term
            stats = await a.wait_statistics(lambda s: s.peers["b"].frames_sent == 50)
    assert stats.peers["b"].messages_sent == 50
