"""The WebSocket transport over real loopback sockets (port 0 everywhere).

Real sockets take real time, so waits are event-driven (``wait_statistics``, receiving from a
channel) and merely bounded by :func:`trio.fail_after`; nothing asserts on timing.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import cbor2
import pytest
import trio
import trustme
from trio_websocket import ConnectionRejected

from trio_raft._codec import encode
from trio_raft._logging import RAFT_FIELDS
from trio_raft._messages import AppendRequest, Message, VoteResponse
from trio_raft._transport import WebSocketTransport, open_websocket_transport
from trio_raft._transport._auth import SUBPROTOCOL
from trio_raft._types import Entry

from . import (
    CLUSTER,
    SECRET,
    all_connected,
    closed_with,
    nothing_delivered,
    open_mesh,
    raw_client,
    transport,
    vote,
    wait_all_connected,
)

# -- exchanging messages ----------------------------------------------------------------------


async def test_two_transports_exchange_messages_both_ways() -> None:
    with trio.fail_after(5):
        async with open_mesh(["a", "b"]) as mesh:
            a, b = mesh["a"], mesh["b"]
            await wait_all_connected(mesh)
            request = AppendRequest(
                "a", "b", 3, 0, 0, (Entry(3, 1, ["put", "k", "v"]), Entry(3, 2, {"x": b"\x00"})), 1
            )
            a.send(request)
            assert await b.receive_channel.receive() == request
            answer = VoteResponse("b", "a", 3, granted=True)
            b.send(answer)
            assert await a.receive_channel.receive() == answer
            stats = a.statistics()
    peer = stats.peers["b"]
    assert (peer.frames_sent, peer.frames_received) == (1, 1)
    assert peer.bytes_sent == len(encode(request, cluster_id=CLUSTER))
    assert peer.connects == 1 and peer.handshake_failures == 0 and peer.inbound_connections == 1


async def test_three_transports_keep_per_connection_order() -> None:
    with trio.fail_after(5):
        async with open_mesh(["a", "b", "c"], send_queue_size=512) as mesh:
            await wait_all_connected(mesh)
            for term in range(300):
                for src in mesh:
                    for dst in mesh:
                        if src != dst:
                            mesh[src].send(vote(src, dst, term))
            for dst, t in mesh.items():
                next_term = dict.fromkeys(set(mesh) - {dst}, 0)
                for _ in range(2 * 300):
                    message = await t.receive_channel.receive()
                    assert message.term == next_term[message.src], "reordered on one connection"
                    next_term[message.src] += 1


async def test_deliver_into_redirects_delivery_and_hands_it_back() -> None:
    """A node's inbox takes delivery (with what already waited) and gives it back at close:
    one transport may serve a node, then a restarted one; a closed inbox loses its messages,
    never the connection."""
    with trio.fail_after(5):
        async with open_mesh(["a", "b"]) as mesh:
            a, b = mesh["a"], mesh["b"]
            await wait_all_connected(mesh)
            a.send(vote("a", "b", 1))
            await b.wait_statistics(lambda s: s.peers["a"].frames_received == 1)
            inbox_send, inbox = trio.open_memory_channel[Message](4)
            b.deliver_into(inbox_send)
            assert inbox.receive_nowait().term == 1  # it waited in receive_channel: moved
            a.send(vote("a", "b", 2))
            assert (await inbox.receive()).term == 2
            inbox_send.close()  # the node shut down without handing delivery back
            a.send(vote("a", "b", 3))
            await b.wait_statistics(lambda s: s.peers["a"].frames_received == 3)
            b.deliver_into(None)
            a.send(vote("a", "b", 4))
            assert (await b.receive_channel.receive()).term == 4  # 3 was lost, not queued
            assert b.statistics().peers["a"].inbound_connections == 1


@pytest.mark.process  # binds its old port again, a fixed port: `nox -s processes`
async def test_reconnects_after_the_peer_restarts_on_the_same_port() -> None:
    with trio.fail_after(5):
        async with transport("a", {"b": None}) as a:
            async with transport("b", {"a": a.url}) as b:
                a.set_peer_url("b", b.url)
                port = b.port
                await a.wait_statistics(all_connected)
            await a.wait_statistics(lambda s: not s.peers["b"].connected)
            a.send(vote("a", "b"))  # nobody there: dropped, counted
            async with transport("b", {"a": a.url}, port=port) as b:
                stats = await a.wait_statistics(all_connected)
                a.send(vote("a", "b", 2))
                assert await b.receive_channel.receive() == vote("a", "b", 2)
    assert stats.peers["b"].connects == 2
    assert stats.peers["b"].dropped_not_connected >= 1


async def test_set_peer_url_moves_the_connection() -> None:
    with trio.fail_after(5):
        async with transport("a", {"b": None}) as a:
            async with transport("b", {"a": a.url}) as old_b, transport("b", {"a": a.url}) as b:
                a.set_peer_url("b", old_b.url)
                await a.wait_statistics(all_connected)
                a.set_peer_url("b", b.url)
                await b.wait_statistics(lambda s: s.peers["a"].inbound_connections == 1)
                await a.wait_statistics(all_connected)
                a.send(vote("a", "b"))
                assert await b.receive_channel.receive() == vote("a", "b")
                assert nothing_delivered(old_b)


# -- drops ------------------------------------------------------------------------------------


async def test_send_drops_and_counts_when_not_connected_or_unknown() -> None:
    async with transport("a", {"b": None}) as a:
        a.send(vote("a", "b"))
        a.send(vote("a", "zed"))
        with pytest.raises(ValueError, match="cannot send a message from 'b'"):
            a.send(vote("b", "a"))
        stats = a.statistics()
    assert stats.peers["b"].dropped_not_connected == 1
    assert stats.dropped_unknown_peer == 1


async def test_full_queues_drop_and_count() -> None:
    with trio.fail_after(5):
        async with open_mesh(["a", "b"], send_queue_size=16) as mesh:
            a, b = mesh["a"], mesh["b"]
            await wait_all_connected(mesh)
            for term in range(100):  # no checkpoint: the writer cannot run in between
                a.send(vote("a", "b", term))
            stats = a.statistics().peers["b"]
            # The writer was waiting on the queue, so the first frame went straight to it.
            assert (stats.queued_frames, stats.dropped_queue_full) == (16, 83)
            for term in range(17):
                assert (await b.receive_channel.receive()).term == term
            await a.wait_statistics(lambda s: s.peers["b"].frames_sent == 17)


async def test_the_byte_bound_of_the_queue_drops_too() -> None:
    limits = {"max_message_bytes": 2048, "send_queue_bytes": 2048}
    with trio.fail_after(5):
        async with open_mesh(["a", "b"], **limits) as mesh:
            a = mesh["a"]
            await wait_all_connected(mesh)
            big = AppendRequest("a", "b", 1, 0, 0, (Entry(1, 1, "x" * 800),), 0)
            for _ in range(3):  # 2 * 8xx bytes fit in 2048, 3 do not
                a.send(big)
            stats = a.statistics().peers["b"]
    assert stats.queued_bytes == 2 * len(encode(big, cluster_id=CLUSTER))
    assert stats.dropped_queue_full == 1


async def test_frames_above_the_limit_are_not_sent() -> None:
    with trio.fail_after(5):
        async with open_mesh(["a", "b"], max_message_bytes=1024) as mesh:
            a, b = mesh["a"], mesh["b"]
            await wait_all_connected(mesh)
            a.send(AppendRequest("a", "b", 1, 0, 0, (Entry(1, 1, "x" * 2000),), 0))
            a.send(vote("a", "b"))
            assert await b.receive_channel.receive() == vote("a", "b")
            assert a.statistics().peers["b"].dropped_too_large == 1


async def test_unencodable_commands_are_dropped_not_raised() -> None:
    with trio.fail_after(5):
        async with open_mesh(["a", "b"]) as mesh:
            a = mesh["a"]
            await wait_all_connected(mesh)
            a.send(AppendRequest("a", "b", 1, 0, 0, (Entry(1, 1, {1, 2}),), 0))
            assert a.statistics().peers["b"].dropped_unencodable == 1


async def test_oversize_messages_close_the_connection_with_1009() -> None:
    with trio.fail_after(5):
        async with transport("b", {"a": None}, max_message_bytes=1024) as b:
            async with raw_client(b.url) as ws:
                big = AppendRequest("a", "b", 1, 0, 0, (Entry(1, 1, "x" * 2000),), 0)
                await ws.send_message(encode(big, cluster_id=CLUSTER))
                assert (await closed_with(ws))[0] == 1009
            stats = await b.wait_statistics(lambda s: s.decode_failures == 1)
    assert stats.peers["a"].decode_failures == 1
    assert nothing_delivered(b)


# -- refusals ---------------------------------------------------------------------------------


async def refused_both_ways(a: WebSocketTransport, b: WebSocketTransport) -> None:
    await a.wait_statistics(lambda s: s.handshake_failures >= 1)
    await b.wait_statistics(lambda s: s.handshake_failures >= 1)
    assert not a.statistics().peers["b"].connected
    assert a.statistics().peers["b"].frames_sent == 0
    assert nothing_delivered(a) and nothing_delivered(b)


async def test_a_wrong_secret_is_refused() -> None:
    with trio.fail_after(5):
        async with transport("b", {"a": None}) as b:
            async with transport("a", {"b": b.url}, secret=b"not the cluster secret") as a:
                await refused_both_ways(a, b)
                failure = a.statistics().peers["b"].last_failure
    assert failure is not None and "server failed to prove cluster membership" in failure


async def test_a_wrong_cluster_id_is_refused() -> None:
    with trio.fail_after(5):
        async with transport("b", {"a": None}) as b:
            async with transport("a", {"b": b.url}, cluster_id="another-cluster") as a:
                await refused_both_ways(a, b)
                failure = a.statistics().peers["b"].last_failure
    assert failure is not None and "(1008 wrong cluster id)" in failure


async def test_refusals_are_logged_with_facts_and_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Both ends say who was refused and why; repeated dials of the same peer with the same
    fault add no line (one per address and reason a minute, with the count)."""
    caplog.set_level(logging.INFO, logger="trio_raft.transport")
    with trio.fail_after(5):
        async with transport("b", {"a": None}) as b:
            async with transport("a", {"b": b.url}, cluster_id="another-cluster") as a:
                await refused_both_ways(a, b)
                await b.wait_statistics(lambda s: s.handshake_failures >= 3)  # a keeps dialling

    def facts(event: str) -> list[dict[str, object]]:
        found = [getattr(r, RAFT_FIELDS, {}) for r in caplog.records]
        return [f for f in found if f.get("event") == event]

    (inbound,) = facts("connection_rejected")
    assert inbound["node"] == "b" and inbound["claimed"] == "a"
    assert "wrong cluster id" in str(inbound["reason"])
    assert str(inbound["remote"]).startswith("127.0.0.1:")
    (outbound,) = facts("handshake_refused")
    assert outbound["node"] == "a" and outbound["peer"] == "b" and outbound["url"] == b.url
    assert not facts("peer_connected")


async def test_an_unknown_node_id_is_refused() -> None:
    with trio.fail_after(5):
        async with transport("b", {"c": None}) as b:
            async with transport("intruder", {"b": b.url}) as a:
                await refused_both_ways(a, b)
                failure = a.statistics().peers["b"].last_failure
    assert failure is not None and "(1008 unknown node id)" in failure


async def test_dialing_the_wrong_node_is_refused() -> None:
    with trio.fail_after(5):
        async with transport("c", {"a": None}) as c:
            async with transport("a", {"b": c.url}) as a:  # a believes c's URL is b's
                await refused_both_ways(a, c)
                failure = a.statistics().peers["b"].last_failure
    assert failure is not None and "this is node 'c'" in failure


@pytest.mark.parametrize(
    "first_message",
    [b"", b"\xff\xfe", cbor2.dumps({"t": "proof", "p": b"x" * 32}), "text", b"x" * 600],
)
async def test_junk_instead_of_a_handshake_is_refused(first_message: str | bytes) -> None:
    with trio.fail_after(5):
        async with transport("b", {"a": None}) as b:
            async with raw_client(b.url, client_id=None) as ws:
                await ws.send_message(first_message)
                code, _ = await closed_with(ws)
            stats = await b.wait_statistics(lambda s: s.handshake_failures == 1)
    assert code == 1008
    assert stats.decode_failures == 0 and nothing_delivered(b)


async def test_a_frame_before_the_handshake_is_refused() -> None:
    with trio.fail_after(5):
        async with transport("b", {"a": None}) as b:
            async with raw_client(b.url, client_id=None) as ws:
                await ws.send_message(encode(vote("a", "b"), cluster_id=CLUSTER))
                assert (await closed_with(ws))[0] == 1008
            await b.wait_statistics(lambda s: s.handshake_failures == 1)
            assert nothing_delivered(b)


async def test_a_frame_from_another_sender_drops_the_connection() -> None:
    with trio.fail_after(5):
        async with transport("b", {"a": None, "c": None}) as b:
            async with raw_client(b.url, client_id="a") as ws:
                await ws.send_message(encode(vote("a", "b", 1), cluster_id=CLUSTER))
                await ws.send_message(encode(vote("c", "b", 2), cluster_id=CLUSTER))
                code, reason = await closed_with(ws)
            assert await b.receive_channel.receive() == vote("a", "b", 1)
            stats = b.statistics()
    assert (code, reason) == (1008, "frame 'c'->'b' on the connection of 'a'")
    assert stats.peers["a"].decode_failures == 1 and nothing_delivered(b)


async def test_an_invalid_frame_drops_the_connection_and_the_node_carries_on() -> None:
    with trio.fail_after(5):
        async with transport("b", {"a": None}) as b:
            async with raw_client(b.url, client_id="a") as ws:
                await ws.send_message(b"\xa0")  # an empty map
                code, reason = await closed_with(ws)
            assert (code, reason) == (1007, "envelope: unsupported protocol version None (this "
                                             "node speaks 2; all nodes of a cluster must speak "
                                             "the same version)")  # fmt: skip
            async with raw_client(b.url, client_id="a") as ws:  # b still serves
                await ws.send_message(encode(vote("a", "b"), cluster_id=CLUSTER))
                assert await b.receive_channel.receive() == vote("a", "b")
            assert b.statistics().decode_failures == 1


async def test_wrong_path_and_missing_subprotocol_are_rejected_at_upgrade() -> None:
    with trio.fail_after(5):
        async with transport("b", {"a": None}) as b:
            with pytest.raises(ConnectionRejected) as info:
                async with raw_client(b.url.replace("/raft", "/other"), client_id=None):
                    pass  # pragma: no cover
            assert info.value.status_code == 404
            with pytest.raises(ConnectionRejected) as info:
                async with raw_client(b.url, client_id=None, subprotocols=[]):
                    pass  # pragma: no cover
            assert info.value.status_code == 400
            await b.wait_statistics(lambda s: s.handshake_failures == 2)


async def test_a_node_of_protocol_version_1_is_refused_at_upgrade() -> None:
    """An older node offers ``trio-raft.1``; this one speaks only ``trio-raft.2`` (protocol
    version 2): the upgrade fails, and the refusal is counted as a handshake failure."""
    assert SUBPROTOCOL == "trio-raft.2"
    with trio.fail_after(5):
        async with transport("b", {"a": None}) as b:
            with pytest.raises(ConnectionRejected) as info:
                async with raw_client(b.url, client_id=None, subprotocols=["trio-raft.1"]):
                    pass  # pragma: no cover
            assert info.value.status_code == 400
            await b.wait_statistics(lambda s: s.handshake_failures == 1)


async def test_a_silent_client_is_closed_after_the_handshake_timeout() -> None:
    with trio.fail_after(5):
        async with transport("b", {"a": None}, handshake_timeout_s=0.2) as b:
            async with raw_client(b.url, client_id=None) as ws:
                assert await closed_with(ws) == (1008, "handshake timed out")
            assert b.statistics().handshake_failures == 1


async def test_beyond_max_connections_the_oldest_pending_connection_is_closed() -> None:
    """Connections still in their handshake are a bounded pool; a newcomer evicts the oldest
    (it used to be refused, so strangers sitting on the pool kept members out)."""
    with trio.fail_after(5):
        async with transport("b", {"a": None}, max_connections=2) as b:
            streams = [await trio.open_tcp_stream("127.0.0.1", b.port) for _ in range(2)]
            await b.wait_statistics(lambda s: s.open_connections == 2)
            extra = await trio.open_tcp_stream("127.0.0.1", b.port)
            assert await streams[0].receive_some() == b""  # the oldest, closed without a word
            stats = await b.wait_statistics(lambda s: s.open_connections == 2)
            for stream in [*streams, extra]:
                await stream.aclose()
    assert stats.evicted_connections == 1
    assert stats.refused_connections == 0


async def test_a_newer_connection_of_a_peer_evicts_the_oldest() -> None:
    with trio.fail_after(5):
        async with transport("b", {"a": None}) as b:
            async with (
                raw_client(b.url) as first, raw_client(b.url) as second,
                raw_client(b.url) as third,
            ):  # fmt: skip
                assert await closed_with(first) == (1000, "replaced by a newer connection")
                for ws in (second, third):
                    await ws.send_message(encode(vote("a", "b"), cluster_id=CLUSTER))
                    assert await b.receive_channel.receive() == vote("a", "b")
                assert b.statistics().peers["a"].inbound_connections == 2


# -- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def test_tls_carries_messages(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server, client = tls
    with trio.fail_after(5):
        async with open_mesh(["a", "b"], ssl_context=server, peer_ssl_context=client) as mesh:
            a, b = mesh["a"], mesh["b"]
            assert a.url.startswith("wss://127.0.0.1:")
            await wait_all_connected(mesh)
            a.send(vote("a", "b"))
            assert await b.receive_channel.receive() == vote("a", "b")


async def test_tls_refuses_an_untrusted_server(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server, _ = tls
    with trio.fail_after(5):
        async with transport("b", {"a": None}, ssl_context=server) as b:
            untrusting = ssl.create_default_context()  # does not know the test CA
            async with transport("a", {"b": b.url}, peer_ssl_context=untrusting) as a:
                stats = await a.wait_statistics(lambda s: s.peers["b"].connect_failures >= 1)
    assert not stats.peers["b"].connected
    assert "CERTIFICATE_VERIFY_FAILED" in str(stats.peers["b"].last_failure)


# -- lifecycle --------------------------------------------------------------------------------


def task_tree() -> set[trio.lowlevel.Task]:
    tasks = set()
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        assert task is not None
        tasks.add(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return tasks


async def test_no_task_outlives_the_transports() -> None:
    before = task_tree()
    with trio.fail_after(5):
        async with open_mesh(["a", "b", "c"]) as mesh:
            await wait_all_connected(mesh)
            mesh["a"].send(vote("a", "b"))
            await mesh["b"].receive_channel.receive()
            assert len(task_tree()) > len(before) + 6
            receive_channel = mesh["a"].receive_channel
            a = mesh["a"]
    assert task_tree() <= before
    with pytest.raises(trio.EndOfChannel):
        await receive_channel.receive()
    a.send(vote("a", "b"))
    assert a.statistics().dropped_unknown_peer == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"secret": b"short"}, "secret must be at least 16 bytes"),
        ({"cluster_id": ""}, "cluster_id must be a str of 1 to 128"),
        ({"peers": {"a": None}}, "it must not contain 'a'"),
        ({"peers": {"b": "http://x/raft"}}, "peer URL must look like ws://"),
        ({"peers": {"b": "ws://x:99999/raft"}}, "out of range"),
        ({"max_message_bytes": 100}, "max_message_bytes must be >= 1024"),
        ({"send_queue_size": 0}, "send_queue_size must be a positive finite int"),
        ({"send_queue_bytes": 1.5}, "send_queue_bytes must be a positive finite int"),
        ({"backoff_s_min": 2.0, "backoff_s_max": 1.0}, "backoff_s_min must be <= backoff_s_max"),
        ({"handshake_timeout_s": float("inf")}, "handshake_timeout_s must be a positive finite"),
        ({"max_message_bytes": 8 << 20, "send_queue_bytes": 4 << 20}, "send_queue_bytes must be"),
    ],
)
async def test_invalid_arguments_are_refused(kwargs: dict[str, Any], match: str) -> None:
    options: dict[str, Any] = {"cluster_id": CLUSTER, "secret": SECRET, "peers": {"b": None}}
    options.update(kwargs)
    peers = options.pop("peers")
    with pytest.raises(ValueError, match=match):
        async with open_websocket_transport("a", peers, **options):
            pass  # pragma: no cover


async def test_messages_carry_any_message_type() -> None:
    """Whatever the node sends arrives equal (the codec's canonical form aside)."""
    messages: list[Message] = [
        vote("a", "b", 4),
        VoteResponse("a", "b", 4, granted=False, pre_vote=True),
        AppendRequest("a", "b", 4, 2, 1, (Entry(4, 3, None),), 2, seq=5),
    ]
    with trio.fail_after(5):
        async with open_mesh(["a", "b"]) as mesh:
            await wait_all_connected(mesh)
            for message in messages:
                mesh["a"].send(message)
            for message in messages:
                assert await mesh["b"].receive_channel.receive() == message
