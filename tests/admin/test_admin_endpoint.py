"""The admin HTTP endpoint: /health, /ready, /metrics, and what it does with strangers' bytes.

A one-node cluster on the in-memory network in real time (the endpoint uses real sockets, so
no MockClock), with its admin endpoint on port 0.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import AsyncIterator

import pytest
import trio

from trio_raft import Config, MemoryStorage, Node, open_node
from trio_raft._admin import HEAD_TIMEOUT_S, MAX_CONNECTIONS, MAX_HEAD_BYTES, serve_admin
from trio_raft.testing import KVStateMachine, MemoryNetwork

FAST = Config(election_timeout_s_min=0.05, election_timeout_s_max=0.1, heartbeat_s=0.01)


@pytest.fixture
async def admin(nursery: trio.Nursery) -> AsyncIterator[tuple[Node, int]]:
    network = MemoryNetwork(random.Random(1), delay_s_min=0.0, delay_s_max=0.0)
    nursery.start_soon(network.run)
    ready = trio.Event()
    result: list[tuple[Node, int]] = []

    async def run() -> None:
        async with open_node(
            "n1", ["n1"], state_machine=KVStateMachine(), transport=network.transport("n1"),
            storage=MemoryStorage(), rng=random.Random(1), config=FAST,
        ) as node:  # fmt: skip
            try:
                from trio_raft.prometheus import render
            except ImportError:  # pragma: no cover  (the test extra installs it)
                metrics = None
            else:

                def metrics() -> tuple[bytes, str]:
                    return render(node)

            async with trio.open_nursery() as inner:
                port = await inner.start(functools.partial(serve_admin, metrics=metrics), node,
                                         "127.0.0.1", 0)  # fmt: skip
                result.append((node, port))
                ready.set()
                await trio.sleep_forever()

    nursery.start_soon(run)
    await ready.wait()
    yield result[0]


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        data = b""
        with trio.fail_after(HEAD_TIMEOUT_S + 5):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return status, headers, body


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await request(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


async def test_health_and_ready(admin: tuple[Node, int]) -> None:
    node, port = admin
    status, headers, body = await get(port, "/health")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"node": "n1", "status": "ok"}
    await node.wait_leader()
    status, _, body = await get(port, "/ready")
    facts = json.loads(body)
    assert status == 200 and facts["ready"] is True and facts["role"] == "leader", facts
    status, headers, body = await get(port, "/ready", "HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


async def test_metrics_are_scraped_in_the_prometheus_format(admin: tuple[Node, int]) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    node, port = admin
    await node.wait_leader()
    for i in range(5):
        await node.propose(("put", f"k{i}", "v"))
    status, headers, body = await get(port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("trio_raft_is_leader", (("node", "n1"),))] == 1
    assert samples[("trio_raft_role", (("node", "n1"), ("role", "leader")))] == 1
    accepted = (("node", "n1"), ("outcome", "accepted"))
    assert samples[("trio_raft_proposals_total", accepted)] == 5
    applied = samples[("trio_raft_entries_applied_total", (("node", "n1"),))]
    assert applied == 5
    assert samples[("trio_raft_commit_index", (("node", "n1"),))] == node.status.commit_index
    writes = samples[("trio_raft_disk_write_seconds_count", (("node", "n1"),))]
    inf = samples[("trio_raft_disk_write_seconds_bucket", (("le", "+Inf"), ("node", "n1")))]
    assert writes == inf >= 1


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n",
         431),
        (b"\x00\xff\xfe" * 100 + b"\r\n\r\n", 400),
    ],
)  # fmt: skip
async def test_bad_requests_get_a_status_not_a_crash(
    admin: tuple[Node, int], raw: bytes, status: int
) -> None:
    _, port = admin
    assert (await request(port, raw))[0] == status
    assert (await get(port, "/health"))[0] == 200  # and the endpoint goes on


async def test_a_flood_of_idle_connections_cannot_lock_the_endpoint_out(
    admin: tuple[Node, int],
) -> None:
    """Connections beyond the limit are closed at once; the idle ones time out; afterwards
    the endpoint answers again."""
    _, port = admin
    idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(MAX_CONNECTIONS)]
    try:
        extra = await trio.open_tcp_stream("127.0.0.1", port)
        async with extra:
            with trio.fail_after(5):
                assert await extra.receive_some(10) == b""  # closed without an answer
    finally:
        for stream in idle:
            await stream.aclose()
    with trio.fail_after(5):
        while True:  # the server notices the closed ones
            try:
                if (await get(port, "/health"))[0] == 200:
                    break
            except (trio.BrokenResourceError, IndexError, ValueError):
                await trio.sleep(0.05)


async def test_a_client_that_never_finishes_its_request_is_cut_off(
    admin: tuple[Node, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import trio_raft._admin

    monkeypatch.setattr(trio_raft._admin, "HEAD_TIMEOUT_S", 0.2)
    _, port = admin
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /health HTTP/1.1\r\n")  # and never the rest
        with trio.fail_after(5):
            assert await stream.receive_some(10) == b""
