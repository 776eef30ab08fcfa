"""Dialing through a TCP proxy whose backend is down (the proxy accepts, then closes at once),
as the cluster file's ``dial`` allows ("a proxy, a NAT").

trio-websocket's client handshake never returns when the server closes the TCP connection
before answering the HTTP upgrade (its reader task ends without waking ``wrap_client_stream``);
``trio_raft._ws.wrap_client_stream_fast`` watches for that, so the peer dialer and the KV
client fail such an attempt at once and back off instead of waiting out their timeout.

Neither test measures how fast: each sets the timeout the bug would wait out to
:data:`STUCK_S`, far beyond the test's deadline, so a dialer or client stuck on such a
connection is a hang that ``DEADLINE_S`` catches, whatever the machine's speed.
"""

from __future__ import annotations

from pathlib import Path

import trio

from trio_raft import kv

from ._harness import DEADLINE_S, POLL_S, allocate_ports, open_process_cluster
from ._proxy import open_fault_proxy

STUCK_S = 3600.0
"""The connect timeouts in these tests: a dial attempt stuck on a connection the proxy closed
lasts this long, i.e. past ``DEADLINE_S``."""
ATTEMPTS = 3
"""Dial attempts each link must see: a stuck dialer never gets past its first."""


async def test_peer_dialer_retries_promptly_when_the_proxy_closes(tmp_path: Path) -> None:
    ports = allocate_ports()
    links = (("n1", "n2"), ("n1", "n3"))
    with trio.fail_after(DEADLINE_S):
        async with (
            open_fault_proxy({n: p.peer for n, p in ports.items()}, wait_for_target=False) as proxy,
            open_process_cluster(
                tmp_path, ports=ports, dial=proxy.dial_table(), start=False
            ) as cluster,
        ):
            # n1 alone: its dials of n2 and n3 reach the proxy, which cannot reach them.
            await cluster.start("n1", connect_timeout_s=STUCK_S)
            started = trio.current_time()
            while min(proxy.statistics()[link][0] for link in links) < ATTEMPTS:
                cluster.check_alive()
                await trio.sleep(POLL_S)
            elapsed = trio.current_time() - started
            attempts = {link: proxy.statistics()[link][0] for link in links}
            print(f"FIGURE proxy dial: attempts per link {elapsed:.3f} s after start: {attempts}")


async def test_kv_client_moves_on_promptly_when_a_url_closes_at_once(tmp_path: Path) -> None:
    ports = allocate_ports()
    with trio.fail_after(DEADLINE_S):
        async with (
            open_fault_proxy({n: p.peer for n, p in ports.items()}, wait_for_target=False) as proxy,
            open_process_cluster(tmp_path, ports=ports, start=False) as cluster,
        ):
            await cluster.start("n1")
            await cluster.wait_for(lambda s: s["n1"] is not None, ["n1"])
            # First URL: a proxy port whose backend (n2's peer port) is down. Second: n1.
            dead = f"ws://127.0.0.1:{proxy.port('n1', 'n2')}/kv"
            urls = [dead, *cluster.urls(["n1"])]
            async with kv.open_client(urls, timeout_s=None, connect_timeout_s=STUCK_S) as client:
                start = trio.current_time()
                status = await client.status()
                elapsed = trio.current_time() - start
            assert status["node"] == "n1"
            print(f"FIGURE proxy dial: KV client reached its second URL after {elapsed:.3f} s")
