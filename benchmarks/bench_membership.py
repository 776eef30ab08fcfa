"""Write unavailability during membership changes, over real ``trio-raft serve`` processes.

Three nodes run on 127.0.0.1 with the default ``[raft]`` settings. :data:`WRITERS` KV clients
write all along, each one write at a time, and record when each write is acknowledged. A
figure is the longest time one of them waited between two of its acknowledged writes around
an operation: from its last one before the operation starts to its :data:`AFTER_ACKS`-th one
after the operation ends.

* ``transfer``: a leadership transfer (:meth:`KVClient.transfer_leader
  <trio_raft.kv.KVClient.transfer_leader>`, the request ``trio-raft transfer-leader`` sends;
  called in-process, so that a CLI's interpreter start does not compete for the CPU);
* ``kill``: ``kill -9`` of the leader (the operation "ends" at the kill; the node is then
  restarted and catches up before the next round);
* ``join``: ``trio-raft serve --join`` of a new node, from its process start until it prints
  that it is a voter (3 -> 4 voters);
* ``remove``: removing the leader, which hands over and exits (4 -> 3 voters; each round is a
  ``join`` then a ``remove``);
* ``large``: how long a new node takes to join and be promoted with ``--entries`` puts of
  ``--value-bytes`` each behind it (100,000 x 1,000 B = 100 MB by default), on a fresh cluster.

Each of the first four is repeated ``--repeat`` times; the median and the maximum are
printed, with the same run's baselines to judge them by: the heartbeat interval and the
election timeout (the defaults), the median write latency, and the longest gap over a quiet
stretch with no change at all (the noise floor of the machine).

Run ``python -m benchmarks.bench_membership [--quick] [--only NAME ...]``. Every process is
stopped and every data directory deleted at the end, also on Ctrl-C or a failure; each
scenario is bounded (:func:`_bound_s`).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import attrs
import trio

from trio_raft import Config, kv
from trio_raft._local_cluster import stop_processes
from trio_raft._util import bind_error

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: ports are only checked, not reserved)
    fcntl = None  # type: ignore[assignment]

HOST = "127.0.0.1"
FOUNDERS = ("n1", "n2", "n3")
"""The nodes of the cluster file."""
WRITERS = 4
"""KV clients writing all along (each sends one write at a time)."""
AFTER_ACKS = 5
"""A gap is measured until each writer had this many writes acknowledged after the operation
ended."""
SETTLE_ACKS = 5
"""Acknowledged writes of each writer between two rounds."""
LOADERS = 64
"""KV clients writing the large state."""
QUIET_S = 3.0
"""Length of the quiet stretch (no change) whose longest gap is the noise floor."""
WRITE_TIMEOUT_S = 10.0
"""Limit of one put of the writer, retries included (a timed-out put counts as failed)."""
ADMIN_TIMEOUT_S = 60.0
"""Limit of one membership operation of the benchmark."""
POLL_S = 0.02
"""Period of the log and status polling."""
STOP_GRACE_S = 5.0
"""How long a node gets to exit after SIGTERM before it is killed."""
DEFAULTS = Config()
"""The ``[raft]`` settings of the cluster (the defaults): the baselines come from here."""
SCENARIOS = ("transfer", "kill", "join", "remove", "large")
COMMAND = "python -m benchmarks.bench_membership"

Status = dict[str, object]


@attrs.frozen
class Settings:
    """What to measure and how often."""

    repeat: int
    """Rounds of each of ``transfer``, ``kill``, ``join`` and ``remove``."""
    entries: int
    """Puts written before the ``large`` join."""
    value_bytes: int
    """Size of each of those puts' values."""


FULL = Settings(repeat=5, entries=100_000, value_bytes=1_000)
QUICK = Settings(repeat=2, entries=2_000, value_bytes=1_000)


# -- ports ------------------------------------------------------------------------------------


class _Ports:
    """Free ports on 127.0.0.1 below the ephemeral range, reserved (with the lock files of
    ``tests/_ports.py``, so a test session running meanwhile skips them) until :meth:`close`."""

    def __init__(self) -> None:
        try:
            low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            low = 32768
        self._range = range(10_000, max(low, 12_000))
        # Start in the upper half: the test allocator works upwards from the bottom.
        self._cursor = self._range.start + len(self._range) // 2 + (os.getpid() % 1000) * 4
        user = os.getuid() if hasattr(os, "getuid") else 0
        self._directory = Path(tempfile.gettempdir()) / f"trio-raft-test-ports-{user}"
        self._fds: list[int] = []

    def take(self) -> int:
        for _ in range(len(self._range)):
            port = self._cursor
            self._cursor = port + 1 if port + 1 < self._range.stop else self._range.start
            if self._reserve(port):
                return port
        raise RuntimeError(f"no free port in {self._range.start}-{self._range.stop - 1}")

    def _reserve(self, port: int) -> bool:
        fd = None
        if fcntl is not None:
            self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._directory / str(port), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
        if bind_error(HOST, port) is not None:
            if fd is not None:
                os.close(fd)
            return False
        if fd is not None:
            self._fds.append(fd)
        return True

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


# -- the cluster ------------------------------------------------------------------------------


@attrs.frozen
class _Address:
    peer: str
    client: str


@attrs.define
class _Cluster:
    """The ``trio-raft serve`` processes of one scenario, in a temporary directory."""

    directory: Path
    config: Path
    addresses: dict[str, _Address]
    """Every node that may run: the founders and the spare ids for joiners."""
    processes: dict[str, trio.Process] = attrs.Factory(dict)

    @property
    def urls(self) -> list[str]:
        """Every node's client URL (a URL that nobody serves is skipped by a client)."""
        return [a.client for a in self.addresses.values()]

    def client(
        self, timeout_s: float | None = ADMIN_TIMEOUT_S
    ) -> AbstractAsyncContextManager[kv.KVClient]:
        return kv.open_client(self.urls, timeout_s=timeout_s)

    async def start(self, node_id: str, *, join: bool = False, extra: Sequence[str] = ()) -> None:
        """Start ``node_id`` (output appended to ``<dir>/<id>.log``); with ``join``, as a new
        node asking the founders to add it."""
        assert node_id not in self.processes, node_id
        address = self.addresses[node_id]
        command = [sys.executable, "-m", "trio_raft", "serve", "--config", str(self.config),
                   "--id", node_id]  # fmt: skip
        if join:
            command += ["--peer", address.peer, "--client", address.client, *extra]
            command += [f"--join={self.addresses[n].client}" for n in self.addresses]
        with (self.directory / f"{node_id}.log").open("ab") as log:
            self.processes[node_id] = await trio.lowlevel.open_process(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    async def kill(self, node_id: str) -> None:
        """``kill -9`` the node and reap it."""
        process = self.processes.pop(node_id)
        process.send_signal(signal.SIGKILL)
        await process.wait()

    async def wait_exit(self, node_id: str) -> int:
        code = await self.processes[node_id].wait()
        del self.processes[node_id]
        return code

    def check_alive(self) -> None:
        for node_id, process in self.processes.items():
            if process.returncode is not None:
                raise RuntimeError(f"{node_id} exited with status {process.returncode}")

    async def stop_all(self) -> None:
        """SIGTERM every node; SIGKILL those still running after :data:`STOP_GRACE_S`."""
        await stop_processes(self.processes.values(), STOP_GRACE_S)
        self.processes.clear()

    def log(self, node_id: str) -> str:
        path = self.directory / f"{node_id}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def wait_log(self, node_id: str, text: str) -> float:
        """Wait until ``text`` is in ``node_id``'s output; when it was seen."""
        while text not in self.log(node_id):
            self.check_alive()
            await trio.sleep(POLL_S)
        return trio.current_time()

    async def status(self, node_id: str) -> Status | None:
        """A node's status, or ``None`` if it does not answer quickly."""
        with trio.move_on_after(1.0):
            try:
                async with kv.open_client([self.addresses[node_id].client], timeout_s=0.5) as c:
                    return await c.status()
            except (kv.KVError, OSError):
                return None
        return None

    async def wait_leader(self, ids: Sequence[str]) -> str:
        """Wait until one of ``ids`` leads and all of them follow it; its id."""
        while True:
            self.check_alive()
            statuses = [await self.status(n) for n in ids]
            leaders = {(s["term"], s["leader"]) for s in statuses if s is not None}
            if len(leaders) == 1 and None not in statuses:
                [(_, leader)] = leaders
                if isinstance(leader, str) and leader in ids:
                    return leader
            await trio.sleep(POLL_S * 5)

    async def wait_caught_up(self, node_id: str, leader: str) -> None:
        """Wait until ``node_id`` applied what ``leader`` had committed a moment before."""
        while True:
            self.check_alive()
            ls, s = await self.status(leader), await self.status(node_id)
            if ls is not None and s is not None and _int(s, "applied") >= _int(ls, "commit"):
                return
            await trio.sleep(POLL_S * 5)

    async def wait_snapshot(self, node_id: str) -> None:
        """Wait until ``node_id`` has saved the snapshot it was due to take (the KV service
        serializes its whole state for it, which can pause a node for a while)."""
        while True:
            self.check_alive()
            s = await self.status(node_id)
            if s is not None and _int(s, "applied") - _int(s, "snapshot") < (
                DEFAULTS.snapshot_entries
            ):
                return
            await trio.sleep(POLL_S * 5)

    def disk_bytes(self, node_id: str) -> int:
        root = self.directory / "data" / node_id
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _int(status: Status, key: str) -> int:
    value = status[key]
    assert isinstance(value, int), (key, status)
    return value


def _write_cluster_file(directory: Path, addresses: dict[str, _Address]) -> Path:
    lines = ['cluster_id = "bench-membership"', f'secret = "{os.urandom(32).hex()}"',
             'data_dir = "data"', ""]  # fmt: skip
    for node_id in FOUNDERS:
        a = addresses[node_id]
        lines += [f"[nodes.{node_id}]", f'peer = "{a.peer}"', f'client = "{a.client}"', ""]
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@asynccontextmanager
async def _open_cluster(ports: _Ports, spares: int) -> AsyncIterator[_Cluster]:
    """Start the three founders (``spares`` more ids get addresses for joiners); at the exit,
    stop every process and delete the directory, whatever happened."""
    with tempfile.TemporaryDirectory(prefix="trio-raft-bench-") as tmp:
        directory = Path(tmp)
        addresses = {
            f"n{i}": _Address(f"ws://{HOST}:{ports.take()}/raft", f"ws://{HOST}:{ports.take()}/kv")
            for i in range(1, len(FOUNDERS) + spares + 1)
        }
        cluster = _Cluster(directory, _write_cluster_file(directory, addresses), addresses)
        try:
            for node_id in FOUNDERS:
                await cluster.start(node_id)
            yield cluster
        except Exception:
            for node_id in cluster.addresses:
                tail = "\n    ".join(cluster.log(node_id).splitlines()[-15:])
                if tail:
                    print(f"--- end of {node_id}'s output:\n    {tail}", file=sys.stderr)
            raise
        finally:
            await cluster.stop_all()


# -- the writer -------------------------------------------------------------------------------


@attrs.define
class _Writer:
    """:data:`WRITERS` KV clients, each writing its own key in a loop (a client sends its
    writes one at a time), recording when each write is acknowledged."""

    urls: list[str]
    acks: list[list[float]] = attrs.Factory(lambda: [[] for _ in range(WRITERS)])
    """When each client's writes were acknowledged, in order."""
    latencies: list[tuple[float, float]] = attrs.Factory(list)
    """(acknowledged at, latency) of every write."""
    failed: int = 0
    _changed: trio.Event = attrs.Factory(trio.Event)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write until cancelled."""
        async with trio.open_nursery() as nursery:
            for w in range(WRITERS):
                nursery.start_soon(self._loop, w)
            task_status.started()

    async def _loop(self, w: int) -> None:
        async with kv.open_client(self.urls, timeout_s=WRITE_TIMEOUT_S) as client:
            for i in itertools.count():
                start = trio.current_time()
                try:
                    await client.put(f"writer{w}", str(i))
                except kv.KVError:
                    self.failed += 1  # a timeout (10 s): reported, and the gap shows it
                    await trio.sleep(POLL_S)
                    continue
                now = trio.current_time()
                self.acks[w].append(now)
                self.latencies.append((now, now - start))
                self._changed.set()
                self._changed = trio.Event()

    async def _wait_after(self, end: float, count: int) -> None:
        """Until every client has ``count`` acknowledgements at or after ``end``."""
        while any(len(a) - bisect.bisect_left(a, end) < count for a in self.acks):
            await self._changed.wait()

    async def settle(self) -> None:
        """Until every client has :data:`SETTLE_ACKS` more acknowledgements."""
        await self._wait_after(trio.current_time(), SETTLE_ACKS)

    async def gap(self, start: float, end: float) -> float:
        """The longest time a client saw between two of its acknowledged writes, from its last
        one at or before ``start`` to its :data:`AFTER_ACKS`-th at or after ``end`` (waiting for
        those)."""
        await self._wait_after(end, AFTER_ACKS)
        longest = 0.0
        for acks in self.acks:
            first = max(0, bisect.bisect_right(acks, start) - 1)
            last = bisect.bisect_left(acks, end) + AFTER_ACKS
            points = acks[first:last]
            longest = max([longest, *(b - a for a, b in itertools.pairwise(points))])
        return longest

    async def quiet(self) -> tuple[float, float]:
        """Over :data:`QUIET_S` with no change: the longest gap and the median latency."""
        start = trio.current_time()
        await trio.sleep(QUIET_S)
        end = trio.current_time()
        gap = await self.gap(start, end)
        latencies = [lat for at, lat in self.latencies if start <= at <= end]
        return gap, statistics.median(latencies)


# -- the scenarios ----------------------------------------------------------------------------


@attrs.define
class _Figures:
    """What one scenario measured (seconds)."""

    gaps: dict[str, list[float]] = attrs.Factory(dict)
    durations: dict[str, list[float]] = attrs.Factory(dict)
    quiet_gaps: list[float] = attrs.Factory(list)
    latencies: list[float] = attrs.Factory(list)
    failed_writes: int = 0
    notes: list[str] = attrs.Factory(list)

    def add(self, name: str, gap: float, duration: float | None = None) -> None:
        self.gaps.setdefault(name, []).append(gap)
        if duration is not None:
            self.durations.setdefault(name, []).append(duration)


@asynccontextmanager
async def _writing(cluster: _Cluster, figures: _Figures) -> AsyncIterator[_Writer]:
    """Run a writer for the block, after measuring the quiet baseline."""
    writer = _Writer(cluster.urls)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.settle()
        await writer.settle()
        gap, latency = await writer.quiet()
        figures.quiet_gaps.append(gap)
        figures.latencies.append(latency)
        yield writer
        figures.failed_writes += writer.failed
        nursery.cancel_scope.cancel()


async def _transfers(ports: _Ports, settings: Settings, figures: _Figures) -> None:
    async with _open_cluster(ports, 0) as cluster:
        leader = await cluster.wait_leader(FOUNDERS)
        async with _writing(cluster, figures) as writer, cluster.client() as admin:
            for _ in range(settings.repeat):
                start = trio.current_time()
                new_leader = await admin.transfer_leader()
                end = trio.current_time()
                if new_leader == leader:
                    raise RuntimeError(f"the transfer left {leader} leading")
                leader = new_leader
                figures.add("transfer", await writer.gap(start, end), end - start)
                await writer.settle()


async def _kills(ports: _Ports, settings: Settings, figures: _Figures) -> None:
    async with _open_cluster(ports, 0) as cluster:
        leader = await cluster.wait_leader(FOUNDERS)
        async with _writing(cluster, figures) as writer:
            for _ in range(settings.repeat):
                start = trio.current_time()
                await cluster.kill(leader)
                figures.add("kill", await writer.gap(start, start))
                await cluster.start(leader)
                new_leader = await cluster.wait_leader(FOUNDERS)
                await cluster.wait_caught_up(leader, new_leader)
                leader = new_leader
                await writer.settle()


async def _join(cluster: _Cluster, node_id: str, extra: Sequence[str] = ()) -> dict[str, float]:
    """Start ``node_id`` with ``--join``; the times (from its start) when it said it was a
    learner, caught up, and a voter."""
    start = trio.current_time()
    await cluster.start(node_id, join=True, extra=extra)
    marks = {"learner": f"{node_id}: learner,", "caught up": f"{node_id}: caught up",
             "voter": f"{node_id}: voter in a cluster of"}  # fmt: skip
    seen: dict[str, float] = {}
    while "voter" not in seen:
        output = cluster.log(node_id)
        now = trio.current_time()
        for name, text in marks.items():
            if name not in seen and text in output:
                seen[name] = now - start
        for failure in ("could not add", "did not catch up", "promotion failed", "joining stopped"):
            if f"{node_id}: {failure}" in output:
                raise RuntimeError(f"{node_id} did not join:\n{output}")
        cluster.check_alive()
        await trio.sleep(POLL_S)
    return seen


async def _joins_and_removals(ports: _Ports, settings: Settings, figures: _Figures) -> None:
    async with _open_cluster(ports, settings.repeat) as cluster:
        members = list(FOUNDERS)
        leader = await cluster.wait_leader(members)
        async with _writing(cluster, figures) as writer, cluster.client() as admin:
            for i in range(settings.repeat):
                new = f"n{len(FOUNDERS) + 1 + i}"
                start = trio.current_time()
                seen = await _join(cluster, new)
                figures.add("join", await writer.gap(start, start + seen["voter"]), seen["voter"])
                members.append(new)
                await writer.settle()
                start = trio.current_time()
                await admin.remove(leader)
                end = trio.current_time()
                figures.add("remove", await writer.gap(start, end), end - start)
                code = await cluster.wait_exit(leader)
                if code != 0:
                    raise RuntimeError(f"the removed leader {leader} exited with {code}")
                members.remove(leader)
                leader = await cluster.wait_leader(members)
                await writer.settle()


async def _large(ports: _Ports, settings: Settings, figures: _Figures) -> None:
    async with _open_cluster(ports, 1) as cluster:
        leader = await cluster.wait_leader(FOUNDERS)
        rng = random.Random(1)
        values = [rng.randbytes(settings.value_bytes) for _ in range(64)]
        keys = iter(range(settings.entries))
        start = trio.current_time()

        async def load() -> None:
            async with cluster.client() as loader:
                for i in keys:
                    await loader.put(f"key{i:07d}", values[i % len(values)])

        async with trio.open_nursery() as nursery:
            for _ in range(LOADERS):
                nursery.start_soon(load)
        load_s = trio.current_time() - start
        leader = await cluster.wait_leader(FOUNDERS)
        for node_id in FOUNDERS:
            await cluster.wait_caught_up(node_id, leader)
            await cluster.wait_snapshot(node_id)
        status = await cluster.status(leader)
        assert status is not None
        figures.notes.append(
            f"{settings.entries:,} puts of {settings.value_bytes:,} B loaded in {load_s:.1f} s "
            f"({settings.entries / load_s:,.0f} /s); leader's last index "
            f"{_int(status, 'last_index'):,}, its data directory "
            f"{cluster.disk_bytes(leader) / 1e6:,.1f} MB"
        )
        async with _writing(cluster, figures) as writer:
            before = await cluster.status(leader)
            start = trio.current_time()
            timeout = ["--catch-up-timeout", str(_bound_s("large", settings))]
            seen = await _join(cluster, "n4", timeout)
            figures.add("large", await writer.gap(start, start + seen["voter"]), seen["voter"])
            after = await cluster.status(leader)
            figures.notes.append(
                f"n4 learner after {seen['learner']:.2f} s, caught up after "
                f"{seen['caught up']:.2f} s, voter after {seen['voter']:.2f} s (from its process "
                "start)"
            )
            if before is not None and after is not None:
                figures.notes.append(
                    f"{leader}'s snapshot index {_int(before, 'snapshot'):,} before the join, "
                    f"{_int(after, 'snapshot'):,} after it"
                )
        figures.notes.append(f"n4's data directory then: {cluster.disk_bytes('n4') / 1e6:,.1f} MB")


def _bound_s(name: str, settings: Settings) -> float:
    """The time limit of scenario ``name`` (a hang detector: a figure is never asserted)."""
    if name == "large":
        return 120.0 + settings.entries * settings.value_bytes / 200_000
    return 60.0 + 30.0 * settings.repeat


async def _measure(name: str, settings: Settings) -> _Figures:
    figures = _Figures()
    ports = _Ports()
    runner = {"transfer": _transfers, "kill": _kills, "join": _joins_and_removals,
              "large": _large}[name]  # fmt: skip
    interrupted = False
    try:
        # Ctrl-C reaches the nodes too (one process group), and they exit at once: the
        # measurement is cancelled first, so that their exit is not reported as a failure.
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    nonlocal interrupted
                    async for _ in signals:
                        interrupted = True
                        nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                with trio.fail_after(_bound_s(name, settings)):
                    await runner(ports, settings, figures)
                nursery.cancel_scope.cancel()
    except Exception:
        if not interrupted:
            raise
    finally:
        ports.close()
    if interrupted:
        raise KeyboardInterrupt
    return figures


# -- the report -------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def _stats(values: list[float]) -> str:
    return f"median {_ms(statistics.median(values)):>8}, max {_ms(max(values)):>8}"


def _command(names: Sequence[str], settings: Settings) -> str:
    only = " ".join(f"--only {n}" for n in names)
    if "large" in names:
        return f"{COMMAND} {only} --entries {settings.entries} --value-bytes {settings.value_bytes}"
    return f"{COMMAND} {only} --repeat {settings.repeat}"


def run(
    *, quick: bool, only: Sequence[str] = SCENARIOS, settings: Settings | None = None
) -> Iterator[str]:
    """Measure the scenarios ``only`` (with ``settings``, else :data:`QUICK` or
    :data:`FULL`), yielding the report's lines."""
    settings = settings or (QUICK if quick else FULL)
    heartbeat = DEFAULTS.heartbeat_s
    yield (
        f"memb 3 trio-raft serve processes on {HOST}, default [raft]: heartbeat {_ms(heartbeat)},"
        f" election timeout {_ms(DEFAULTS.election_timeout_s_min)}-"
        f"{_ms(DEFAULTS.election_timeout_s_max)}; {WRITERS} writing clients; a shared machine: "
        "compare with the noise floor"
    )
    groups = [[n] for n in ("transfer", "kill") if n in only]
    if "join" in only or "remove" in only:
        groups.append(["join", "remove"])
    if "large" in only:
        groups.append(["large"])
    for group in groups:
        figures = trio.run(_measure, group[0], settings)
        command = _command(group, settings)
        quiet = max(figures.quiet_gaps)
        latency = statistics.median(figures.latencies)
        yield (
            f"memb   baseline: write latency median {_ms(latency)}, longest gap with no change "
            f"over {QUIET_S:g} s {_ms(quiet)}; {figures.failed_writes} writes failed"
        )
        for name in group:
            gaps, durations = figures.gaps[name], figures.durations.get(name, [])
            label = {
                "transfer": "transfer-leader",
                "kill": "kill -9 of the leader",
                "join": "serve --join until voter",
                "remove": "remove the leader",
                "large": "join with the large state",
            }[name]
            line = f"memb   {label:<26} longest write gap {_stats(gaps)} ({len(gaps)} runs)"
            if durations:
                line += f"; the operation took {_stats(durations)}"
            yield line
            if name == "transfer":
                target = 2 * heartbeat + latency
                yield (f"memb   {'':<26} target: 2 heartbeats + 1 write round trip = {_ms(target)}")
        for note in figures.notes:
            yield f"memb   {note}"
        yield f"memb   ({command})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, a smaller state")
    parser.add_argument(
        "--only", action="append", choices=SCENARIOS,
        help="measure only this (repeatable; join and remove run together)",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, help="rounds of each change")
    parser.add_argument("--entries", type=int, help="puts before the large join")
    parser.add_argument("--value-bytes", type=int, help="size of each of those puts")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    settings = Settings(
        repeat=base.repeat if args.repeat is None else args.repeat,
        entries=base.entries if args.entries is None else args.entries,
        value_bytes=base.value_bytes if args.value_bytes is None else args.value_bytes,
    )
    if min(settings.repeat, settings.entries, settings.value_bytes) < 1:
        parser.error("--repeat, --entries and --value-bytes must be at least 1")
    if settings.value_bytes > kv.MAX_VALUE_BYTES:
        parser.error(f"--value-bytes must be at most {kv.MAX_VALUE_BYTES}")
    try:
        for line in run(quick=args.quick, only=args.only or SCENARIOS, settings=settings):
            print(line, flush=True)
    except KeyboardInterrupt:
        print("interrupted: every node stopped, every data directory deleted", flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
