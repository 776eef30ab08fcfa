"""Real clusters side by side: trio-raft (file and memory storage), a null node and PySyncObj.

Every system runs as one OS process per node on 127.0.0.1 and serves the same small binary
protocol (:mod:`benchmarks._cluster_protocol`) to a load generator in a process of its own
(:mod:`benchmarks._cluster_load`), so the figures compare like with like::

    python -m benchmarks.bench_cluster                 # every scenario (about 10-15 minutes)
    python -m benchmarks.bench_cluster --quick         # a smoke run (about a minute)
    python -m benchmarks.bench_cluster --systems trio-raft-file,pysyncobj-nobatch \\
        --outstanding 1,128 --seconds 8 --scenarios writes

Scenarios: ``writes`` (16-byte writes at each ``--outstanding``, 3 nodes), ``sizes`` (values of
``--sizes`` bytes at 16 outstanding), ``reads`` (linearizable reads, and a 90/10 read/write mix),
``five`` (5 nodes), ``failover`` (``kill -9`` of the leader until the first committed write,
``--failovers`` times) and ``catchup`` (a follower ``--catchup-entries`` behind). The run's
floors (one fsync, one WebSocket round trip, the pure core, the null node) are measured first.
Results go to ``--results`` (default ``bench-results/cluster-<time>``): ``results.json``,
``results.md`` and PNG plots. Every node process and data directory is removed at the end, on an
error and on Ctrl-C. See ``docs/source/performance.rst``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import attrs
import trio

import trio_raft
from trio_raft._local_cluster import stop_processes
from trio_raft._util import bind_error

from . import _cluster_floors, _cluster_report
from ._cluster_load import LoadError, find_leader, status, write_once

COMMAND: Final = "python -m benchmarks.bench_cluster"
ROOT: Final = Path(__file__).resolve().parent.parent
HOST: Final = "127.0.0.1"
STOP_GRACE_S: Final = 2.0
CATCHUP_OUTSTANDING: Final = 1024
"""Writes in flight while the catch-up scenario's follower is stopped."""
CATCHUP_BOUND_S: Final = 120.0


@attrs.frozen
class SystemSpec:
    """How one system's node processes are started."""

    kind: str
    """``trio-raft``, ``null`` or ``pysyncobj``."""
    storage: str = "memory"
    batch: bool = True
    """PySyncObj only: ``appendEntriesUseBatch``."""

    @property
    def module(self) -> str:
        return (
            "benchmarks._cluster_pysyncobj"
            if self.kind == "pysyncobj"
            else "benchmarks._cluster_node"
        )


SYSTEMS: Final = {
    "null": SystemSpec("null"),
    "pysyncobj-nobatch": SystemSpec("pysyncobj", batch=False),
    "pysyncobj": SystemSpec("pysyncobj", batch=True),
    "trio-raft-memory": SystemSpec("trio-raft", storage="memory"),
    "trio-raft-file": SystemSpec("trio-raft", storage="file"),
}
"""Every system, in the order they are measured (baselines first, so that ratios print)."""
SCENARIOS: Final = ("writes", "sizes", "reads", "five", "failover", "catchup")


@attrs.frozen
class Settings:
    """What a run measures."""

    systems: tuple[str, ...] = tuple(SYSTEMS)
    scenarios: tuple[str, ...] = SCENARIOS
    outstanding: tuple[int, ...] = (1, 16, 128, 1024)
    seconds: float = 5.0
    """Length of each measurement window."""
    warmup_s: float = 1.0
    sizes: tuple[int, ...] = (256, 4096, 65536)
    failovers: int = 10
    catchup_entries: int = 100_000
    connections: int = 4
    base_port: int | None = None
    """Take ports from here upward (else free ports below the ephemeral range are found)."""
    results: Path | None = None


FULL: Final = Settings()
QUICK: Final = Settings(
    systems=("null", "pysyncobj-nobatch", "trio-raft-memory", "trio-raft-file"),
    scenarios=("writes", "failover"),
    outstanding=(1, 16, 128),
    seconds=1.5,
    warmup_s=0.5,
    failovers=2,
    catchup_entries=10_000,
)


class _Ports:
    """Hands out TCP ports for the nodes (which must know every peer's port before starting)."""

    def __init__(self, base: int | None) -> None:
        self._next = base if base is not None else 20_000 + secrets.randbelow(8_000)
        self._checked = base is None

    def take(self) -> int:
        while True:
            port = self._next
            self._next += 1
            if self._next >= 32_000 and self._checked:
                self._next = 20_000
            if not self._checked or _bindable(port):
                return port


def _bindable(port: int) -> bool:
    return bind_error(HOST, port) is None


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


@attrs.define
class _Cluster:
    """The node processes of one system."""

    name: str
    spec: SystemSpec
    nodes: dict[str, tuple[int, int]]
    """Each node's (peer port, front port)."""
    directory: Path
    secret: str = attrs.Factory(lambda: secrets.token_hex(16))
    processes: dict[str, trio.Process] = attrs.Factory(dict)

    @property
    def fronts(self) -> dict[str, int]:
        return {nid: ports[1] for nid, ports in self.nodes.items()}

    @property
    def pids(self) -> dict[str, int]:
        return {nid: p.pid for nid, p in self.processes.items() if p.returncode is None}

    async def start_node(self, node_id: str) -> None:
        spec = {
            "system": self.spec.kind,
            "id": node_id,
            "storage": self.spec.storage,
            "batch": self.spec.batch,
            "data_dir": str(self.directory / node_id),
            "nodes": self.nodes,
            "secret": self.secret,
        }
        with (self.directory / f"{node_id}.log").open("ab") as log:
            self.processes[node_id] = await trio.lowlevel.open_process(
                [sys.executable, "-m", self.spec.module, json.dumps(spec)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_child_env(),
            )

    async def kill(self, node_id: str) -> None:
        process = self.processes.pop(node_id)
        process.kill()
        await process.wait()

    async def wait_answering(self, node_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
        with trio.move_on_after(timeout_s):
            while True:
                process = self.processes[node_id]
                if process.returncode is not None:
                    raise LoadError(f"{self.name} {node_id} exited: {self.log_tail(node_id)}")
                answer = await status(self.fronts[node_id], timeout_s=0.5)
                if answer is not None:
                    return answer
                await trio.sleep(0.02)
        raise LoadError(f"{self.name} {node_id} did not answer: {self.log_tail(node_id)}")

    def log_tail(self, node_id: str) -> str:
        try:
            text = (self.directory / f"{node_id}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text[-600:].strip() or "(empty log)"


@contextlib.asynccontextmanager
async def _open_cluster(
    name: str, nodes: int, ports: _Ports, work: Path
) -> AsyncIterator[_Cluster]:
    spec = SYSTEMS[name]
    count = 1 if spec.kind == "null" else nodes
    directory = Path(tempfile.mkdtemp(prefix=f"{name}-{count}-", dir=work))
    ids = [f"n{i}" for i in range(1, count + 1)]
    cluster = _Cluster(name, spec, {nid: (ports.take(), ports.take()) for nid in ids}, directory)
    try:
        for nid in ids:
            await cluster.start_node(nid)
        for nid in ids:
            await cluster.wait_answering(nid)
        await find_leader(cluster.fronts, timeout_s=30.0)
        yield cluster
    except LoadError as exc:
        tails = [f"{nid}: ...{cluster.log_tail(nid)[-300:]}" for nid in cluster.nodes]
        raise LoadError(f"{exc} | node logs: " + " | ".join(tails)) from exc
    finally:
        await stop_processes(cluster.processes.values(), STOP_GRACE_S)
        shutil.rmtree(directory, ignore_errors=True)


async def _load(
    cluster: _Cluster, settings: Settings, fronts: Mapping[str, int] | None = None, **step: Any
) -> dict[str, Any]:
    """Run one load-generator process against ``cluster``; its JSON result."""
    spec = {
        "fronts": dict(fronts or cluster.fronts),
        "pids": cluster.pids,
        "connections": settings.connections,
        "warmup_s": settings.warmup_s,
        "seconds": settings.seconds,
        **step,
    }
    bound = 60.0 + spec["warmup_s"] + spec["seconds"] + spec.get("count", 0) / 500
    with trio.move_on_after(bound):
        done = await trio.run_process(
            [sys.executable, "-m", "benchmarks._cluster_load", json.dumps(spec)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=_child_env(),
        )
        if done.returncode != 0:
            return {"failed": done.stderr.decode(errors="replace")[-600:]}
        result = json.loads(done.stdout.decode().strip().splitlines()[-1])
        assert isinstance(result, dict)
        return result
    return {"failed": f"the load generator did not finish within {bound:.0f} s"}


class _Output:
    """Prints the report's lines; with rich on a terminal, under a progress bar."""

    def __init__(self, total: int, prefix: str) -> None:
        self.prefix = prefix
        self._progress: Any = None
        self._task: Any = None
        if sys.stdout.isatty() and importlib.util.find_spec("rich") is not None:
            from rich.progress import Progress  # type: ignore[import-not-found, unused-ignore]

            self._progress = Progress(transient=True)
            self._task = self._progress.add_task("cluster benchmark", total=total)

    def __enter__(self) -> _Output:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def line(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(f"{self.prefix}{text}", markup=False, highlight=False)
        else:
            print(f"{self.prefix}{text}", flush=True)

    def doing(self, what: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=what)

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)


def _describe(row: Mapping[str, Any], rows: list[dict[str, Any]]) -> str:
    if row.get("failed"):
        return (
            f"{row['system']:<18} {row['scenario']} N={row['outstanding']}: FAILED {row['failed']}"
        )
    latency = row.get("write_ms") or row.get("read_ms") or {}
    mix = {0.0: "writes", 1.0: "reads"}.get(row["read_ratio"], f"{row['read_ratio']:.0%} reads")
    text = (
        f"{row['system']:<18} {row['nodes']} node{'s' if row['nodes'] > 1 else ' '} "
        f"N={row['outstanding']:<5} "
        f"{row['value_bytes']:>6} B {mix:<9} {row['ops_per_s']:>9,.0f} /s  "
        f"p50 {latency.get('p50', 0):7.2f} ms  p99 {latency.get('p99', 0):7.2f} ms"
    )
    if "leader_cpu_us_per_op" in row:
        text += f"  leader {row['leader_cpu_us_per_op']:6,.0f} µs/op"
    base = _cluster_report.baseline_row(rows, row)
    if base is not None and base is not row:
        text += f"  {row['ops_per_s'] / base['ops_per_s']:.2f}x {base['system']}"
    null = _cluster_report.null_row(rows, row)
    if null is not None and null is not row:
        text += f"  {row['ops_per_s'] / null['ops_per_s']:.3f} of null"
    if row.get("errors") or row.get("redirects"):
        text += f"  ({row['errors']} errors, {row['redirects']} redirects)"
    return text


@attrs.define
class _Runner:
    settings: Settings
    work: Path
    out: _Output
    results: dict[str, Any]
    ports: _Ports

    @property
    def rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.results["rows"]
        return rows

    async def measure(
        self,
        cluster: _Cluster,
        scenario: str,
        nodes: int,
        outstanding: int,
        value_bytes: int = 16,
        read_ratio: float = 0.0,
    ) -> None:
        self.out.doing(f"{cluster.name} {scenario} N={outstanding}")
        result = await _load(
            cluster,
            self.settings,
            outstanding=outstanding,
            value_bytes=value_bytes,
            read_ratio=read_ratio,
        )
        row = {
            "system": cluster.name,
            "scenario": scenario,
            "nodes": nodes,
            "outstanding": outstanding,
            "value_bytes": value_bytes,
            "read_ratio": read_ratio,
            **result,
        }
        self.rows.append(row)
        self.out.line(_describe(row, self.rows))
        note = _cluster_report.stall_note(row)
        if note is not None:
            self.results["notes"].append(note)
            self.out.line(note)
        self.out.advance()

    async def system(self, name: str) -> None:
        s = self.settings
        spec = SYSTEMS[name]
        # catch-up last: it leaves a long log behind.
        order = ("writes", "sizes", "reads", "failover", "catchup")
        three = [x for x in order if x in s.scenarios]
        if spec.kind == "null":
            three = [x for x in three if x not in ("failover", "catchup")]
        if three:
            await self._guarded(name, 3, three)
        if "five" in s.scenarios and spec.kind != "null":
            await self._guarded(name, 5, ["five"])

    async def _guarded(self, name: str, nodes: int, scenarios: list[str]) -> None:
        """Run ``scenarios`` on one cluster; a failure ends them (noted) but not the run."""
        try:
            async with _open_cluster(name, nodes, self.ports, self.work) as cluster:
                for scenario in scenarios:
                    await self.scenario(cluster, scenario)
        except LoadError as exc:
            note = f"{name}, {nodes} nodes: FAILED, the scenarios after it skipped: {exc}"
            self.results["notes"].append(note)
            self.out.line(note)

    async def scenario(self, cluster: _Cluster, scenario: str) -> None:
        s = self.settings
        nodes = len(cluster.nodes)
        if scenario == "writes":
            for n in s.outstanding:
                await self.measure(cluster, "writes", nodes, n)
        elif scenario == "five":
            for n in [n for n in s.outstanding if n <= 128]:
                await self.measure(cluster, "writes", nodes, n)
        elif scenario == "sizes":
            for size in s.sizes:
                await self.measure(cluster, "sizes", nodes, 16, value_bytes=size)
        elif scenario == "reads":
            for n in (16, 128):
                await self.measure(cluster, "reads", nodes, n, read_ratio=1.0)
                await self.measure(cluster, "reads", nodes, n, read_ratio=0.9)
        elif scenario == "failover":
            await self.failover(cluster)
        else:
            await self.catchup(cluster)

    async def failover(self, cluster: _Cluster) -> None:
        times: list[float] = []
        rejoins: list[float] = []
        value = b"0123456789abcdef"
        for i in range(self.settings.failovers):
            self.out.doing(f"{cluster.name} failover {i + 1}/{self.settings.failovers}")
            leader = await find_leader(cluster.fronts)
            await cluster.kill(leader)
            start = time.perf_counter()
            others = {nid: port for nid, port in cluster.fronts.items() if nid != leader}
            with trio.move_on_after(30.0):
                while True:
                    if await write_once(others, b"failover", value, timeout_s=2.0):
                        times.append(time.perf_counter() - start)
                        break
                    await trio.sleep(0.002)
            await cluster.start_node(leader)
            restart = time.perf_counter()
            with trio.move_on_after(60.0):
                await self._wait_caught_up(cluster, leader)
                rejoins.append(time.perf_counter() - restart)
        figures: dict[str, Any] = {"times_s": times, "rejoin_s": rejoins}
        if times:
            figures.update(median_s=statistics.median(times), max_s=max(times))
        if rejoins:
            figures["rejoin_median_s"] = statistics.median(rejoins)
        self.results["failover"][cluster.name] = figures
        self.out.line(
            f"{cluster.name:<18} failover x{len(times)} (kill -9 of the leader -> first "
            f"committed write): median {figures.get('median_s', float('nan')):.3f} s, max "
            f"{figures.get('max_s', float('nan')):.3f} s"
            + (
                ""
                if len(times) == self.settings.failovers
                else f"  ({self.settings.failovers - len(times)} timed out)"
            )
        )
        self.out.advance()

    async def _wait_caught_up(self, cluster: _Cluster, node_id: str) -> None:
        """Wait until ``node_id`` has applied what the leader has."""
        await cluster.wait_answering(node_id, timeout_s=60.0)
        while True:
            leader = await find_leader(cluster.fronts)
            target = await status(cluster.fronts[leader])
            mine = await status(cluster.fronts[node_id])
            if target is not None and mine is not None and mine["applied"] >= target["applied"]:
                return
            await trio.sleep(0.02)

    async def catchup(self, cluster: _Cluster) -> None:
        """A follower stopped (SIGSTOP) while ``catchup_entries`` writes commit, then resumed
        (SIGCONT): how long until it has applied them all. Stopping rather than restarting it
        keeps a memory-storage node's log (a restarted one would come back empty, which no
        Raft implementation expects of a voter)."""
        entries = self.settings.catchup_entries
        self.out.doing(f"{cluster.name} catch-up: writing {entries:,} entries")
        leader = await find_leader(cluster.fronts)
        follower = next(nid for nid in cluster.nodes if nid != leader)
        process = cluster.processes[follower]
        others = {nid: port for nid, port in cluster.fronts.items() if nid != follower}
        process.send_signal(signal.SIGSTOP)
        try:
            load = await _load(
                cluster, self.settings, fronts=others, outstanding=CATCHUP_OUTSTANDING,
                count=entries,
            )  # fmt: skip
        finally:
            process.send_signal(signal.SIGCONT)
        start = time.perf_counter()
        figures: dict[str, Any] = {"entries": entries}
        if load.get("elapsed_s"):
            figures["load_per_s"] = load["acked"] / load["elapsed_s"]
        self.out.doing(f"{cluster.name} catch-up: {follower} resumed")
        with trio.move_on_after(CATCHUP_BOUND_S):
            await self._wait_caught_up(cluster, follower)
            figures["caught_up_s"] = time.perf_counter() - start
        self.results["catchup"][cluster.name] = figures
        caught = figures.get("caught_up_s")
        self.out.line(
            f"{cluster.name:<18} catch-up of a follower {entries:,} entries behind: "
            + (
                f"{caught:.2f} s after it resumed"
                if caught is not None
                else f"did not catch up within {CATCHUP_BOUND_S:.0f} s"
            )
            + f"; the load wrote {figures.get('load_per_s', 0):,.0f} /s"
            + (f" ({load['failed']})" if load.get("failed") else "")
        )
        self.out.advance()


def _units(settings: Settings) -> int:
    per = 0
    s = settings.scenarios
    per += len(settings.outstanding) if "writes" in s else 0
    per += len(settings.sizes) if "sizes" in s else 0
    per += 4 if "reads" in s else 0
    per += len([n for n in settings.outstanding if n <= 128]) if "five" in s else 0
    per += ("failover" in s) + ("catchup" in s)
    return per * len(settings.systems)


def _machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": sys.platform,
        "load_before": list(os.getloadavg()),
    }


def _versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "trio_raft": trio_raft.__version__}
    for dist in ("trio", "trio-websocket", "cbor2", "pysyncobj"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        )
        versions["git"] = commit.stdout.strip()
    return versions


def command_line(settings: Settings, quick: bool) -> str:
    """The command that reruns ``settings``."""
    base = QUICK if quick else FULL
    parts = [COMMAND] + (["--quick"] if quick else [])
    for flag, name in (
        ("--systems", "systems"),
        ("--scenarios", "scenarios"),
        ("--outstanding", "outstanding"),
        ("--sizes", "sizes"),
    ):
        value = getattr(settings, name)
        if value != getattr(base, name):
            parts.append(f"{flag} {','.join(map(str, value))}")
    for flag, name in (
        ("--seconds", "seconds"),
        ("--warmup", "warmup_s"),
        ("--failovers", "failovers"),
        ("--catchup-entries", "catchup_entries"),
        ("--connections", "connections"),
    ):
        value = getattr(settings, name)
        if value != getattr(base, name):
            parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    return " ".join(parts)


async def _run(
    settings: Settings,
    work: Path,
    results: dict[str, Any],
    out: _Output,
    interrupted: list[bool],
    quick: bool,
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for _ in signals:
                    interrupted.append(True)
                    nursery.cancel_scope.cancel(reason="interrupted (SIGINT or SIGTERM)")

            nursery.start_soon(watch)
            out.doing("floors")
            floors = await _cluster_floors.measure(str(work), quick=quick)
            results["floors"] = floors
            out.line(
                "floors: one fsync {} µs, one WebSocket round trip {} µs, pure core "
                "{} entries/s (1 per proposal), {} (64 per proposal)".format(
                    _num(floors["fsync_us"]),
                    _num(floors["websocket_rtt_us"]),
                    _num(floors.get("core_entries_per_s_batch1")),
                    _num(floors.get("core_entries_per_s_batch64")),
                )
            )
            runner = _Runner(settings, work, out, results, _Ports(settings.base_port))
            for name in settings.systems:
                if SYSTEMS[name].kind == "pysyncobj" and not _have_pysyncobj():
                    note = (
                        f"{name}: skipped, PySyncObj is not installed (pip install "
                        "'.[bench]', or pip install pysyncobj==0.3.17)"
                    )
                    results["notes"].append(note)
                    out.line(note)
                    continue
                await runner.system(name)
            nursery.cancel_scope.cancel()


def _num(value: object) -> str:
    return f"{value:,.0f}" if isinstance(value, float) else "n/a"


def _have_pysyncobj() -> bool:
    return importlib.util.find_spec("pysyncobj") is not None


def measure(settings: Settings, *, quick: bool, prefix: str = "") -> Path:
    """Run the benchmark, printing its lines (each after ``prefix``); return the results
    directory. Every process is stopped and every temporary directory removed, also on an
    error or an interruption, after which the rows measured so far are written (marked
    incomplete) before the exception propagates.

    Raises:
        KeyboardInterrupt: SIGINT or SIGTERM arrived (after the cleanup).
    """
    started = datetime.datetime.now(datetime.UTC)
    destination = settings.results or (
        Path("bench-results") / f"cluster-{started.strftime('%Y%m%d-%H%M%S')}"
    )
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": command_line(settings, quick),
        "machine": _machine(),
        "versions": _versions(),
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in attrs.asdict(settings).items()
        },
        "rows": [],
        "failover": {},
        "catchup": {},
        "notes": [
            "a shared machine: compare figures only with the baselines and floors of the same "
            "run; PySyncObj keeps its log in memory and never fsyncs, and its reads are not "
            "linearizable (answered from the leader's copy)"
        ],
    }
    work = Path(tempfile.mkdtemp(prefix="trio-raft-bench-"))
    interrupted: list[bool] = []
    try:
        with _Output(_units(settings), prefix) as out:
            out.line(f"cluster benchmark: data in {work}, results to {destination}")
            out.line(
                f"machine: {results['machine']['cpus']} CPUs, load average "
                f"{' '.join(f'{x:.2f}' for x in results['machine']['load_before'])}; "
                "a shared machine: compare with the baselines of the same run"
            )
            try:
                trio.run(_run, settings, work, results, out, interrupted, quick)
                if interrupted:
                    raise KeyboardInterrupt
            except BaseException as exc:
                if results["rows"]:  # keep what was measured
                    why = "interrupted" if interrupted else f"{type(exc).__name__}: {exc}"
                    results["notes"].append(f"INCOMPLETE run ({why})")
                    _write(results, destination, out)
                    out.line(f"partial results: {destination}/results.json, results.md")
                raise
            _write(results, destination, out)
            for line in _cluster_report._summary(results):
                out.line(line)
            out.line(f"results: {destination}/results.json, results.md ({results['command']})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return destination


def _write(results: dict[str, Any], destination: Path, out: _Output) -> None:
    results["machine"]["load_after"] = list(os.getloadavg())
    destination.mkdir(parents=True, exist_ok=True)
    (destination / "results.json").write_text(json.dumps(results, indent=1))
    (destination / "results.md").write_text(_cluster_report.markdown(results))
    for name in _cluster_report.plots(results, destination):
        out.line(f"plot: {destination / name}" if name.endswith(".png") else name)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def _names(choices: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(x.strip() for x in text.split(",") if x.strip())
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {','.join(choices)}")
        return names

    return parse


def parse_args(argv: list[str] | None) -> tuple[Settings, bool]:
    """The settings the command line asks for, and whether ``--quick`` was given."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (about a minute)")
    parser.add_argument("--systems", type=_names(tuple(SYSTEMS)), help=",".join(SYSTEMS))
    parser.add_argument("--scenarios", type=_names(SCENARIOS), help=",".join(SCENARIOS))
    parser.add_argument("--outstanding", type=_ints, help="requests in flight, e.g. 1,16,128")
    parser.add_argument("--sizes", type=_ints, help="value sizes of the sizes scenario")
    parser.add_argument("--seconds", type=float, help="measurement window of each row")
    parser.add_argument("--warmup", type=float, help="seconds of load before each window")
    parser.add_argument("--failovers", type=int, help="kill -9 rounds per system")
    parser.add_argument("--catchup-entries", type=int, help="how far behind the follower is")
    parser.add_argument("--connections", type=int, help="load-generator connections (max)")
    parser.add_argument("--base-port", type=int, help="take node ports from here upward")
    parser.add_argument("--results", type=Path, help="directory for results.json/.md and plots")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    overrides = {
        "systems": args.systems,
        "scenarios": args.scenarios,
        "outstanding": args.outstanding,
        "sizes": args.sizes,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "failovers": args.failovers,
        "catchup_entries": args.catchup_entries,
        "connections": args.connections,
        "base_port": args.base_port,
        "results": args.results,
    }
    settings = attrs.evolve(base, **{k: v for k, v in overrides.items() if v is not None})
    if min(settings.outstanding, default=0) < 1 or settings.seconds <= 0:
        parser.error("--outstanding values must be >= 1 and --seconds > 0")
    if max(settings.sizes, default=0) > 1 << 20:
        parser.error("--sizes must be at most 1 MiB")
    return settings, args.quick


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.bench_cluster``."""
    settings, quick = parse_args(argv)
    try:
        measure(settings, quick=quick)
    except KeyboardInterrupt:
        print("interrupted: every node stopped, every data directory deleted", flush=True)
        return 130
    return 0


def run(*, quick: bool) -> Iterator[str]:
    """For ``python -m benchmarks``: run this benchmark in a child process, yielding its lines
    (prefixed ``clus``); Ctrl-C reaches the child too, which cleans up."""
    command = [sys.executable, "-m", "benchmarks.bench_cluster"] + (["--quick"] if quick else [])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=_child_env())
    try:
        assert process.stdout is not None
        for line in process.stdout:
            yield f"clus {line.rstrip()}"
        process.wait()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait()


if __name__ == "__main__":
    sys.exit(main())
