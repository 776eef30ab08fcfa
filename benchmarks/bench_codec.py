"""Encoding work per write on the propose → persist → replicate path, without any I/O.

Each row is one step, timed in µs per write (per entry) and with the bytes it produces, for a
KV-style command ``("put", session, seq, key, value)`` whose value is 16 B or 64 KiB, in
batches of 1 and of 64 entries:

* ``check``: the leader's check of a proposed command (``_check_command`` in ``_node.py``:
  data-model walk and size check);
* ``size``: ``entry_size`` (batching, flow control and the snapshot trigger);
* ``wal``: the WAL record of each entry (payload and frame, with its crc32);
* ``wire xN``: the AppendRequest carrying the batch, encoded once per follower (N = 2, a
  3-node cluster);
* ``leader``: the sum of the above, what the leader spends per write;
* ``decode``: a follower decoding that AppendRequest (full validation);
* ``follower``: ``decode`` plus the follower's own WAL records.

Each step runs on fresh :class:`Entry` objects made the way the node makes them, so a cache
inside an entry helps only where the real path would hit it.

A second table measures the WebSocket transport alone: two transports on 127.0.0.1 (one
process), A sends bursts of small AppendResponses (one per acknowledged write, the most
frequent message) to B, which receives them all before the next burst; µs of wall time (both
ends share this thread) per message, for bursts of 1, 8 and 64 messages.

A third table measures the garbage collector while a log grows to N entries in memory (one
proposal, entry and a few short-lived containers per write), each mode in a fresh interpreter:
CPython's default thresholds, ``gc.set_threshold(10_000, 10, 10)``, and ``gc.freeze()`` after
every 100,000 writes (a full collection then skips the frozen log); µs of collection per
write, full (generation 2) collections and the longest pause.

A fourth table runs a 3-node cluster in this process over real WebSocket transports
(``MemoryStorage``, the testing KV state machine, 16-byte values), closed-loop writes with 1
and 128 clients: writes/s, CPU µs per write (all three nodes share this thread) and how many
frames the leader's WebSocket messages carried on average.

Run: ``python -m benchmarks.bench_codec`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import gc
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack

import trio

from trio_raft import AppendRequest, AppendResponse, Entry, MemoryStorage, open_node
from trio_raft._codec import decode, encode
from trio_raft._core._log import entry_size
from trio_raft._node import _check_command
from trio_raft._transport import open_websocket_transport
from trio_raft._wal._segments import encode_append, frame
from trio_raft.testing import KVStateMachine

CLUSTER = "bench"
FOLLOWERS = 2
MAX_COMMAND_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 64 << 20


def _command(value_bytes: int, seq: int) -> object:
    return ("put", "s-0123456789abcdef", seq, f"key-{seq:08d}", b"v" * value_bytes)


def _entries(value_bytes: int, batch: int, base: int) -> list[Entry]:
    """Entries as the leader makes them: the proposed command after the node's check."""
    out = []
    for i in range(batch):
        command = _command(value_bytes, base + i)
        out.append(Entry(3, base + i, _check_command(command, MAX_COMMAND_BYTES)))
    return out


def _request(entries: list[Entry], dst: str) -> AppendRequest:
    first = entries[0].index
    return AppendRequest("n1", dst, 3, first - 1, 3, tuple(entries), first - 1, 7)


def _time(step: Callable[[int], int], writes: int, rounds: int) -> tuple[float, int]:
    """Best of ``rounds`` runs of ``step(round)`` (which does ``writes`` writes' worth of
    work and returns the bytes it produced): µs per write, bytes per write."""
    best = float("inf")
    produced = 0
    for r in range(rounds):
        start = time.perf_counter()
        produced = step(r)
        best = min(best, time.perf_counter() - start)
    return best / writes * 1e6, produced // writes


def measure(value_bytes: int, batch: int, total: int, rounds: int) -> dict[str, tuple[float, int]]:
    """µs and bytes per write for each step, for ``total`` writes in batches of ``batch``."""
    batches = max(total // batch, 1)
    writes = batches * batch
    commands = [[_command(value_bytes, b * batch + i + 1) for i in range(batch)]
                for b in range(batches)]  # fmt: skip

    def fresh(r: int) -> list[list[Entry]]:
        return [
            [Entry(3, b * batch + i + 1, c) for i, c in enumerate(cs)]
            for b, cs in enumerate(commands)
        ]

    def check(r: int) -> int:
        for cs in commands:
            for c in cs:
                _check_command(c, MAX_COMMAND_BYTES)
        return 0

    prepared: dict[int, list[list[Entry]]] = {}

    def proposed(r: int) -> list[list[Entry]]:  # entries after the leader's check (outside timing)
        if r not in prepared:
            prepared[r] = [_entries(value_bytes, batch, b * batch + 1) for b in range(batches)]
        return prepared[r]

    rows: dict[str, tuple[float, int]] = {}
    rows["check"] = _time(check, writes, rounds)
    sets = [proposed(r) for r in range(rounds)]  # each round gets entries fresh from propose

    def size(r: int) -> int:
        return sum(entry_size(e) for es in sets[r] for e in es)

    def wal(r: int) -> int:
        return sum(len(frame(encode_append(e))) for es in sets[r] for e in es)

    def wire(r: int) -> int:
        n = 0
        for es in sets[r]:
            for f in range(FOLLOWERS):
                n += len(encode(_request(es, f"n{f + 2}"), cluster_id=CLUSTER, checked=True))
        return n

    # The steps share the entries of a round, in the node's order: size, wal, wire.
    rows["wal"] = _time(wal, writes, rounds)
    rows["size"] = _time(size, writes, rounds)
    rows[f"wire x{FOLLOWERS}"] = _time(wire, writes, rounds)
    rows["leader"] = (
        sum(rows[k][0] for k in ("check", "size", "wal", f"wire x{FOLLOWERS}")),
        rows["wal"][1] + rows[f"wire x{FOLLOWERS}"][1],
    )
    frames = [encode(_request(es, "n2"), cluster_id=CLUSTER, checked=True) for es in fresh(0)]

    def decode_only(r: int) -> int:
        for f in frames:
            decode(f, cluster_id=CLUSTER, max_bytes=MAX_MESSAGE_BYTES)
        return sum(map(len, frames))

    def follower(r: int) -> int:
        n = 0
        for f in frames:
            m = decode(f, cluster_id=CLUSTER, max_bytes=MAX_MESSAGE_BYTES)
            assert isinstance(m, AppendRequest)
            n += sum(len(frame(encode_append(e))) for e in m.entries)
            n += sum(entry_size(e) for e in m.entries)
        return n

    rows["decode"] = _time(decode_only, writes, rounds)
    rows["follower"] = _time(follower, writes, rounds)
    return rows


async def transport_us_per_message(burst: int, messages: int) -> tuple[float, float, float]:
    """Wall and CPU µs per message from A to B in bursts of ``burst``, and messages per
    WebSocket message (CPU time is the steadier figure on a shared machine)."""
    secret = b"s" * 32
    async with (
        open_websocket_transport("a", {"b": None}, cluster_id=CLUSTER, secret=secret) as a,
        open_websocket_transport("b", {"a": None}, cluster_id=CLUSTER, secret=secret) as b,
    ):
        a.set_peer_url("b", b.url)
        b.set_peer_url("a", a.url)
        with trio.fail_after(10):
            await a.wait_statistics(lambda s: s.peers["b"].connected)
        ack = AppendResponse("a", "b", 3, True, 10)
        rounds = max(messages // burst, 1)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            for _ in range(burst):
                a.send(ack)
            for _ in range(burst):
                await b.receive_channel.receive()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        peer = a.statistics().peers["b"]
        per_ws = peer.frames_sent / max(peer.messages_sent, 1)
    n = rounds * burst
    return elapsed / n * 1e6, cpu / n * 1e6, per_ws


async def websocket_cluster(clients: int, writes: int) -> str:
    """A markdown row: a 3-node in-process cluster over WebSockets, ``clients`` proposers."""
    ids = ["a", "b", "c"]
    async with AsyncExitStack() as stack:
        transports = {}
        for nid in ids:
            peers: dict[str, str | None] = {p: None for p in ids if p != nid}
            transports[nid] = await stack.enter_async_context(
                open_websocket_transport(nid, peers, cluster_id=CLUSTER, secret=b"s" * 32)
            )
        for a in transports.values():
            for b in transports.values():
                if a is not b:
                    a.set_peer_url(b.node_id, b.url)
        nodes = {}
        for nid in ids:
            nodes[nid] = await stack.enter_async_context(
                open_node(
                    nid,
                    ids,
                    state_machine=KVStateMachine(),
                    transport=transports[nid],
                    storage=MemoryStorage(),
                    rng=random.Random(nid),
                )
            )
        with trio.fail_after(30):
            leader = nodes[await nodes["a"].wait_leader()]
        for _ in range(50):
            await leader.propose(("put", "warm", "up"))
        counter = iter(range(writes))

        async def client() -> None:
            for i in counter:
                await leader.propose(("put", f"k{i % 100}", "v" * 16))

        start, cpu = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(client)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        peers_stats = transports[leader.id].statistics().peers.values()
        frames = sum(p.frames_sent for p in peers_stats)
        messages = sum(p.messages_sent for p in peers_stats)
    return (
        f"| {clients} | {writes / wall:.0f} | {cpu / writes * 1e6:.0f} | "
        f"{frames / max(messages, 1):.2f} |"
    )


GC_MODES = ("default", "threshold", "freeze")


def gc_growth(mode: str, n: int) -> str:
    """Grow a log to ``n`` entries under GC ``mode``; a markdown row."""
    from trio_raft._codec import encode_command
    from trio_raft._core._log import RaftLog

    if mode == "threshold":
        gc.set_threshold(10_000, 10, 10)
    pauses: list[tuple[int, float]] = []
    started = [0.0]

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - started[0]))

    gc.callbacks.append(watch)
    log = RaftLog()
    start = time.perf_counter()
    for i in range(1, n + 1):
        command = encode_command(("put", "s-0123456789abcdef", i, f"key-{i:08d}", b"v" * 16))
        log.append([Entry(1, i, command)])
        _messages = [{"m": i}, [i], {"r": (i, i)}]  # short-lived, as a write's messages are
        if mode == "freeze" and i % 100_000 == 0:
            gc.freeze()
    total = time.perf_counter() - start
    gc.callbacks.remove(watch)
    full = sum(1 for g, _ in pauses if g == 2)
    longest = max((p for _, p in pauses), default=0.0)
    gc_us = sum(p for _, p in pauses) / n * 1e6
    return f"| {mode} | {n} | {total / n * 1e6:.1f} | {gc_us:.2f} | {full} | {longest * 1e3:.0f} |"


def run(*, quick: bool = False) -> Iterator[str]:
    """Markdown rows: one line per (value size, batch, step), then the transport's."""
    yield "| value | batch | step | µs/write | bytes/write |"
    yield "|---|---|---|---|---|"
    for value_bytes in (16, 64 << 10):
        for batch in (1, 64):
            total = (256 if quick else 4096) if value_bytes == 16 else (64 if quick else 512)
            rounds = 2 if quick else 5
            rows = measure(value_bytes, batch, max(total, batch), rounds)
            label = "16 B" if value_bytes == 16 else "64 KiB"
            for step, (us, nbytes) in rows.items():
                yield f"| {label} | {batch} | {step} | {us:.2f} | {nbytes} |"
    yield ""
    yield "| transport burst | wall µs/message | CPU µs/message | frames per WebSocket message |"
    yield "|---|---|---|---|"
    for burst in (1, 8, 64):
        us, cpu_us, per_ws = trio.run(transport_us_per_message, burst, 512 if quick else 8192)
        yield f"| {burst} | {us:.1f} | {cpu_us:.1f} | {per_ws:.1f} |"
    yield ""
    yield "| clients | writes/s | CPU µs/write (3 nodes) | leader frames per message |"
    yield "|---|---|---|---|"
    for clients in (1, 128):
        writes = (200 if clients == 1 else 1000) if quick else (1000 if clients == 1 else 5000)
        yield trio.run(websocket_cluster, clients, writes)
    yield ""
    yield "| gc mode | entries | µs/write | gc µs/write | full collections | longest pause ms |"
    yield "|---|---|---|---|---|---|"
    for mode in GC_MODES:
        argv = [sys.executable, "-m", "benchmarks.bench_codec", "--gc-mode", mode]
        argv += ["--gc-entries", str(100_000 if quick else 1_000_000)]
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        yield done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_codec", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    parser.add_argument("--gc-mode", choices=GC_MODES, help="only the GC figure of this mode")
    parser.add_argument("--gc-entries", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    if args.gc_mode:
        print(gc_growth(args.gc_mode, args.gc_entries))
        return 0
    for line in run(quick=args.quick):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
