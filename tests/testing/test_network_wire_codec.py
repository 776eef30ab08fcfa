"""``MemoryNetwork(wire_codec=True)``: every message goes through the real codec."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from trio_raft._messages import AppendRequest, Message, SnapshotRequest, TimeoutNow, VoteRequest
from trio_raft._types import Entry, EntryKind, Membership
from trio_raft.testing._network import MemoryNetwork, WireCodecError


async def test_messages_are_delivered_after_a_round_trip(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(random.Random(1), wire_codec=True)
    a, b = network.transport("a"), network.transport("b")
    message = AppendRequest("a", "b", 2, 0, 0, (Entry(2, 1, ("put", "k", (1, 2))),), 0)
    async with trio.open_nursery() as nursery:
        await nursery.start(network.run)
        a.send(message)
        a.send(VoteRequest("a", "b", 3, 1, 2))
        assert await b.receive_channel.receive() == message  # the original, tuples and all
        assert await b.receive_channel.receive() == VoteRequest("a", "b", 3, 1, 2)
        nursery.cancel_scope.cancel()


def test_a_message_the_codec_refuses_stops_the_sender_loudly() -> None:
    network = MemoryNetwork(random.Random(1), wire_codec=True)
    a = network.transport("a")
    network.transport("b")
    unencodable = AppendRequest("a", "b", 2, 0, 0, (Entry(2, 1, {"a set": {1, 2}}),), 0)
    with pytest.raises(WireCodecError, match=r"does not survive the wire codec: .*set is not"):
        a.send(unencodable)
    assert network.stats().total.sent == 0  # refused before the network saw it


async def test_protocol_2_messages_are_delivered_after_a_round_trip(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Memberships (in a CONFIG entry and in a snapshot chunk) compare in canonical form, tuple
    addresses included; TimeoutNow and a transfer's VoteRequest pass too."""
    network = MemoryNetwork(random.Random(1), wire_codec=True)
    a, b = network.transport("a"), network.transport("b")
    membership = Membership({"a", "b"}, (), (), {"a": ("ws://a", 1), "b": None})
    messages: list[Message] = [
        AppendRequest("a", "b", 2, 0, 0, (Entry(2, 1, membership, EntryKind.CONFIG),), 0),
        SnapshotRequest("a", "b", 2, 5, 1, 0, b"state", False, membership),
        TimeoutNow("a", "b", 2),
        VoteRequest("a", "b", 3, 1, 2, transfer=True),
    ]
    async with trio.open_nursery() as nursery:
        await nursery.start(network.run)
        for message in messages:
            a.send(message)
        received = [await b.receive_channel.receive() for _ in messages]  # in any order
        nursery.cancel_scope.cancel()
    assert all(message in received for message in messages)
