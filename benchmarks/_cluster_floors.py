"""The machine's floors, measured in the same run as the cluster benchmark.

* ``fsync``: one ``write`` of 16 bytes plus ``os.fsync`` of a file in the run's data directory
  (a durable write can never be faster).
* ``websocket``: one round trip of a 16-byte message over a trio-websocket connection on
  127.0.0.1, both ends in this process (a replicated write needs at least one).
* ``core``: entries per second of the pure Raft core (``trio_raft._core.RaftState``) of three
  nodes, driven directly with no I/O, no tasks and no encoding: one entry per proposal, and 64.

The null node (in :mod:`benchmarks.bench_cluster`) is the fourth floor: the harness's ceiling.
"""

from __future__ import annotations

import collections
import os
import statistics
import time
from collections.abc import Iterable
from typing import Any

import trio
from trio_websocket import WebSocketRequest, open_websocket_url, serve_websocket


def fsync_us(directory: str, n: int) -> float:
    """Median microseconds of a 16-byte write + fsync, over ``n`` of them."""
    path = os.path.join(directory, "fsync-floor")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(n):
            start = time.perf_counter()
            os.write(fd, b"0123456789abcdef")
            os.fsync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(times) * 1e6


async def websocket_rtt_us(n: int) -> float:
    """Median microseconds of a 16-byte WebSocket echo on 127.0.0.1, over ``n`` of them."""

    async def echo(request: WebSocketRequest) -> None:
        ws = await request.accept()
        while True:
            message = await ws.get_message()
            await ws.send_message(message)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, echo, "127.0.0.1", 0, None)
        port = server.port
        times = []
        async with open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
            payload = b"0123456789abcdef"
            for _ in range(n):
                start = time.perf_counter()
                await ws.send_message(payload)
                await ws.get_message()
                times.append(time.perf_counter() - start)
        nursery.cancel_scope.cancel()
    return statistics.median(times) * 1e6


def core_entries_per_s(entries: int, batch: int) -> float:
    """Entries per second committed by three pure ``RaftState`` s exchanging their messages
    directly (every write counted durable at once), ``batch`` entries per proposal.

    Raises:
        Exception: whatever the core raises if its internal API has changed (the caller
            reports the floor as unavailable).
    """
    from trio_raft import Config, Role, StoredState
    from trio_raft._core._state import RaftState

    ids = ["a", "b", "c"]
    states = {nid: RaftState(nid, ids, Config(), StoredState()) for nid in ids}
    queue: collections.deque[Any] = collections.deque()
    now = 0.0

    def drain(state: Any) -> None:
        while state.has_ready():
            ready = state.take_ready()
            if ready.must_sync:
                state.on_persisted(state.log.last_index)
            queue.extend(ready.messages)
        if state.role is Role.LEADER:
            for peer in list(state.progress):
                if peer == state.id:
                    continue
                while (message := state.next_append(peer, now, False)) is not None:
                    queue.append(message)
                    if not message.entries:
                        break

    def pump(touched: Iterable[Any]) -> None:
        for state in touched:
            drain(state)
        while queue:
            message = queue.popleft()
            target = states[message.dst]
            target.step(message, now)
            drain(target)

    leader = states["a"]
    for _ in range(20):
        if leader.role is Role.LEADER:
            break
        now += 1.0
        leader.on_election_timeout(now)
        pump(states.values())
    if leader.role is not Role.LEADER:
        raise RuntimeError("the core floor could not elect a leader")
    now += 0.001
    pump(states.values())
    command = ("put", b"k000001", b"0123456789abcdef")
    commands = [command] * batch
    target = leader.log.last_index + entries
    start = time.perf_counter()
    while leader.commit < target:
        leader.propose(commands)
        pump((leader,))
    elapsed = time.perf_counter() - start
    return entries / elapsed


async def measure(directory: str, *, quick: bool) -> dict[str, float | str]:
    """Every floor of this module (``"<name>_error"`` instead of a figure that failed)."""
    floors: dict[str, float | str] = {}
    n = 100 if quick else 500
    floors["fsync_us"] = await trio.to_thread.run_sync(fsync_us, directory, n)
    floors["websocket_rtt_us"] = await websocket_rtt_us(n * 4)
    for batch in (1, 64):
        try:
            floors[f"core_entries_per_s_batch{batch}"] = core_entries_per_s(
                5_000 if quick else 20_000, batch
            )
        except Exception as exc:  # the core is internal: report, do not fail the run
            floors[f"core_batch{batch}_error"] = f"{type(exc).__name__}: {exc}"
    return floors
