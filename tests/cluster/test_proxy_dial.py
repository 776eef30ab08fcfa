"""Dialing through a TCP proxy whose backend is down (the proxy accepts, then closes at once),
as the cluster file's ``dial`` allows ("a proxy, a NAT").

trio-websocket's client handshake never returns when the server closes the TCP connection
before answering the HTTP upgrade (its reader task ends without waking ``wrap_client_stream``);
``trio_raft._ws.wrap_client_stream_fast`` watches for that, so the peer dialer and the KV
client fail such an attempt at once and back off instead of waiting out their timeout.
"""

from __future__ import annotations

from pathlib import Path

import trio

from trio_raft import kv

from ._harness import allocate_ports, open_process_cluster
from ._proxy import open_fault_proxy

WINDOW_S = 2.5
"""How long n1 runs before its dial attempts are counted. A dialer that fails at once backs off
0.1 s, doubling, times a jitter of 0.5 to 1: its 5th attempt starts at most 1.5 s after its
first. A dialer stuck for the 5 s connect timeout is still in its first attempt."""


async def test_peer_dialer_retries_promptly_when_the_proxy_closes(tmp_path: Path) -> None:
    ports = allocate_ports()
    with trio.fail_after(15):
        async with (
            open_fault_proxy({n: p.peer for n, p in ports.items()}, wait_for_target=False) as proxy,
            open_process_cluster(
                tmp_path, ports=ports, dial=proxy.dial_table(), start=False
            ) as cluster,
        ):
            # n1 alone: its dials of n2 and n3 reach the proxy, which cannot reach them.
            await cluster.start("n1")
            await cluster.wait_for(lambda s: s["n1"] is not None, ["n1"])
            await trio.sleep(WINDOW_S)
            links = (("n1", "n2"), ("n1", "n3"))
            attempts = {link: proxy.statistics()[link][0] for link in links}
            print(f"FIGURE proxy dial: attempts per link after {WINDOW_S} s: {attempts}")
            assert min(attempts.values()) >= 3, attempts


async def test_kv_client_moves_on_promptly_when_a_url_closes_at_once(tmp_path: Path) -> None:
    ports = allocate_ports()
    with trio.fail_after(15):
        async with (
            open_fault_proxy({n: p.peer for n, p in ports.items()}, wait_for_target=False) as proxy,
            open_process_cluster(tmp_path, ports=ports, start=False) as cluster,
        ):
            await cluster.start("n1")
            await cluster.wait_for(lambda s: s["n1"] is not None, ["n1"])
            # First URL: a proxy port whose backend (n2's peer port) is down. Second: n1.
            dead = f"ws://127.0.0.1:{proxy.port('n1', 'n2')}/kv"
            async with kv.open_client([dead, *cluster.urls(["n1"])], timeout_s=5) as client:
                start = trio.current_time()
                status = await client.status()
                elapsed = trio.current_time() - start
            assert status["node"] == "n1"
            print(f"FIGURE proxy dial: KV client reached its second URL after {elapsed:.3f} s")
            assert elapsed < 1.0, elapsed
