"""The cluster benchmark's load generator (``python -m benchmarks._cluster_load STEP``) and the
small client the orchestrator uses for status, failover and catch-up.

A *step* keeps ``outstanding`` requests in flight (closed loop) over a few connections to the
leader: each reply is recorded and at once replaced by a new request on the same connection.
After ``warmup_s`` it measures for ``seconds``: requests completed in that window give the
throughput and the latency percentiles, and the leader's CPU time (utime + stime from
``/proc/PID/stat``) over the window divided by the requests gives its CPU per request. With
``count`` it instead sends that many writes and reports how long they took. The result is one
JSON object on stdout.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import resource
import sys
import time
from collections.abc import Mapping
from typing import Any, Final

import attrs
import trio

from ._cluster_protocol import (
    FrameBuffer,
    Op,
    ProtocolError,
    Reply,
    Status,
    decode_reply,
    encode_request,
)

HOST: Final = "127.0.0.1"
KEYS: Final = 1000
"""Requests cycle over this many keys."""
CDF_POINTS: Final = 200
DRAIN_S: Final = 5.0
"""How long a step waits for the requests still in flight after its window."""


class LoadError(Exception):
    """The cluster did not answer as the step needs (no leader found, nothing acknowledged)."""


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (``None`` if it is gone or there is
    no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def request_once(
    port: int, op: Op, key: bytes = b"", value: bytes = b"", *, timeout_s: float = 1.0
) -> Reply | None:
    """Send one request on a fresh connection; its reply, or ``None`` if there was none in
    ``timeout_s`` (connection refused or reset included)."""
    with trio.move_on_after(timeout_s):
        try:
            stream = await trio.open_tcp_stream(HOST, port)
        except OSError:
            return None
        async with stream:
            frames = FrameBuffer()
            try:
                await stream.send_all(encode_request(1, op, key, value))
                while True:
                    data = await stream.receive_some(1 << 16)
                    if not data:
                        return None
                    for body in frames.feed(data):
                        return decode_reply(body)
            except (trio.BrokenResourceError, OSError, ProtocolError):
                return None
    return None


async def status(port: int, *, timeout_s: float = 1.0) -> dict[str, Any] | None:
    """A node's status (``id``, ``role``, ``leader``, ``applied``, ``commit``, ``last_index``,
    ``pid``), or ``None`` if it did not answer."""
    reply = await request_once(port, Op.STATUS, timeout_s=timeout_s)
    if reply is None or reply.status is not Status.OK:
        return None
    result = json.loads(reply.payload)
    assert isinstance(result, dict)
    return result


async def find_leader(fronts: Mapping[str, int], *, timeout_s: float = 20.0) -> str:
    """The id of the node that says it leads (the highest term's, if two do).

    Raises:
        LoadError: none did within ``timeout_s``.
    """
    with trio.move_on_after(timeout_s):
        while True:
            statuses = [await status(port, timeout_s=0.5) for port in fronts.values()]
            leaders = [s for s in statuses if s is not None and s["role"] == "leader"]
            if leaders:
                return str(max(leaders, key=lambda s: s.get("term", 0))["id"])
            await trio.sleep(0.05)
    raise LoadError(f"no node of {sorted(fronts)} said it was the leader within {timeout_s} s")


async def write_once(fronts: Mapping[str, int], key: bytes, value: bytes, timeout_s: float) -> bool:
    """Try one write on each node in turn (following a redirect first); whether one was
    acknowledged."""
    for node_id in fronts:
        reply = await request_once(fronts[node_id], Op.WRITE, key, value, timeout_s=timeout_s)
        if reply is None:
            continue
        if reply.status is Status.OK:
            return True
        if reply.status is Status.REDIRECT and reply.payload.decode() in fronts:
            hint = reply.payload.decode()
            reply = await request_once(fronts[hint], Op.WRITE, key, value, timeout_s=timeout_s)
            if reply is not None and reply.status is Status.OK:
                return True
    return False


@attrs.frozen
class Step:
    """What one load-generator run does (the JSON it takes)."""

    fronts: Mapping[str, int]
    """Each node's front port."""
    pids: Mapping[str, int]
    """Each node's process id (to read the leader's CPU time)."""
    outstanding: int = 1
    connections: int = 4
    """At most this many connections (fewer if ``outstanding`` is smaller)."""
    value_bytes: int = 16
    read_ratio: float = 0.0
    """Fraction of requests that are (linearizable) reads."""
    warmup_s: float = 1.0
    seconds: float = 5.0
    count: int = 0
    """If > 0: send this many writes, no window."""
    seed: int = 1


class _Redirect(Exception):
    def __init__(self, leader: str) -> None:
        self.leader = leader


@attrs.define
class _Run:
    step: Step
    port: int
    value: bytes
    rng: random.Random
    ids: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))
    window: tuple[float, float] = (math.inf, math.inf)
    stopping: bool = False
    issued: int = 0
    acked: int = 0
    write_ms: list[float] = attrs.Factory(list)
    read_ms: list[float] = attrs.Factory(list)
    errors: int = 0
    redirects: int = 0
    error_samples: list[str] = attrs.Factory(list)
    reconnects: int = 0
    last_ack: float = 0.0
    all_acked: trio.Event = attrs.Factory(trio.Event)
    """Set once ``step.count`` writes are acknowledged (count mode)."""

    def make(self, now: float, pending: dict[int, tuple[float, Op]]) -> bytes | None:
        step = self.step
        if self.stopping or (step.count and self.issued >= step.count):
            return None
        self.issued += 1
        request_id = next(self.ids) & 0xFFFFFFFF
        key = b"k%06d" % (self.issued % KEYS)
        if step.read_ratio and self.rng.random() < step.read_ratio:
            pending[request_id] = (now, Op.READ)
            return encode_request(request_id, Op.READ, key)
        pending[request_id] = (now, Op.WRITE)
        return encode_request(request_id, Op.WRITE, key, self.value)

    def record(self, reply: Reply, sent: float, op: Op, now: float) -> None:
        if reply.status is Status.OK:
            self.acked += 1
            self.last_ack = now
            if self.acked == self.step.count:
                self.all_acked.set()
            start, end = self.window
            if start <= now < end:
                (self.write_ms if op is Op.WRITE else self.read_ms).append((now - sent) * 1000)
            return
        if reply.status is Status.REDIRECT:
            self.redirects += 1
            raise _Redirect(reply.payload.decode())
        self.errors += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(reply.payload.decode(errors="replace")[:200])

    async def pump(self, stream: trio.SocketStream, slots: int) -> None:
        pending: dict[int, tuple[float, Op]] = {}
        now = time.perf_counter()
        burst = [f for f in (self.make(now, pending) for _ in range(slots)) if f is not None]
        if not burst:
            return
        await stream.send_all(b"".join(burst))
        frames = FrameBuffer()
        while pending:
            data = await stream.receive_some(1 << 16)
            if not data:
                raise trio.BrokenResourceError("the node closed the connection")
            now = time.perf_counter()
            out = []
            for body in frames.feed(data):
                reply = decode_reply(body)
                sent, op = pending.pop(reply.id)
                self.record(reply, sent, op, now)
                frame = self.make(now, pending)
                if frame is not None:
                    out.append(frame)
            if out:
                await stream.send_all(b"".join(out))

    async def connection(self, slots: int) -> None:
        while not self.stopping:
            try:
                stream = await trio.open_tcp_stream(HOST, self.port)
            except OSError:
                self.reconnects += 1
                await trio.sleep(0.05)
                continue
            async with stream:
                try:
                    await self.pump(stream, slots)
                    return
                except _Redirect as redirect:
                    self.reconnects += 1
                    self.port = self.step.fronts.get(redirect.leader, self.port)
                    await trio.sleep(0.01)
                except (trio.BrokenResourceError, OSError, ProtocolError):
                    self.reconnects += 1
                    await trio.sleep(0.05)


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _cdf(ordered: list[float]) -> list[list[float]]:
    if not ordered:
        return []
    fractions = [i / CDF_POINTS for i in range(CDF_POINTS)] + [0.995, 0.999, 0.9999, 1.0]
    return [
        [round(ordered[min(len(ordered) - 1, int(f * len(ordered)))], 4), f]
        for f in sorted(set(fractions))
    ]


async def run_step(step: Step) -> dict[str, Any]:
    """Run one step against the cluster ``step.fronts``; its figures (see the module docstring).

    Raises:
        LoadError: no leader was found.
    """
    leader = await find_leader(step.fronts)
    run = _Run(step, step.fronts[leader], os.urandom(step.value_bytes), random.Random(step.seed))
    connections = max(1, min(step.connections, step.outstanding))
    shares = [
        step.outstanding // connections + (i < step.outstanding % connections)
        for i in range(connections)
    ]
    pid = step.pids.get(leader)
    result: dict[str, Any] = {"leader": leader}
    async with trio.open_nursery() as nursery:
        started = time.perf_counter()
        for share in shares:
            nursery.start_soon(run.connection, share)
        if step.count:
            with trio.move_on_after(max(60.0, step.count / 200)) as scope:
                await run.all_acked.wait()
            result.update(
                acked=run.acked, elapsed_s=run.last_ack - started, timed_out=scope.cancelled_caught
            )
            run.stopping = True
            nursery.cancel_scope.cancel()
        else:
            await trio.sleep(step.warmup_s)
            leader_cpu0, own_cpu0 = (cpu_seconds(pid) if pid else None), _own_cpu()
            start = time.perf_counter()
            run.window = (start, start + step.seconds)
            await trio.sleep_until(trio.current_time() + step.seconds)
            leader_cpu1, own_cpu1 = (cpu_seconds(pid) if pid else None), _own_cpu()
            run.stopping = True
            nursery.cancel_scope.deadline = trio.current_time() + DRAIN_S
            window_s = step.seconds
            done = len(run.write_ms) + len(run.read_ms)
            result.update(
                window_s=window_s,
                writes=len(run.write_ms),
                reads=len(run.read_ms),
                ops_per_s=done / window_s,
            )
            if leader_cpu0 is not None and leader_cpu1 is not None and done:
                result["leader_cpu_us_per_op"] = (leader_cpu1 - leader_cpu0) / done * 1e6
                result["leader_cpu_share"] = (leader_cpu1 - leader_cpu0) / window_s
            result["loadgen_cpu_share"] = (own_cpu1 - own_cpu0) / window_s
            for name, values in (("write", run.write_ms), ("read", run.read_ms)):
                ordered = sorted(values)
                if not ordered:
                    continue
                result[f"{name}_ms"] = {
                    "p50": _percentile(ordered, 0.5),
                    "p99": _percentile(ordered, 0.99),
                    "p999": _percentile(ordered, 0.999),
                    "mean": sum(ordered) / len(ordered),
                }
                result[f"{name}_cdf"] = _cdf(ordered)
    result.update(
        errors=run.errors,
        redirects=run.redirects,
        reconnects=run.reconnects,
        error_samples=run.error_samples,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the step given as JSON in ``argv[0]``; print its result as JSON."""
    args = sys.argv[1:] if argv is None else argv
    step = Step(**json.loads(args[0]))
    try:
        result = trio.run(run_step, step)
    except KeyboardInterrupt:
        return 130
    except LoadError as exc:
        result = {"failed": str(exc)}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
