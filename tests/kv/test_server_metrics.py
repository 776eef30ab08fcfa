"""The client port's own statistics: requests by op and outcome, refused connections by reason
(each refusal also a rate-limited warning with the address and the reason), and their
Prometheus families, scraped from the text format."""

from __future__ import annotations

import logging

import cbor2
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected

from trio_raft._logging import RAFT_FIELDS
from trio_raft.kv import KVServer
from trio_raft.kv._protocol import MAX_REQUEST_BYTES

from .test_server_client import TEST_S, kv_cluster, raw_ws, request, wait_until

TOKEN = "a-long-enough-token"


async def test_requests_by_outcome_and_refusals_are_counted_logged_and_scraped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from trio_raft.prometheus import render

    caplog.set_level(logging.INFO, logger="trio_raft.kv")
    hello = {"id": 1, "op": "hello", "v": 1, "token": TOKEN}
    with trio.fail_after(TEST_S):
        async with kv_cluster(token=TOKEN) as cluster:
            leader, follower = await cluster.leader(), await cluster.follower()
            at_leader: KVServer = cluster.servers[leader.id]
            at_follower: KVServer = cluster.servers[follower.id]
            async with raw_ws(cluster.urls[leader.id]) as ws:
                assert "ok" in await request(ws, hello)
                assert "ok" in await request(ws, {"id": 2, "op": "get", "key": "k"})
                assert "ok" in await request(ws, {"id": 3, "op": "status"})
                bad = await request(ws, {"id": 4, "op": "no-such-op"})
                assert bad["error"]["code"] == "bad_request"
            async with raw_ws(cluster.urls[follower.id]) as ws:
                assert "ok" in await request(ws, hello)
                redirect = await request(ws, {"id": 2, "op": "get", "key": "k"})
                assert redirect["error"]["code"] == "not_leader"
            async with raw_ws(cluster.urls[leader.id]) as ws:  # a wrong token
                refused = await request(ws, {**hello, "token": "not-the-token"})
                assert refused["error"]["code"] == "unauthorized"
            async with raw_ws(cluster.urls[leader.id]) as ws:  # a frame over the limit
                await ws.send_message(b"\x00" * (MAX_REQUEST_BYTES + 1))
                with pytest.raises(ConnectionClosed):
                    await ws.get_message()
            with pytest.raises(ConnectionRejected):
                async with raw_ws(cluster.urls[leader.id].replace("/kv", "/nope")):
                    pass  # pragma: no cover
            for _ in range(3):  # the same address and reason: one warning a minute
                async with raw_ws(cluster.urls[leader.id]) as ws:
                    await request(ws, {**hello, "token": "not-the-token"})
            stats = at_leader.statistics()
            text, _ = render(leader, at_leader)
            follower_stats = at_follower.statistics()

    assert stats.requests[("hello", "ok")] == 1
    assert stats.requests[("get", "ok")] == 1 and stats.requests[("status", "ok")] == 1
    assert stats.requests[("invalid", "bad_request")] == 1
    assert stats.requests[("hello", "unauthorized")] == 4
    assert follower_stats.requests[("get", "not_leader")] == 1
    assert dict(stats.rejected_connections) == {
        "unauthenticated": 4, "invalid_frame": 1, "wrong_path": 1,
    }  # fmt: skip

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }
    node = ("node", leader.id)
    assert samples[("trio_raft_client_requests_total", (node, ("op", "get"), ("outcome", "ok")))]
    key = ("trio_raft_client_connections_rejected_total", (node, ("reason", "unauthenticated")))
    assert samples[key] == 4
    assert ("trio_raft_client_connections", (node,)) in samples
    assert ("trio_raft_commit_index", (node,)) in samples  # the node's families are there too

    warnings = [
        getattr(r, RAFT_FIELDS) for r in caplog.records
        if getattr(r, RAFT_FIELDS, {}).get("event") == "client_rejected"
    ]  # fmt: skip
    reasons = sorted(str(f["reason"]) for f in warnings)
    assert reasons == ["invalid_frame", "unauthenticated", "wrong_path"]  # 3 more suppressed
    assert all(str(f["remote"]).startswith("127.0.0.1:") for f in warnings)
    assert all(f["node"] == leader.id for f in warnings)


def test_the_transport_s_per_peer_counters_are_metrics() -> None:
    pytest.importorskip("prometheus_client")
    from trio_raft._transport._stats import PeerStatistics, TransportStatistics
    from trio_raft.prometheus import _peer_families

    peer = PeerStatistics(
        url="ws://10.0.0.2:7100/raft", connected=True, inbound_connections=1, queued_frames=0,
        queued_bytes=0, frames_sent=7, bytes_sent=700, frames_received=5, bytes_received=500,
    )  # fmt: skip
    families = {
        f.name: f
        for f in _peer_families(
            "n1", TransportStatistics(node_id="n1", peers={"n2": peer}, open_connections=1)
        )
    }
    (sample,) = families["trio_raft_peer_bytes_sent"].samples
    assert sample.labels == {"node": "n1", "peer": "n2"} and sample.value == 700
    assert families["trio_raft_peer_connected"].samples[0].value == 1
    assert families["trio_raft_peer_frames_received"].samples[0].value == 5


async def test_a_request_whose_client_leaves_first_counts_as_abandoned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"]) as cluster:
            server: KVServer = cluster.servers["solo"]
            await cluster.leader()
            started = trio.Event()

            async def never(rid: int, request: object) -> object:
                started.set()
                await trio.sleep_forever()

            monkeypatch.setattr(server, "_answer", never)
            async with raw_ws(cluster.urls["solo"]) as ws:
                await ws.send_message(cbor2.dumps({"id": 1, "op": "get", "key": "k"}))
                await started.wait()
            await wait_until(lambda: server.statistics().requests.get(("get", "abandoned")) == 1)
