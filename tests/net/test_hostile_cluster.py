"""A three-node cluster keeps its leader while a stranger throws the worst known frames at it.

Three real nodes in this process, talking over real WebSockets on loopback, each serving the KV
service with a token. While a client with the token keeps writing, a stranger without it sends,
on fresh connections to the leader's client port: ints over 4,300 digits as ``op`` and as map
keys (one such frame used to end a node), maps of hash-colliding int keys (a 518 KB frame froze a
node 57 s), shared-reference bombs (4.2 KB froze a leader 10.6 s and grew it to 645 MB), deeply
nested arrays and 512 KB frames; it opens sockets that never finish the HTTP upgrade on the
client and the peer ports, and a token holder sends requests whose replies it never reads.

Afterwards the leader and the term are the same, writes went on during the attack, and every
node still runs. The figures (frames sent, memory, leadership before and after) are printed
for the record, not asserted: this is a shared machine.
"""

from __future__ import annotations

import random
import resource
from functools import partial
from pathlib import Path

import cbor2
import trio
from trio_websocket import ConnectionClosed, HandshakeError

from trio_raft import Config, Node
from trio_raft.kv import KVServer, KVStateMachine, open_client, serve_kv
from trio_raft.kv._protocol import MAX_REQUEST_BYTES, MAX_VALUE_BYTES, Hello, encode_request

from . import open_cluster, raw_client, wait_leader

TOKEN = "hostile-test-token"
HUGE = 10**5000
STEADY = Config(election_timeout_s_min=1.0, election_timeout_s_max=2.0, heartbeat_s=0.1)
"""Generous timeouts: this machine is shared, and the stranger runs in the nodes' own loop."""


def shared_reference_bomb(levels: int) -> bytes:
    data = b"\xd8\x1c\x82\x00\x00"
    for i in range(1, levels):
        data = b"\xd8\x1c\x82" + data + b"\xd8\x1d" + bytes([min(i - 1, 23)])
    return data


def worst_frames() -> dict[str, bytes]:
    request = b"\xa3\x62id\x01\x62op\x63get\x63key"  # {"id": 1, "op": "get", "key": ...
    # Keys whose hashes are all 0, encoded by hand: building them as a dict here would freeze
    # this very loop (the stranger runs in the nodes' process) for the same quadratic time.
    count = 40_000
    colliding = b"".join(cbor2.dumps((2**61 - 1) * i) + b"\x00" for i in range(1, count + 1))
    return {
        "bignum op": cbor2.dumps({"id": 1, "op": HUGE}),
        "bignum map key": cbor2.dumps({"id": 1, "op": "get", HUGE: 1}),
        "colliding int keys": b"\xba"
        + (count + 2).to_bytes(4, "big")
        + b"\x62id\x01\x62op\x63get"
        + colliding,
        "shared references": request + shared_reference_bomb(24),
        "deep nesting": request + b"\x81" * 100_000 + b"\x00",
        "512 KB of items": request + b"\x9a\x00\x07\xff\xff" + b"\x00" * (MAX_REQUEST_BYTES - 40),
    }


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # pragma: no cover


async def send_and_wait_close(url: str, frame: bytes) -> None:
    with trio.fail_after(5):
        try:
            async with raw_client(url, client_id=None, subprotocols=[]) as ws:
                await ws.send_message(frame)
                while True:
                    await ws.get_message()
        except (ConnectionClosed, HandshakeError, trio.BrokenResourceError):
            pass


async def non_reader(url: str, requests: int) -> None:
    """A token holder that asks for the big value ``requests`` times and never reads."""
    host, port = url.removeprefix("ws://").partition("/")[0].split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            b"GET /kv HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        frames = [encode_request(0, Hello(token=TOKEN))]
        frames += [cbor2.dumps({"id": i, "op": "get", "key": "big"}) for i in range(1, requests)]
        for frame in frames:
            assert len(frame) < 126
            await stream.send_all(bytes([0x82, 0x80 | len(frame)]) + b"\0\0\0\0" + frame)
        await trio.sleep_forever()  # never read


async def test_a_cluster_keeps_its_leader_under_a_hostile_client() -> None:
    servers: dict[str, KVServer] = {}
    with trio.fail_after(60):  # a bound for a hung test, not a timing assertion
        async with (
            open_cluster(STEADY, state_machine=KVStateMachine) as cluster,
            trio.open_nursery() as nursery,
        ):
            nodes = cluster.running()
            urls: dict[str, str] = {}
            for nid, node in nodes.items():
                servers[nid] = await nursery.start(
                    partial(serve_kv, node, host="127.0.0.1", port=0, leader_urls=urls,
                            token=TOKEN, max_connections=64)
                )  # fmt: skip
                urls[nid] = f"ws://127.0.0.1:{servers[nid].port}/kv"
            leader: Node = await wait_leader(nodes)
            before = leader.status
            rss_before = rss_kib()
            async with open_client(list(urls.values()), token=TOKEN, rng=random.Random(1)) as kv:
                await kv.put("big", random.Random(0).randbytes(MAX_VALUE_BYTES))
            writes = 0
            attack_done = trio.Event()

            async def writer() -> None:
                nonlocal writes
                async with open_client(
                    list(urls.values()), token=TOKEN, rng=random.Random(2)
                ) as kv:
                    while not attack_done.is_set() or writes < 5:
                        await kv.put(f"w{writes % 10}", str(writes))
                        writes += 1

            nursery.start_soon(writer)
            kv_url = urls[leader.id]
            member = cluster.members[leader.id]
            assert member.transport is not None
            peer_port = member.transport.port
            sent: dict[str, int] = {}
            silent: list[trio.SocketStream] = []
            async with trio.open_nursery() as attackers:
                for _ in range(5):
                    attackers.start_soon(non_reader, kv_url, 64)
                sent["non-reading token holders"] = 5
                for _ in range(200):
                    silent.append(await trio.open_tcp_stream("127.0.0.1", servers[leader.id].port))
                for _ in range(40):
                    silent.append(await trio.open_tcp_stream("127.0.0.1", peer_port))
                sent["never-upgrading sockets (client port, peer port)"] = 240
                for _ in range(5):
                    for name, frame in worst_frames().items():
                        await send_and_wait_close(kv_url, frame)
                        sent[name] = sent.get(name, 0) + 1
                writes_during = writes
                attack_done.set()
                async with open_client([kv_url], token=TOKEN, rng=random.Random(3)) as kv:
                    await kv.put("after", "ok")  # the leader's own port still serves
                    assert await kv.get("after") == b"ok"
                attackers.cancel_scope.cancel()
            for stream in silent:
                await stream.aclose()
            after = leader.status
            rss_after = rss_kib()
            running = cluster.running()
            nursery.cancel_scope.cancel()
    print(
        f"FIGURE hostile client (issue 7): frames and sockets sent {sent}; "
        f"leader {before.leader_id} term {before.term} -> leader {after.leader_id} term "
        f"{after.term}; writes during the attack {writes_during}, total {writes}; "
        f"process RSS {rss_before // 1024} MiB -> {rss_after // 1024} MiB "
        f"(3 nodes and the stranger in one process); client port of the leader: "
        f"evicted {servers[before.leader_id or ''].evicted_connections}, "
        f"failed {servers[before.leader_id or ''].failed_connections}"
    )
    assert (after.leader_id, after.term) == (before.leader_id, before.term)
    assert set(running) == set(nodes)
    assert writes_during >= 1
    assert after.commit_index > before.commit_index
