"""The WebSocket transport follows the configuration: ``update_members`` and ``dial_overrides``.

Real loopback sockets on port 0; every wait is for a condition (``wait_statistics``, a
message, a close) bounded by :func:`trio.fail_after`, never for a length of time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection

from trio_raft._abc import MembershipAwareTransport
from trio_raft._codec import PROTOCOL_VERSION, encode
from trio_raft._transport import TransportStatistics
from trio_raft._transport._auth import Transcript, new_nonce

from . import (
    CLUSTER,
    SECRET,
    all_connected,
    closed_with,
    nothing_delivered,
    raw_client,
    transport,
    vote,
)
from .test_websocket_transport import task_tree

NOWHERE = "ws://127.0.0.1:9/raft"
"""A URL nothing in these tests listens on (the discard port): dialling it only fails."""


Check = Callable[[TransportStatistics], bool]


def connected_to(peer: str) -> Check:
    return lambda s: peer in s.peers and s.peers[peer].connected


def inbound_from(peer: str, count: int) -> Check:
    return lambda s: peer in s.peers and s.peers[peer].inbound_connections == count


def peers_are(*peers: str) -> Check:
    return lambda s: set(s.peers) == set(peers)


async def receive_cbor(ws: WebSocketConnection) -> Any:
    """The next message on ``ws``, a binary frame, decoded."""
    data = await ws.get_message()
    assert isinstance(data, bytes)
    return cbor2.loads(data)


def dial_tasks(src: str, dst: str) -> list[trio.lowlevel.Task]:
    return [task for task in task_tree() if task.name == f"trio_raft dial {src}->{dst}"]


async def wait_tasks_gone(src: str, dst: str) -> None:
    """Wait until no dial task ``src``->``dst`` is left (cancelled tasks need a turn to end)."""
    while dial_tasks(src, dst):
        await trio.testing.wait_all_tasks_blocked()


# -- adding ------------------------------------------------------------------------------------


async def test_a_member_added_later_exchanges_frames_both_ways() -> None:
    with trio.fail_after(5):
        async with transport("a", {}) as a, transport("b", {}) as b:
            assert a._admission.max_pending == 8  # 2 * 0 peers + 8
            a.update_members({"a": a.url, "b": b.url})  # its own id is ignored
            b.update_members({"a": {"peer": a.url, "client": "ws://127.0.0.1:1/kv"}})
            await a.wait_statistics(connected_to("b"))
            await b.wait_statistics(connected_to("a"))
            a.send(vote("a", "b"))
            assert await b.receive_channel.receive() == vote("a", "b")
            b.send(vote("b", "a", 2))
            assert await a.receive_channel.receive() == vote("b", "a", 2)
            stats = a.statistics()
            assert a._admission.max_pending == 10  # recomputed: 2 * 1 peer + 8
    assert set(stats.peers) == {"b"}
    assert stats.peers["b"].url == b.url
    assert (stats.peers["b"].frames_sent, stats.peers["b"].frames_received) == (1, 1)


async def test_an_explicit_max_connections_is_kept() -> None:
    async with transport("a", {}, max_connections=3) as a:
        a.update_members({"b": NOWHERE, "c": NOWHERE})
        assert a._admission.max_pending == 3


async def test_a_websocket_transport_is_membership_aware() -> None:
    async with transport("a", {}) as a:
        aware: MembershipAwareTransport = a
        assert callable(getattr(aware, "update_members", None))


# -- removing ----------------------------------------------------------------------------------


async def test_a_removed_member_is_closed_refused_forgotten_and_dropped() -> None:
    with trio.fail_after(5):
        async with transport("b", {"a": None, "c": None}) as b:
            async with raw_client(b.url, client_id="a") as ws:
                await ws.send_message(encode(vote("a", "b"), cluster_id=CLUSTER))
                assert await b.receive_channel.receive() == vote("a", "b")
                b.update_members({"c": None})
                assert await closed_with(ws) == (1000, "no longer a member")
            with pytest.raises(ConnectionClosed) as info:
                async with raw_client(b.url, client_id="a"):
                    pass  # pragma: no cover
            assert info.value.reason is not None
            assert (info.value.reason.code, info.value.reason.reason) == (1008, "unknown node id")
            b.send(vote("b", "a"))
            stats = await b.wait_statistics(lambda s: s.open_connections == 0)
    assert set(stats.peers) == {"c"}
    assert stats.dropped_unknown_peer == 1
    assert stats.handshake_failures == 1
    assert nothing_delivered(b)


async def test_a_removed_member_is_no_longer_dialled() -> None:
    before = task_tree()
    with trio.fail_after(5):
        async with transport("a", {}) as a, transport("b", {}) as b:
            a.update_members({"b": b.url})
            b.update_members({"a": a.url})
            await a.wait_statistics(all_connected)
            await b.wait_statistics(all_connected)
            assert len(dial_tasks("a", "b")) == 1
            a.update_members({})
            await wait_tasks_gone("a", "b")
            # a's connection to b is gone, and b's to a is closed by a: "no longer a member"
            await b.wait_statistics(inbound_from("a", 0))
            stats = await b.wait_statistics(lambda s: s.peers["a"].handshake_failures >= 1)
            assert a.statistics().peers == {}
            a.send(vote("a", "b"))
            assert a.statistics().dropped_unknown_peer == 1
    assert "unknown node id" in str(stats.peers["a"].last_failure)
    assert task_tree() <= before


async def test_a_handshake_racing_with_the_removal_fails_cleanly() -> None:
    """The id was a member when the hello arrived and is not when the proof does: the
    connection is refused, nothing is half-registered."""
    with trio.fail_after(5):
        async with transport("b", {"a": None}) as b:
            async with raw_client(b.url, client_id=None) as ws:
                nonce = new_nonce()
                hello = {"t": "hello", "v": PROTOCOL_VERSION, "c": CLUSTER, "s": "a", "d": "b"}
                await ws.send_message(cbor2.dumps({**hello, "n": nonce}))
                challenge = await receive_cbor(ws)
                b.update_members({})  # while the proof is on its way
                transcript = Transcript(CLUSTER, "a", "b", nonce, challenge["n"])
                proof = transcript.proof(SECRET, server=False)
                await ws.send_message(cbor2.dumps({"t": "proof", "p": proof}))
                assert await receive_cbor(ws) == {"t": "welcome"}
                await ws.send_message(encode(vote("a", "b"), cluster_id=CLUSTER))
                assert await closed_with(ws) == (1008, "unknown node id")
            stats = await b.wait_statistics(lambda s: s.open_connections == 0)
    assert stats.peers == {} and stats.handshake_failures == 1
    assert b._admission.established == 0 and b._admission.pending == 0
    assert nothing_delivered(b)


async def test_a_member_added_again_is_a_fresh_peer() -> None:
    with trio.fail_after(5):
        async with transport("a", {}) as a, transport("b", {}) as b:
            b.update_members({"a": a.url})
            a.update_members({"b": b.url})
            await a.wait_statistics(connected_to("b"))
            a.update_members({})
            a.update_members({"b": b.url})
            stats = await a.wait_statistics(connected_to("b"))
            a.send(vote("a", "b", 7))
            assert await b.receive_channel.receive() == vote("a", "b", 7)
            await wait_tasks_gone_but_one(a.node_id, "b")
    assert stats.peers["b"].connects == 1  # counters start again


async def wait_tasks_gone_but_one(src: str, dst: str) -> None:
    while len(dial_tasks(src, dst)) > 1:
        await trio.testing.wait_all_tasks_blocked()


async def test_thousands_of_updates_leave_no_task_behind() -> None:
    with trio.fail_after(20):
        async with transport("x", {}) as x, transport("b", {}) as b:
            x.update_members({"b": b.url})
            await trio.testing.wait_all_tasks_blocked()
            baseline = task_tree()
            for i in range(3000):
                b.update_members({"x": x.url, f"p{i % 7}": NOWHERE})
                if i % 3 == 0:
                    await trio.lowlevel.checkpoint()  # some dial tasks get to start
                if i == 1500:
                    await b.wait_statistics(connected_to("x"))  # one real connection
            b.update_members({})
            for i in range(7):
                await wait_tasks_gone("b", f"p{i}")
            await wait_tasks_gone("b", "x")
            await x.wait_statistics(inbound_from("b", 0))
            await trio.testing.wait_all_tasks_blocked()
            assert task_tree() <= baseline
            assert b._links == {} and b._addresses == {} and b._overrides == {}
            assert b._admission.max_pending == 8


# -- addresses ---------------------------------------------------------------------------------


async def test_dial_overrides_win_over_the_configuration() -> None:
    with trio.fail_after(5):
        async with transport("b", {}) as b:
            b.update_members({"a": None})
            async with transport("a", {}, dial_overrides={"b": b.url}) as a:
                a.update_members({"b": NOWHERE})
                stats = await a.wait_statistics(connected_to("b"))
                a.update_members({"b": {"peer": "ws://127.0.0.1:10/raft"}})  # changed: still b.url
                assert a.statistics().peers["b"].url == b.url
    assert stats.peers["b"].url == b.url and stats.peers["b"].connect_failures == 0


async def test_set_peer_url_wins_over_the_configuration() -> None:
    with trio.fail_after(5):
        async with transport("b", {}) as b, transport("a", {}) as a:
            b.update_members({"a": None})
            a.update_members({"b": NOWHERE})
            a.set_peer_url("b", b.url)
            await a.wait_statistics(connected_to("b"))
            a.update_members({"b": "ws://127.0.0.1:10/raft"})
            a.update_members({})
            with pytest.raises(KeyError):
                a.set_peer_url("b", b.url)
            a.update_members({"b": NOWHERE})  # back: the URL set earlier still wins
            stats = await a.wait_statistics(connected_to("b"))
    assert stats.peers["b"].url == b.url


async def test_a_changed_address_moves_the_connection() -> None:
    with trio.fail_after(5):
        async with transport("a", {}) as a, transport("b", {}) as old_b, transport("b", {}) as b:
            old_b.update_members({"a": None})
            b.update_members({"a": None})
            a.update_members({"b": {"peer": old_b.url}})
            await a.wait_statistics(connected_to("b"))
            a.update_members({"b": {"peer": b.url}})
            await b.wait_statistics(inbound_from("a", 1))
            await old_b.wait_statistics(inbound_from("a", 0))
            await a.wait_statistics(connected_to("b"))
            a.send(vote("a", "b"))
            assert await b.receive_channel.receive() == vote("a", "b")
            assert nothing_delivered(old_b)


@pytest.mark.parametrize(
    "address",
    [None, {"client": "ws://127.0.0.1:1/kv"}, "http://127.0.0.1:1/raft", {"peer": 7}, ["x"]],
)
async def test_an_address_without_a_peer_url_is_kept_but_not_dialled(
    address: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "trio_raft.transport")
    with trio.fail_after(5):
        async with transport("a", {}) as a, transport("b", {}) as b:
            for _ in range(3):  # logged once
                a.update_members({"b": address})
            stats = a.statistics().peers["b"]
            assert stats.url is None and not stats.connected
            b.update_members({"a": a.url})  # a still accepts b: b is a member
            await a.wait_statistics(inbound_from("b", 1))
            await b.wait_statistics(connected_to("a"))
            b.send(vote("b", "a"))
            assert await a.receive_channel.receive() == vote("b", "a")
            stats = a.statistics().peers["b"]
    assert (stats.connects, stats.connect_failures, stats.url) == (0, 0, None)
    warnings = [r for r in caplog.records if "has no ws:// or wss:// URL" in r.getMessage()]
    assert len(warnings) == 1


async def test_without_a_configuration_address_the_url_in_peers_is_dialled() -> None:
    """``open_node(members=[ids])`` gives every member the address None: the URLs the
    transport was opened with stay in use."""
    with trio.fail_after(5):
        async with transport("b", {"a": None}) as b, transport("a", {"b": b.url}) as a:
            a.update_members({"b": None})
            stats = await a.wait_statistics(connected_to("b"))
    assert stats.peers["b"].url == b.url


async def test_repeated_identical_updates_change_nothing() -> None:
    with trio.fail_after(5):
        async with transport("a", {}) as a, transport("b", {}) as b:
            b.update_members({"a": None})
            a.update_members({"b": {"peer": b.url}})
            await a.wait_statistics(connected_to("b"))
            link = a._links["b"]
            tasks = task_tree()
            for _ in range(1000):
                a.update_members({"b": {"peer": b.url}})  # equal, not the same object
            assert a._links["b"] is link and link.connected
            await trio.testing.wait_all_tasks_blocked()
            assert task_tree() == tasks
            a.send(vote("a", "b"))
            assert await b.receive_channel.receive() == vote("a", "b")
            stats = a.statistics()
    assert stats.peers["b"].connects == 1 and stats.handshake_failures == 0


async def test_invalid_member_ids_are_refused_and_change_nothing() -> None:
    async with transport("a", {"b": None}) as a:
        with pytest.raises(ValueError, match="must be a str of 1 to 128"):
            a.update_members({"c": None, "x" * 129: None})
        with pytest.raises(ValueError, match="must be a str of 1 to 128"):
            a.update_members({3: None})  # type: ignore[dict-item]
        assert set(a.statistics().peers) == {"b"}


async def test_update_members_after_close_does_nothing() -> None:
    async with transport("a", {"b": None}) as a:
        pass
    a.update_members({"c": NOWHERE})
    assert set(a.statistics().peers) == {"b"}


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"a": "ws://127.0.0.1:1/raft"}, "must not contain 'a'"),
        ({"b": "http://x/raft"}, "peer URL must look like ws://"),
        ({"b": None}, "must be ws:// or wss:// URLs"),
        ({"": "ws://x:1/raft"}, "must be a str of 1 to 128"),
    ],
)
async def test_invalid_dial_overrides_are_refused(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        async with transport("a", {}, dial_overrides=overrides):
            pass  # pragma: no cover


async def test_a_third_node_joins_and_leaves_a_pair() -> None:
    """The joiner is opened with the members' URLs (as a joining node is); the members learn
    about it from their configuration, then forget it."""
    with trio.fail_after(10):
        async with transport("a", {}) as a, transport("b", {}) as b:
            a.update_members({"a": {"peer": a.url}, "b": {"peer": b.url}})
            b.update_members({"a": {"peer": a.url}, "b": {"peer": b.url}})
            async with transport("c", {"a": a.url, "b": b.url}) as c:
                members = {nid: {"peer": t.url} for nid, t in [("a", a), ("b", b), ("c", c)]}
                for t in (a, b, c):
                    t.update_members(members)
                for t in (a, b, c):
                    await t.wait_statistics(
                        lambda s: len(s.peers) == 2 and all_connected(s)
                        and all(p.inbound_connections == 1 for p in s.peers.values())
                    )  # fmt: skip
                for src, dst in [("a", "c"), ("c", "a"), ("b", "c"), ("c", "b")]:
                    {"a": a, "b": b, "c": c}[src].send(vote(src, dst))
                for t, sources in [(a, {"c"}), (b, {"c"}), (c, {"a", "b"})]:
                    got = {(await t.receive_channel.receive()).src for _ in sources}
                    assert got == sources
                del members["c"]
                a.update_members(members)
                b.update_members(members)
                for t, other in [(a, "b"), (b, "a")]:
                    await t.wait_statistics(peers_are(other))
                    await t.wait_statistics(inbound_from(other, 1))
                stats = await c.wait_statistics(
                    lambda s: all(
                        not p.connected and p.inbound_connections == 0 and p.handshake_failures
                        for p in s.peers.values()
                    )
                )
                a.send(vote("a", "c"))
                assert a.statistics().dropped_unknown_peer == 1
    for peer in stats.peers.values():
        assert "unknown node id" in str(peer.last_failure)
