"""Running a cluster of ``python -m trio_raft serve`` processes from a test.

:func:`open_process_cluster` writes a cluster file (ports from :mod:`tests._ports`,
optional ``[raft]`` settings, client token and per-node ``dial`` tables), starts the processes
through :class:`trio_raft._local_cluster.LocalCluster` and, whatever happens, stops them all on
exit: SIGTERM then SIGKILL after a grace period when the test passed, SIGKILL at once (with the
statuses and every node's log printed) when it failed. :class:`KVLoad` runs concurrent KV
clients that record a :class:`~trio_raft.testing.History` for
:func:`~trio_raft.testing.check_linearizable`.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path

import attrs
import trio

from trio_raft import kv
from trio_raft._local_cluster import LocalCluster
from trio_raft._serve import ClusterFile, NodeAddress, load_cluster_file
from trio_raft._types import SnapshotMeta
from trio_raft._wal._file_storage import DEFAULT_MAX_RECORD_BYTES
from trio_raft._wal._fs import OsFileSystem
from trio_raft._wal._snapshot_file import SNAPSHOT_FILE, verify_snapshot
from trio_raft.testing import History

from .. import _ports
from ._traced_node import CONNECT_TIMEOUT_ENV, TRACE_CHUNK, TRACE_INSTALL

TRACED_NODE = Path(__file__).with_name("_traced_node.py")

NODE_IDS = ("n1", "n2", "n3")
HOST = "127.0.0.1"
SMALL_SNAPSHOTS: Mapping[str, object] = {"snapshot_entries": 50, "snapshot_keep_entries": 10}
"""``[raft]`` settings that make nodes snapshot and compact every 50 entries (InstallSnapshot
then happens as soon as a node misses a few dozen writes)."""
POLL_S = 0.05
"""Period of status polling in the waits."""

Status = dict[str, object]
Statuses = dict[str, Status | None]


DEADLINE_S = 120.0
"""Bound on every real-process test, on the real clock: it detects a hang (a test that would
otherwise wait forever), it is not a speed assertion. A test takes about 2 to 13 s on an idle
machine; the bound is ten times that, because the tests share 2 cores with xdist workers and
other jobs in CI. Speeds are printed as ``FIGURE`` lines, never asserted (benchmarks/ measures)."""
CLIENT_TIMEOUT_S = 30.0
"""Default timeout of a test's KV calls: an operation the test needs must not fail only because
the machine is busy (an outcome the load records as unknown has its own, shorter timeout)."""


@attrs.frozen
class NodePorts:
    peer: int
    """The node's real peer port (where it listens for peers)."""
    client: int
    """The node's KV client port."""


def allocate_ports(ids: Sequence[str] = NODE_IDS) -> dict[str, NodePorts]:
    """Free peer and client ports for every node, reserved until the test ends
    (:mod:`tests._ports`)."""
    ports = _ports.allocate(2 * len(ids))
    return {nid: NodePorts(ports[2 * i], ports[2 * i + 1]) for i, nid in enumerate(ids)}


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"no TOML for {value!r}")


def write_cluster_file(
    directory: Path,
    ports: Mapping[str, NodePorts],
    *,
    cluster_id: str = "test-cluster",
    secret: str,
    token: str | None = None,
    raft: Mapping[str, object] | None = None,
    dial: Mapping[str, Mapping[str, str]] | None = None,
) -> Path:
    """Write ``cluster.toml``; with ``dial``, each node also gets ``listen`` (its real port)."""
    lines = [
        f"cluster_id = {_toml(cluster_id)}",
        f"secret = {_toml(secret)}",
        'data_dir = "data"',
    ]
    if token is not None:
        lines.append(f"token = {_toml(token)}")
    lines += ["", "[raft]", *(f"{k} = {_toml(v)}" for k, v in (raft or {}).items()), ""]
    for nid, p in ports.items():
        lines += [
            f"[nodes.{nid}]",
            f'peer = "ws://{HOST}:{p.peer}/raft"',
            f'client = "ws://{HOST}:{p.client}/kv"',
        ]
        if dial is not None:
            lines.append(f'listen = "{HOST}:{p.peer}"')
            routes = ", ".join(f"{peer} = {_toml(url)}" for peer, url in dial[nid].items())
            lines.append(f"dial = {{ {routes} }}")
        lines.append("")
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def as_int(status: Status, key: str) -> int:
    value = status[key]
    assert isinstance(value, int), (key, status)
    return value


def leader_of(statuses: Statuses) -> str | None:
    """The node that reports itself leader in the highest term, if any."""
    leaders = [(as_int(s, "term"), n) for n, s in statuses.items() if s and s["role"] == "leader"]
    return max(leaders)[1] if leaders else None


def render(statuses: Statuses) -> str:
    return "\n".join(
        f"  {nid}: down"
        if s is None
        else f"  {nid}: {s['role']} term={s['term']} leader={s['leader']} commit={s['commit']} "
        f"applied={s['applied']} last_index={s['last_index']} followers={s['followers']}"
        for nid, s in statuses.items()
    )


@attrs.define
class ProcessCluster:
    """The node processes of one test (see :func:`open_process_cluster`)."""

    local: LocalCluster
    exit_codes: dict[str, int] = attrs.Factory(dict)
    """Exit code of every process stopped at the end (0: a clean SIGTERM shutdown)."""
    joined: dict[str, NodeAddress] = attrs.Factory(dict)
    """Nodes started with ``serve --join`` (not in the cluster file), by :meth:`join`."""

    def address(self, node_id: str) -> NodeAddress:
        """Where ``node_id`` listens: its table in the cluster file, or its join flags."""
        return self.joined.get(node_id) or self.file.nodes[node_id]

    @property
    def file(self) -> ClusterFile:
        return self.local.file

    @property
    def ids(self) -> list[str]:
        return sorted(self.file.nodes)

    @property
    def token(self) -> str | None:
        return self.file.token

    def urls(self, ids: Iterable[str] | None = None) -> list[str]:
        """Client URLs of ``ids`` (default: every node)."""
        return [self.address(n).client for n in (self.ids if ids is None else ids)]

    def client(
        self, ids: Iterable[str] | None = None, *, timeout_s: float | None = CLIENT_TIMEOUT_S
    ) -> AbstractAsyncContextManager[kv.KVClient]:
        """A KV client of ``ids`` (default: every node) with the cluster's token."""
        return kv.open_client(self.urls(ids), token=self.token, timeout_s=timeout_s)

    async def start(
        self,
        node_id: str,
        *,
        trace_snapshots: bool = False,
        connect_timeout_s: float | None = None,
    ) -> None:
        """Start ``node_id``'s ``trio-raft serve`` process (output appended to its log).

        With ``trace_snapshots``, or ``connect_timeout_s`` (the peer dialer's bound on connect
        and HTTP upgrade, 5 s by default), it runs through :mod:`._traced_node`, which logs
        each received snapshot and applies the timeout."""
        assert node_id not in self.local.processes, f"{node_id} is already running"
        if not trace_snapshots and connect_timeout_s is None:
            await self.local.start(node_id)
            return
        command = [sys.executable, str(TRACED_NODE), "--config", str(self.file.path),
                   "--id", node_id]  # fmt: skip
        env = dict(os.environ)
        if connect_timeout_s is not None:
            env[CONNECT_TIMEOUT_ENV] = repr(connect_timeout_s)
        with (self.local.directory / f"{node_id}.log").open("ab") as log:
            self.local.processes[node_id] = await trio.lowlevel.open_process(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    def snapshot_chunks(self, node_id: str) -> list[SnapshotMeta]:
        """The snapshot of each InstallSnapshot chunk received by a node started with
        ``trace_snapshots``, in order of arrival."""
        found = re.findall(rf"{TRACE_CHUNK} index=(\d+) term=(\d+)", self.log(node_id))
        return [SnapshotMeta(int(index), int(term)) for index, term in found]

    def installed_snapshots(self, node_id: str) -> list[SnapshotMeta]:
        """The snapshots a node started with ``trace_snapshots`` installed, in order."""
        found = re.findall(rf"{TRACE_INSTALL} index=(\d+) term=(\d+)", self.log(node_id))
        return [SnapshotMeta(int(index), int(term)) for index, term in found]

    def check_alive(self) -> None:
        """Fail at once if a node the test started has exited (say, it crashed at startup)."""
        for node_id, process in self.local.processes.items():
            assert process.returncode is None, (
                f"{node_id} exited with status {process.returncode}:\n{self.log(node_id)}"
            )

    async def kill(self, node_id: str) -> None:
        """``kill -9`` the node and reap it."""
        await self.local.kill(node_id)

    async def status(self, node_id: str) -> Status | None:
        """A node's status, or ``None`` if it does not answer quickly."""
        if node_id not in self.joined:
            return await self.local.status(node_id)
        with trio.move_on_after(1.0):
            try:
                async with self.client([node_id], timeout_s=0.5) as client:
                    return await client.status()
            except (kv.KVError, OSError):
                return None
        return None

    async def join(
        self,
        node_id: str,
        ports: NodePorts,
        *,
        via: Iterable[str],
        learner: bool = False,
        extra: Sequence[str] = (),
    ) -> None:
        """Start ``trio-raft serve --join`` for a new node ``node_id`` listening on ``ports``,
        asking the members ``via`` (ids) to add it."""
        assert node_id not in self.local.processes, f"{node_id} is already running"
        address = NodeAddress(f"ws://{HOST}:{ports.peer}/raft", f"ws://{HOST}:{ports.client}/kv")
        self.joined[node_id] = address
        command = [sys.executable, "-m", "trio_raft", "serve", "--config", str(self.file.path),
                   "--id", node_id, "--peer", address.peer, "--client", address.client,
                   *(f"--join={self.address(n).client}" for n in via),
                   *(["--learner"] if learner else []), *extra]  # fmt: skip
        with (self.local.directory / f"{node_id}.log").open("ab") as log:
            self.local.processes[node_id] = await trio.lowlevel.open_process(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    async def wait_log(self, node_id: str, text: str) -> None:
        """Wait until ``text`` appears in ``node_id``'s log (its output)."""
        while True:
            if text in self.log(node_id):
                return
            self.check_alive()
            await trio.sleep(POLL_S)

    async def wait_exit(self, node_id: str) -> int:
        """Wait until ``node_id``'s process exits by itself; its exit code."""
        code = await self.local.processes[node_id].wait()
        del self.local.processes[node_id]  # only now: a failed wait still kills it at the end
        self.exit_codes[node_id] = code
        return code

    async def cli(self, *args: str) -> str:
        """Run ``trio-raft ARGS...``; its standard output (it must exit with 0)."""
        result = await trio.run_process(
            [sys.executable, "-m", "trio_raft", *args], capture_stdout=True,
            capture_stderr=True, check=False,
        )  # fmt: skip
        output = result.stdout.decode(errors="replace")
        assert result.returncode == 0, (args, output, result.stderr.decode(errors="replace"))
        return output

    async def statuses(self, ids: Iterable[str] | None = None) -> Statuses:
        """Statuses of ``ids`` (default: every node), polled concurrently; ``None``: no answer."""
        result: Statuses = {}

        async def one(node_id: str) -> None:
            result[node_id] = await self.status(node_id)

        async with trio.open_nursery() as nursery:
            for node_id in self.ids if ids is None else ids:
                nursery.start_soon(one, node_id)
        return dict(sorted(result.items()))

    async def wait_for(
        self, check: Callable[[Statuses], bool], ids: Iterable[str] | None = None
    ) -> Statuses:
        """Poll the statuses of ``ids`` until ``check`` holds; return them."""
        ids = list(self.ids if ids is None else ids)
        while True:
            self.check_alive()
            statuses = await self.statuses(ids)
            if check(statuses):
                return statuses
            await trio.sleep(POLL_S)

    async def wait_leader(
        self, ids: Iterable[str] | None = None, *, min_term: int = 0
    ) -> tuple[str, Statuses]:
        """Wait until one of ``ids`` leads a term >= ``min_term`` and the others follow it."""

        def check(statuses: Statuses) -> bool:
            leader = leader_of(statuses)
            if leader is None:
                return False
            term = as_int(statuses[leader] or {}, "term")
            return term >= min_term and all(
                s is not None and s["term"] == term and s["leader"] == leader
                for s in statuses.values()
            )

        statuses = await self.wait_for(check, ids)
        leader = leader_of(statuses)
        assert leader is not None
        return leader, statuses

    async def wait_converged(self, ids: Iterable[str] | None = None) -> Statuses:
        """Wait until every node of ``ids`` follows one leader and has applied its whole log."""

        def check(statuses: Statuses) -> bool:
            leader = leader_of(statuses)
            if leader is None:
                return False
            ls = statuses[leader]
            assert ls is not None
            return all(
                s is not None
                and (s["term"], s["leader"]) == (ls["term"], leader)
                and s["applied"] == s["commit"] == ls["commit"] == ls["last_index"]
                and s["last_index"] == ls["last_index"]
                for s in statuses.values()
            )

        return await self.wait_for(check, ids)

    async def wait_applied(self, node_id: str, index: int) -> None:
        """Wait until ``node_id`` answers and has applied ``index``."""

        def check(statuses: Statuses) -> bool:
            status = statuses[node_id]
            return status is not None and as_int(status, "applied") >= index

        await self.wait_for(check, [node_id])

    async def stale_reads(self, node_id: str, keys: Iterable[str]) -> dict[str, str | None]:
        """Each key's value in ``node_id``'s own state machine (a stale read on that node)."""
        values: dict[str, str | None] = {}
        async with self.client([node_id]) as client:
            for key in keys:
                values[key] = decode(await client.get(key, consistency="stale"))
        return values

    def data_dir(self, node_id: str) -> Path:
        return self.file.data_dir / node_id

    def snapshot_meta(self, node_id: str) -> SnapshotMeta | None:
        """The (index, term) of the node's snapshot on disk, read while it runs (the file only
        appears once complete, by rename); its membership is checked and left out, so it
        compares equal to the metas the trace lines give."""
        path = os.fspath(self.data_dir(node_id) / SNAPSHOT_FILE)
        meta = verify_snapshot(OsFileSystem(), path, DEFAULT_MAX_RECORD_BYTES)
        if meta is None:
            return None
        assert meta.membership is not None, f"{node_id}: snapshot without a membership: {meta}"
        return SnapshotMeta(meta.index, meta.term)

    def log(self, node_id: str) -> str:
        path = self.local.directory / f"{node_id}.log"
        return path.read_text(errors="replace") if path.exists() else "(no log)"

    def print_logs(self) -> None:
        for node_id in [*self.ids, *self.joined]:
            print(f"----- log of {node_id} -----\n{self.log(node_id)}", flush=True)

    async def kill_all(self) -> None:
        with trio.CancelScope(shield=True):
            for node_id in list(self.local.processes):
                process = self.local.processes.pop(node_id)
                if process.returncode is None:
                    process.send_signal(signal.SIGKILL)
                self.exit_codes[node_id] = await process.wait()

    async def stop_all(self) -> None:
        """SIGTERM everyone, SIGKILL whoever is still running after a grace period."""
        with trio.CancelScope(shield=True):
            processes = dict(self.local.processes)
            await self.local.stop_all()
            self.local.processes.clear()
            for node_id, process in processes.items():
                assert process.returncode is not None
                self.exit_codes[node_id] = process.returncode


def decode(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


@asynccontextmanager
async def open_process_cluster(
    directory: Path,
    *,
    ports: Mapping[str, NodePorts] | None = None,
    raft: Mapping[str, object] | None = None,
    token: str | None = None,
    dial: Mapping[str, Mapping[str, str]] | None = None,
    start: bool = True,
) -> AsyncIterator[ProcessCluster]:
    """Write a cluster file into ``directory``, start every node, yield; always stop them all."""
    path = write_cluster_file(
        directory,
        ports or allocate_ports(),
        secret=secrets.token_hex(32),
        token=token,
        raft=raft,
        dial=dial,
    )
    cluster = ProcessCluster(LocalCluster(load_cluster_file(path), directory))
    try:
        if start:
            for node_id in cluster.ids:
                await cluster.start(node_id)
        yield cluster
    except BaseException:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(2):
                print(f"statuses at the failure:\n{render(await cluster.statuses())}", flush=True)
            await cluster.kill_all()
        cluster.print_logs()
        raise
    await cluster.stop_all()


# -- load -------------------------------------------------------------------------------------

UNKNOWN = object()
"""What :meth:`KVLoad.record` returns for an operation whose outcome is unknown."""


@attrs.define
class KVLoad:
    """Concurrent KV clients writing in loops, every operation recorded in :attr:`history`.

    Each client alternates a ``put`` of a key of its own (``u<client>.<i>``; the acknowledged
    ones are in :attr:`acked`, the unknown ones in :attr:`maybe`) with a ``put``, ``get`` or
    ``cas`` on a key shared by every client (``x`` or ``y``), so the history has contention.
    Values are unique (``<client>.<i>``). A ``KVTimeoutError`` is an unknown outcome.
    """

    urls: list[str]
    token: str | None
    timeout_s: float = 3.0
    history: History = attrs.Factory(History)
    acked: dict[str, str] = attrs.Factory(dict)
    maybe: dict[str, str] = attrs.Factory(dict)
    unknown: int = 0
    completed: int = 0
    acks: list[float] = attrs.Factory(list)
    """Times of the write acknowledgements."""
    stopping: trio.Event = attrs.Factory(trio.Event)
    _changed: trio.Event = attrs.Factory(trio.Event)

    async def record(
        self, client_id: int, op: tuple[object, ...], call: Callable[[], Awaitable[object]]
    ) -> object:
        handle = self.history.invoke(client_id, op, trio.current_time())
        try:
            result = await call()
        except (kv.KVTimeoutError, kv.SessionExpiredError):
            self.history.unknown(handle)
            self.unknown += 1
            return UNKNOWN
        if isinstance(result, bytes):
            result = result.decode()
        now = trio.current_time()
        self.history.complete(handle, result, now)
        self.completed += 1
        if op[0] != "get":
            self.acks.append(now)
        self._changed.set()
        self._changed = trio.Event()
        return result

    async def wait_acks(self, count: int) -> None:
        """Block until ``count`` more writes have been acknowledged."""
        target = len(self.acks) + count
        await self.wait_until(lambda: len(self.acks) >= target)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Block until ``predicate()`` holds (checked after every completed operation)."""
        while not predicate():
            await self._changed.wait()

    async def client(self, client_id: int) -> None:
        """One client's loop, until :meth:`stop` (it finishes the operation in hand)."""
        rng = random.Random(client_id)
        seen: str | None = None
        async with kv.open_client(self.urls, token=self.token, timeout_s=self.timeout_s) as c:
            i = 0
            while not self.stopping.is_set():
                i += 1
                key, value = f"u{client_id}.{i}", f"{client_id}.{i}"
                result = await self.record(
                    client_id, ("put", key, value), partial(c.put, key, value)
                )
                (self.maybe if result is UNKNOWN else self.acked)[key] = value
                shared = rng.choice("xy")
                choice = rng.random()
                if choice < 0.35:
                    op: tuple[object, ...] = ("put", shared, value)
                    await self.record(client_id, op, partial(c.put, shared, value))
                elif choice < 0.7:
                    result = await self.record(client_id, ("get", shared), partial(c.get, shared))
                    if result is not UNKNOWN:
                        assert result is None or isinstance(result, str)
                        seen = result
                else:
                    op = ("cas", shared, seen, value)
                    await self.record(client_id, op, partial(c.cas, shared, seen, value))

    def stop(self) -> None:
        self.stopping.set()
