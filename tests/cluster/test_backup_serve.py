"""Backup and restore through ``trio-raft serve``: ``snapshot save --config`` from a running
cluster (real file storage, the cluster file's admin token), ``snapshot restore`` of three
directories for a new cluster file, ``serve`` on them, the same data served; ``inspect`` on a
live node's directory. The nodes run in this process on fixed ports (hence ``process``); the
commands run through ``main`` in worker threads, as from a shell."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests import _ports
from trio_raft._cli import main
from trio_raft._cli_client import TOKEN_ENV
from trio_raft._serve import ClusterFile, load_cluster_file, serve
from trio_raft.kv import KVClient, open_client

pytestmark = pytest.mark.process

DEADLINE_S = 60.0
"""Catches a hang; not a speed assertion."""
TOKEN = "a-client-token-of-24-chr"
ADMIN = "an-admin-token-of-24-chr"


def _cluster_file(path: Path, cluster_id: str, ids: Sequence[str]) -> Path:
    ports = _ports.allocate(2 * len(ids))
    lines = [f'cluster_id = "{cluster_id}"', f'secret = "{"s" * 32}"', 'data_dir = "data"',
             f'token = "{TOKEN}"', f'admin_token = "{ADMIN}"',
             "[raft]", "election_timeout_s_min = 0.2", "election_timeout_s_max = 0.4",
             "heartbeat_s = 0.05"]  # fmt: skip
    for i, node_id in enumerate(ids):
        lines += [f"[nodes.{node_id}]", f'peer = "ws://127.0.0.1:{ports[2 * i]}/raft"',
                  f'client = "ws://127.0.0.1:{ports[2 * i + 1]}/kv"']  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@asynccontextmanager
async def _serving(cluster: ClusterFile) -> AsyncIterator[KVClient]:
    """Serve every node of ``cluster`` in this process; yield a client of them all."""
    async with trio.open_nursery() as nursery:
        for node_id in cluster.nodes:
            await nursery.start(serve, cluster, node_id)
        urls = [a.client for a in cluster.nodes.values()]
        async with open_client(urls, token=TOKEN, timeout_s=None) as kv:
            yield kv
        nursery.cancel_scope.cancel()


async def _command(*argv: str) -> int:
    return await trio.to_thread.run_sync(main, list(argv))


async def test_save_from_serve_restore_and_serve_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    old_file = _cluster_file(tmp_path / "old" / "cluster.toml", "old", ["a1", "a2", "a3"])
    new_file = _cluster_file(tmp_path / "new" / "cluster.toml", "new", ["b1", "b2", "b3"])
    backup = tmp_path / "backup.snap"
    with trio.fail_after(DEADLINE_S):
        async with _serving(load_cluster_file(old_file)) as kv:
            for i in range(20):
                await kv.put(f"key{i}", f"value{i}")
            await kv.delete("key3")
            assert await _command("snapshot", "save", "--config", str(old_file), "--json",
                                  str(backup)) == 0  # fmt: skip
            info = json.loads(capsys.readouterr().out.splitlines()[-1])
            assert info["cluster_id"] == "old" and info["voters"] == ["a1", "a2", "a3"]

        for node_id in ("b1", "b2", "b3"):
            assert await _command("snapshot", "restore", str(backup), "--config", str(new_file),
                                  "--id", node_id) == 0  # fmt: skip
        capsys.readouterr()
        new = load_cluster_file(new_file)
        async with _serving(new) as kv:
            for i in range(20):
                assert await kv.get(f"key{i}") == (None if i == 3 else f"value{i}".encode())
            await kv.put("after", "restore")
            members = await kv.members()
            voters = members["voters"]
            assert isinstance(voters, dict) and sorted(voters) == ["b1", "b2", "b3"]
            live = new.data_dir / "b1"
            assert await _command("inspect", str(live), "--json") == 0
            report = json.loads(capsys.readouterr().out.splitlines()[-1])
            assert report["identity"] == {"cluster_id": "new", "node_id": "b1"}
            assert report["snapshot"]["index"] == info["index"]
            assert report["problems"] == []
