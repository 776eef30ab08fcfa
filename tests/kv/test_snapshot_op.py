"""The ``snapshot`` op (backups) on the KV endpoint: a download in 1 MiB pieces from the leader
that decodes to its state, the admin credential, one download per connection, closed with
it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

import trio_raft.kv._backup
from trio_raft._wal._file_storage import DEFAULT_MAX_RECORD_BYTES
from trio_raft._wal._fs import OsFileSystem
from trio_raft._wal._snapshot_file import SnapshotReader
from trio_raft.kv import KVAuthError, KVNoSpaceError, KVStateMachine, open_client
from trio_raft.kv._protocol import MAX_SNAPSHOT_PIECE_BYTES
from trio_raft.testing import SimulatedStorage

from .test_server_client import TEST_S, kv_cluster, raw_ws, request, wait_until

TOKEN = "a-client-token-of-24-chr"
ADMIN = "an-admin-token-of-24-chr"


def _read_back(path: Path) -> tuple[int, dict[str, bytes]]:
    """The index and the KV state in a snapshot file."""
    reader = SnapshotReader(OsFileSystem(), str(path), DEFAULT_MAX_RECORD_BYTES)
    chunks = []
    while (chunk := reader.next_chunk()) is not None:
        chunks.append(chunk)
    machine = KVStateMachine()
    machine.restore(chunks)
    return reader.meta.index, machine.as_dict()


async def test_a_large_state_comes_in_pieces_and_decodes_to_the_nodes_state(
    tmp_path: Path,
) -> None:
    pieces: list[tuple[int, int]] = []
    data = bytearray()

    async def write(offset: int, piece: bytes) -> None:
        if offset == 0:
            data.clear()
        assert offset == len(data)
        pieces.append((offset, len(piece)))
        data.extend(piece)

    with trio.fail_after(3 * TEST_S):
        async with kv_cluster(token=TOKEN, admin_token=ADMIN) as cluster:
            follower, leader = await cluster.follower(), await cluster.leader()
            url = cluster.urls[follower.id]
            async with open_client(list(cluster.urls.values()), token=TOKEN) as kv:
                for i in range(6):  # 1.5 MiB of values
                    await kv.put(f"big{i}", random.Random(i).randbytes(256 * 1000))
            async with open_client([url], token=ADMIN, timeout_s=None) as kv:
                info = await kv.snapshot(write)
                with pytest.raises(KVAuthError):  # the plain token is not enough
                    async with open_client([url], token=TOKEN) as plain:
                        await plain.snapshot(write)
            assert info["node"] == leader.id  # redirected: the leader takes backups
            assert len(pieces) >= 2 and all(size <= MAX_SNAPSHOT_PIECE_BYTES for _, size in pieces)
            assert info["size"] == len(data)
            path = tmp_path / "backup"
            path.write_bytes(bytes(data))
            index, state = _read_back(path)
            assert index == info["index"] == leader.status.snapshot_index
            assert state == cluster.machines[leader.id].as_dict()
            assert len(state) == 6


async def test_downloads_are_one_per_connection_and_closed_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed: list[object] = []
    original = trio_raft.kv._backup._Download.aclose

    async def counting_aclose(self: trio_raft.kv._backup._Download) -> None:
        closed.append(self)
        await original(self)

    monkeypatch.setattr(trio_raft.kv._backup._Download, "aclose", counting_aclose)
    with trio.fail_after(3 * TEST_S):
        async with kv_cluster(ids=["solo"], token=TOKEN, admin_token=ADMIN) as cluster:
            async with open_client(list(cluster.urls.values()), token=TOKEN) as kv:
                for i in range(5):
                    await kv.put(f"big{i}", bytes(256 * 1000))
            url = cluster.urls["solo"]
            async with raw_ws(url) as ws:
                hello = {"id": 1, "op": "hello", "v": 1, "token": TOKEN}
                assert (await request(ws, hello))["ok"]["node"] == "solo"
                refused = await request(ws, {"id": 2, "op": "snapshot", "offset": 0})
                assert refused["error"]["code"] == "unauthorized"
                assert "admin_token" in refused["error"]["message"]
                status = await request(ws, {"id": 3, "op": "status"})  # still open
                assert status["ok"]["node"] == "solo"
            async with raw_ws(url) as ws:
                hello = {"id": 1, "op": "hello", "v": 1, "token": ADMIN}
                await request(ws, hello)
                stray = await request(ws, {"id": 2, "op": "snapshot", "offset": 7})
                assert stray["error"]["code"] == "bad_request"
                assert "start again from offset 0" in stray["error"]["message"]
                first = (await request(ws, {"id": 3, "op": "snapshot"}))["ok"]
                assert first["offset"] == 0 and first["done"] is False
                assert len(first["data"]) == MAX_SNAPSHOT_PIECE_BYTES
                assert first["sha256"] is None and first["size"] is None
                # Offset 0 again: the first download is abandoned (closed), a new one starts.
                again = (await request(ws, {"id": 4, "op": "snapshot", "offset": 0}))["ok"]
                assert again["data"] == first["data"] and len(closed) == 1
                skip = await request(ws, {"id": 5, "op": "snapshot", "offset": 5})
                assert skip["error"]["code"] == "bad_request"
            # The client left mid-download: its download is closed with the connection.
            await wait_until(lambda: len(closed) == 2)
            assert cluster.servers["solo"].failed_connections == 0


async def test_a_snapshot_that_does_not_fit_is_refused_with_what_to_do() -> None:
    storage = SimulatedStorage(random.Random(1))
    with trio.fail_after(3 * TEST_S):
        async with kv_cluster(ids=["solo"], storages={"solo": storage}) as cluster:
            async with open_client(list(cluster.urls.values()), timeout_s=None) as kv:
                await kv.put("a", "1")
                storage.set_disk_space("full")

                async def write(offset: int, piece: bytes) -> None:
                    raise AssertionError("nothing is sent")

                with pytest.raises(KVNoSpaceError, match="transfer-leader"):
                    await kv.snapshot(write)
                storage.set_disk_space("ok")
                assert await kv.get("a") == b"1"  # the node goes on
