"""``trio-raft serve`` with an ``admin`` address: a load balancer's and Prometheus's view."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio

from tests import _ports

pytestmark = pytest.mark.process


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def get(url: str) -> tuple[int, bytes]:
    return await trio.to_thread.run_sync(_get, url)


async def test_serve_answers_health_ready_and_metrics(tmp_path: Path) -> None:
    peer, client, admin = _ports.allocate(3)
    config = tmp_path / "cluster.toml"
    config.write_text(
        f'cluster_id = "adm"\nsecret = "{"s" * 32}"\ndata_dir = "data"\n'
        f'[nodes.n1]\npeer = "ws://127.0.0.1:{peer}/raft"\n'
        f'client = "ws://127.0.0.1:{client}/kv"\nadmin = "127.0.0.1:{admin}"\n',
        encoding="utf-8",
    )
    out = tmp_path / "out.txt"
    with out.open("wb") as log:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_raft", "serve", "--config", str(config), "--id", "n1"],
            stdout=log, stderr=subprocess.DEVNULL, cwd=tmp_path,
        )  # fmt: skip
    base = f"http://127.0.0.1:{admin}"
    try:
        with trio.fail_after(20):
            while True:
                if f"admin endpoint on {base}" in out.read_text():
                    break
                assert process.poll() is None, out.read_text()
                await trio.sleep(0.05)
            assert (await get(f"{base}/health"))[0] == 200
            while True:
                if (await get(f"{base}/ready"))[0] == 200:
                    break
                await trio.sleep(0.05)
        status, metrics = await get(f"{base}/metrics")
        assert status == 200
        assert b'trio_raft_is_leader{node="n1"} 1.0' in metrics, metrics[:2000]
        assert b'trio_raft_client_connections{node="n1"}' in metrics  # the KV server's too
    finally:
        process.terminate()
        with trio.move_on_after(30):
            await process.wait()
        process.kill()
