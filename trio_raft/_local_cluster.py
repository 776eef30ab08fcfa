"""``trio-raft cluster``: a local cluster of separate processes on 127.0.0.1, for trying it out.

It writes a cluster file into a directory, starts one ``trio-raft serve`` process per node,
shows a live status view (leader, term, commit index, each follower's lag) and stops every
process cleanly on Ctrl-C (SIGTERM, then SIGKILL after a grace period). With ``--demo`` it runs
a scripted tour over the real processes and ends by itself: writes, ``kill -9`` of the leader,
failover, restart and catch-up.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TextIO

import attrs
import trio

from ._serve import ClusterFile, load_cluster_file
from ._util import bind_error
from .kv import KVError, open_client

STOP_GRACE_S = 5.0
"""How long a node gets to exit after SIGTERM before it is killed."""
POLL_S = 0.5
"""Refresh period of the status view."""


CLIENT_PORT_OFFSET = 100
"""Node ``i`` (from 1) listens for peers on ``base_port + i``, for clients on ``base_port +
CLIENT_PORT_OFFSET + i``."""
HOST = "127.0.0.1"


class PortError(Exception):
    """A port of the local cluster is out of range or in use; the message says which."""


def cluster_ports(nodes: int, base_port: int) -> dict[str, tuple[int, int]]:
    """The (peer, client) ports of each node ``n1`` ... ``nN``."""
    return {
        f"n{i}": (base_port + i, base_port + CLIENT_PORT_OFFSET + i) for i in range(1, nodes + 1)
    }


def check_ports(nodes: int, base_port: int) -> None:
    """Check, before anything starts, that every port of the cluster exists and is free on
    :data:`HOST` (bound and closed again, with ``SO_REUSEADDR`` as the nodes bind).

    Raises:
        PortError: a port is past 65535 or in use (the message names it and what to do).
    """
    highest = base_port + CLIENT_PORT_OFFSET + nodes
    if highest > 65535:
        raise PortError(
            f"--base-port {base_port} puts the client ports up to {highest}, past 65535; use a "
            f"base port of at most {65535 - CLIENT_PORT_OFFSET - nodes}"
        )
    for node_id, ports in cluster_ports(nodes, base_port).items():
        for kind, port in zip(("peer", "client"), ports, strict=True):
            error = bind_error(HOST, port)
            if error is not None:
                raise PortError(
                    f"port {port} ({node_id}'s {kind} port) is in use on {HOST} "
                    f"({error.strerror}): stop what uses it (another `trio-raft cluster`?) "
                    "or pick another --base-port"
                )


def write_cluster_file(directory: Path, nodes: int, base_port: int) -> Path:
    """Write a cluster file for ``nodes`` local nodes on ports from ``base_port``."""
    lines = [
        'cluster_id = "local"',
        f'secret = "{secrets.token_hex(32)}"',
        'data_dir = "data"',
        "",
        "[raft]",
        "snapshot_entries = 1000",
        "snapshot_keep_entries = 100",
        "",
    ]
    for node_id, (peer, client) in cluster_ports(nodes, base_port).items():
        lines += [
            f"[nodes.{node_id}]",
            f'peer = "ws://{HOST}:{peer}/raft"',
            f'client = "ws://{HOST}:{client}/kv"',
            "",
        ]
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    path.chmod(0o600)  # it holds the secret
    return path


async def stop_processes(processes: Iterable[trio.Process], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM every process; SIGKILL those still running after ``grace_s`` (shielded, so
    it also runs while the caller is being cancelled)."""
    processes = list(processes)
    with trio.CancelScope(shield=True):
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        with trio.move_on_after(grace_s):
            for process in processes:
                await process.wait()
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


@attrs.define
class LocalCluster:
    """The processes of a local cluster."""

    file: ClusterFile
    directory: Path
    processes: dict[str, trio.Process] = attrs.Factory(dict)

    async def start(self, node_id: str) -> None:
        """Start ``node_id``'s ``trio-raft serve`` process (output in ``<dir>/<id>.log``)."""
        log = (self.directory / f"{node_id}.log").open("ab")
        command = [sys.executable, "-m", "trio_raft", "serve", "--config", str(self.file.path),
                   "--id", node_id]  # fmt: skip
        self.processes[node_id] = await trio.lowlevel.open_process(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()

    async def kill(self, node_id: str) -> None:
        """``kill -9`` a node: no shutdown, unsynced writes are lost."""
        process = self.processes.pop(node_id)
        process.send_signal(signal.SIGKILL)
        await process.wait()

    async def stop_all(self) -> None:
        """SIGTERM every node; SIGKILL those still running after :data:`STOP_GRACE_S`."""
        await stop_processes(self.processes.values())

    async def status(self, node_id: str) -> dict[str, object] | None:
        """A node's status, or ``None`` if it does not answer quickly."""
        url = self.file.nodes[node_id].client
        with trio.move_on_after(1.0):
            try:
                async with open_client([url], token=self.file.token, timeout_s=0.5) as kv:
                    return await kv.status()
            except (KVError, OSError):
                return None
        return None

    async def statuses(self) -> dict[str, dict[str, object] | None]:
        """Every node's status, polled concurrently."""
        result: dict[str, dict[str, object] | None] = {}

        async def one(node_id: str) -> None:
            result[node_id] = await self.status(node_id)

        async with trio.open_nursery() as nursery:
            for node_id in self.file.nodes:
                nursery.start_soon(one, node_id)
        return {nid: result[nid] for nid in sorted(result)}


def render(statuses: Mapping[str, Mapping[str, object] | None]) -> str:
    """The status view: one line per node, followers' lag behind the leader's log, and
    ``NOSPACE`` after a node whose disk-space alarm is raised."""
    leader = next((s for s in statuses.values() if s and s["role"] == "leader"), None)
    head = f"{'node':<6} {'role':<14} {'term':>5} {'commit':>7} {'applied':>8}  lag"
    lines = [head]
    for node_id, s in statuses.items():
        if s is None:
            lines.append(f"{node_id:<6} {'(down)':<14}")
            continue
        lag = ""
        if leader is not None and node_id != leader["node"]:
            followers = leader["followers"]
            assert isinstance(followers, dict)
            progress = followers.get(node_id)
            if progress is not None:
                lag = str(int(leader["last_index"]) - int(progress["match"]))  # type: ignore[call-overload]
        alarm = "  NOSPACE" if s.get("no_space") else ""
        lines.append(
            f"{node_id:<6} {s['role']!s:<14} {s['term']!s:>5} {s['commit']!s:>7} "
            f"{s['applied']!s:>8}  {lag}{alarm}"
        )
    return "\n".join(lines)


async def run_local_cluster(
    nodes: int,
    *,
    directory: Path | None,
    base_port: int,
    duration_s: float | None,
    demo: bool,
    out: TextIO = sys.stdout,
) -> bool:
    """Run the ``cluster`` command; returns whether it succeeded.

    Without ``directory`` it works in a new temporary directory, and deletes the nodes' data
    at the end but keeps the cluster file and the node logs (``<dir>/<id>.log``) for a look.
    """
    workdir = directory or Path(tempfile.mkdtemp(prefix="trio-raft-cluster-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = write_cluster_file(workdir, nodes, base_port)
    cluster = LocalCluster(load_cluster_file(path), workdir)
    print(f"cluster file: {path}", file=out)
    print(f"node logs:    {workdir / 'n*.log'}", file=out)
    for node_id, address in sorted(cluster.file.nodes.items()):
        print(f"{node_id} client URL: {address.client}", file=out)
    print(f"try: trio-raft status --config {path}", file=out, flush=True)
    try:
        for node_id in sorted(cluster.file.nodes):
            await cluster.start(node_id)
        if demo:
            return await _demo(cluster, out)
        await _watch(cluster, duration_s, out)
        return True
    finally:
        await cluster.stop_all()
        if directory is None:
            shutil.rmtree(cluster.file.data_dir, ignore_errors=True)
        print(f"all nodes stopped; their logs are in {workdir}", file=out, flush=True)


async def _watch(cluster: LocalCluster, duration_s: float | None, out: TextIO) -> None:
    tty = out.isatty()
    last = ""
    with trio.move_on_after(duration_s if duration_s is not None else float("inf")):
        while True:
            view = render(await cluster.statuses())
            if view != last:
                prefix = "\x1b[H\x1b[2J" if tty else ""
                print(f"{prefix}{view}\n(Ctrl-C stops every node)", file=out, flush=True)
                last = view
            await trio.sleep(POLL_S)


async def _wait_for(
    cluster: LocalCluster, check: Callable[[dict[str, dict[str, object] | None]], bool]
) -> dict[str, dict[str, object] | None]:
    while True:
        statuses = await cluster.statuses()
        if check(statuses):
            return statuses
        await trio.sleep(0.1)


def _leader(statuses: Mapping[str, Mapping[str, object] | None]) -> str | None:
    return next((n for n, s in statuses.items() if s and s["role"] == "leader"), None)


async def _demo(cluster: LocalCluster, out: TextIO) -> bool:
    def say(text: str) -> None:
        print(f"[{trio.current_time() - start:7.3f}s] {text}", file=out, flush=True)

    start = trio.current_time()
    urls = [a.client for a in cluster.file.nodes.values()]
    with trio.fail_after(60):
        statuses = await _wait_for(cluster, lambda s: _leader(s) is not None)
        leader = _leader(statuses)
        say(f"{len(urls)} processes up; {leader} leads term {statuses[leader]['term']}")  # type: ignore[index]
        async with open_client(urls, token=cluster.file.token) as kv:
            for i in range(10):
                await kv.put(f"key{i}", f"value{i}")
            say("10 writes acknowledged")
            assert leader is not None
            await cluster.kill(leader)
            killed_at = trio.current_time()
            say(f"kill -9 {leader} (the leader)")
            await kv.put("after", "failover", timeout_s=30)
            say(f"a write succeeded {trio.current_time() - killed_at:.2f}s after the kill")
            statuses = await _wait_for(cluster, lambda s: _leader(s) is not None)
            say(f"{_leader(statuses)} leads term {statuses[_leader(statuses)]['term']}")  # type: ignore[index]
            await cluster.start(leader)
            say(f"restarted {leader} from its data directory")

            def caught_up(s: dict[str, dict[str, object] | None]) -> bool:
                new = _leader(s)
                me = s.get(leader)
                return bool(new and me and me["applied"] == s[new]["commit"])  # type: ignore[index]

            statuses = await _wait_for(cluster, caught_up)
            say(f"{leader} caught up to index {statuses[leader]['applied']}")  # type: ignore[index]
            values = [await kv.get(f"key{i}") for i in range(10)]
            ok = values == [f"value{i}".encode() for i in range(10)]
            ok = ok and await kv.get("after") == b"failover"
        say(render(statuses).replace("\n", "\n           "))
        say("every acknowledged write is there" if ok else "FAILED: a write is missing")
        return ok
