"""Backups: ``trio-raft snapshot save`` from a live cluster, ``snapshot restore`` into three
fresh data directories, a new cluster started from them serving the same data (issue 10's
acceptance test); damaged backups and non-empty directories refused; ``trio-raft inspect``.

In-process: the old cluster is :func:`kv_cluster` (KV endpoints on port 0, nodes over the
memory network); the new one runs on the restored directories with :class:`FileStorage`. The
command lines go through the real parser and run in this trio run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio

from trio_raft import Node, open_file_storage, open_node
from trio_raft._cli import parse_command_line
from trio_raft._cli_client import TOKEN_ENV
from trio_raft._cli_snapshot import inspect_command, restore_command, save_command
from trio_raft._serve import bootstrap_membership, load_cluster_file
from trio_raft._types import SnapshotMeta
from trio_raft.kv import KVStateMachine, open_client
from trio_raft.testing import MemoryNetwork

from .kv.test_server_client import FAST, TEST_S, kv_cluster

TOKEN = "a-client-token-of-24-chr"
ADMIN = "an-admin-token-of-24-chr"
NEW_IDS = ("m1", "m2", "m3")


def _args(*argv: str) -> argparse.Namespace:
    args = parse_command_line(argv)
    assert not isinstance(args, int), argv
    return args


def _exists(path: str | Path) -> bool:
    return os.path.exists(path)


def _size(path: str | Path) -> int:
    return os.path.getsize(path)


def _new_cluster_file(tmp_path: Path) -> Path:
    lines = ['cluster_id = "restored"', 'secret = "0123456789abcdef0123"', 'data_dir = "data"']
    for i, node_id in enumerate(NEW_IDS, 1):
        lines += [f"[nodes.{node_id}]", f'peer = "ws://127.0.0.1:{10 + i}/raft"',
                  f'client = "ws://127.0.0.1:{20 + i}/kv"']  # fmt: skip
    path = tmp_path / "new.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@asynccontextmanager
async def _restored_cluster(config: Path) -> AsyncIterator[dict[str, Node]]:
    """The new cluster's nodes on their restored directories (over the memory network)."""
    cluster = load_cluster_file(config)
    network = MemoryNetwork(random.Random(1))
    nodes: dict[str, Node] = {}
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        await nursery.start(network.run)
        for node_id in NEW_IDS:
            storage = await stack.enter_async_context(
                open_file_storage(
                    cluster.data_dir / node_id, cluster_id=cluster.cluster_id, node_id=node_id
                )
            )
            nodes[node_id] = await stack.enter_async_context(
                open_node(
                    node_id,
                    bootstrap_membership(cluster),
                    state_machine=KVStateMachine(),
                    transport=network.transport(node_id),
                    storage=storage,
                    config=FAST,
                    rng=random.Random(node_id),
                )
            )
        yield nodes
        nursery.cancel_scope.cancel()


async def test_save_then_restore_a_new_cluster_that_serves_the_same_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    backup = tmp_path / "backup.snap"
    with trio.fail_after(4 * TEST_S):
        async with kv_cluster(token=TOKEN, admin_token=ADMIN, cluster_id="old") as old:
            async with open_client(list(old.urls.values()), token=TOKEN) as kv:
                for i in range(30):
                    await kv.put(f"k{i:02}", f"v{i}")
                await kv.delete("k07")
            url = next(iter(old.urls.values()))
            # Without the admin token: refused, with what to pass.
            save = _args("snapshot", "save", "--url", url, "--token", TOKEN, str(backup))
            assert await save_command(save) == 1
            err = capsys.readouterr().err
            assert err.startswith("trio-raft snapshot save: ") and "admin_token" in err
            assert not _exists(backup) and not _exists(f"{backup}.partial")
            # With it: saved, checked, and described.
            save = _args("snapshot", "save", "--url", url, "--token", ADMIN, "--json", str(backup))
            assert await save_command(save) == 0
            info = json.loads(capsys.readouterr().out)
            assert info["cluster_id"] == "old" and info["voters"] == ["n1", "n2", "n3"]
            assert info["size"] == _size(backup) and len(info["sha256"]) == 64
            assert not _exists(f"{backup}.partial")
            # A second save does not overwrite it without --force.
            assert await save_command(save) == 1
            assert "pass --force" in capsys.readouterr().err
            expected = old.machines[info["node"]].as_dict()
            assert len(expected) == 29

        config = _new_cluster_file(tmp_path)
        for node_id in NEW_IDS:
            restore = _args(
                "snapshot", "restore", str(backup), "--config", str(config), "--id", node_id
            )
            assert await restore_command(restore) == 0
            assert f"node {node_id} of cluster restored" in capsys.readouterr().out
        # Restoring over a directory with data in it is refused.
        assert await restore_command(restore) == 1
        assert "is not empty" in capsys.readouterr().err

        async with _restored_cluster(config) as nodes:
            node = nodes["m1"]
            leader = nodes[await node.wait_leader()]
            assert leader.membership is not None and set(leader.membership.voters) == set(NEW_IDS)
            for key, value in expected.items():
                assert await leader.read(("get", key)) == value
            assert await leader.read(("get", "k07")) is None
            await leader.propose(("open", b"s" * 16))
            assert leader.status.last_applied > info["index"]
            # inspect on a directory a running node is writing: nothing refused, the facts.
            inspect = _args("inspect", str(config.parent / "data" / leader.id), "--json")
            assert inspect_command(inspect) == 0
            report = json.loads(capsys.readouterr().out)
            assert set(report) == {"path", "identity", "hard_state", "log", "snapshot",
                                   "segments", "repairs", "problems"}  # fmt: skip
            assert report["identity"] == {"cluster_id": "restored", "node_id": leader.id}
            assert report["snapshot"]["index"] == info["index"]
            assert report["snapshot"]["voters"] == list(NEW_IDS)
            assert report["hard_state"]["term"] == leader.status.term
            assert report["log"]["start_index"] == info["index"]
            assert report["log"]["last_index"] >= info["index"] + 1
            assert report["problems"] == []
            segment = report["segments"][-1]
            assert set(segment) == {"file", "seq", "first_index", "entries", "live", "bytes",
                                    "format"}  # fmt: skip
            assert inspect_command(_args("inspect", str(config.parent / "data" / "m2"))) == 0
            text = capsys.readouterr().out
            assert "identity: cluster restored, node m2" in text
            assert f"snapshot: index {info['index']}, term {info['term']}" in text
            assert "opening would succeed" in text


async def _backup_file(tmp_path: Path) -> Path:
    """A valid backup (a small KV state), written by a FileStorage."""
    machine = KVStateMachine()
    machine.apply(("open", b"s" * 16))
    machine.apply(("put", b"s" * 16, 1, "a", b"1"))
    async with open_file_storage(tmp_path / "source") as storage:

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in machine.snapshot():
                yield chunk

        await storage.save_snapshot(SnapshotMeta(5, 2), chunks())
    return tmp_path / "source" / "snapshot"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[: len(data) - 3], "the snapshot ends inside a frame"),
        (lambda data: data[:-10] + bytes([data[-10] ^ 1]) + data[-9:], "checksum mismatch"),
        (lambda data: b"", "the snapshot ends before its trailer"),
    ],
)
async def test_a_damaged_backup_is_refused_and_nothing_is_written(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: Callable[[bytes], bytes],
    reason: str,
) -> None:
    source = await _backup_file(tmp_path)
    backup = tmp_path / "bad.snap"
    backup.write_bytes(damage(source.read_bytes()))
    config = _new_cluster_file(tmp_path)
    restore = _args("snapshot", "restore", str(backup), "--config", str(config), "--id", "m1")
    assert await restore_command(restore) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"trio-raft snapshot restore: {backup} is not a valid backup: {reason}")
    assert err.count("\n") == 1
    assert not (tmp_path / "data" / "m1").exists()
    # The intact file restores; an unknown node id and a missing file are one line each.
    good = _args("snapshot", "restore", str(source), "--config", str(config), "--id", "m1")
    assert await restore_command(good) == 0
    capsys.readouterr()
    unknown = _args("snapshot", "restore", str(source), "--config", str(config), "--id", "x9")
    assert await restore_command(unknown) == 2
    assert "has no [nodes.x9] table" in capsys.readouterr().err
    missing = _args("snapshot", "restore", str(tmp_path / "nope"), "--config", str(config),
                    "--id", "m2")  # fmt: skip
    assert await restore_command(missing) == 1
    assert "no such file" in capsys.readouterr().err


def test_inspect_reports_damage_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trio.run(_backup_file, tmp_path)  # a directory with a snapshot
    directory = tmp_path / "source"
    (directory / "snapshot").write_bytes((directory / "snapshot").read_bytes()[:-2])
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    assert inspect_command(_args("inspect", str(directory))) == 1
    out = capsys.readouterr().out
    assert "opening would refuse: corrupt storage:" in out and "snapshot" in out
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before  # read-only
    assert inspect_command(_args("inspect", str(tmp_path / "nope"))) == 1
    assert capsys.readouterr().err.startswith("trio-raft inspect: cannot read ")
