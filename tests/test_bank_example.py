"""``examples/bank.py`` as a real cluster: three ``bank.py serve`` processes, clients moving
money concurrently, the leader killed with SIGKILL half-way. Money is conserved, no balance goes
negative, and every node ends with the same books."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests import _ports
from trio_raft.kv import CommandFailedError, KVError, OutcomeUnknownError, open_client

pytestmark = pytest.mark.process

BANK = Path(__file__).parent.parent / "examples" / "bank.py"
ACCOUNTS = ("a", "b", "c", "d")
START = 1000


def _cluster_file(directory: Path) -> tuple[Path, dict[str, str]]:
    ports = _ports.allocate(6)
    lines = [f'cluster_id = "bank"\nsecret = "{"k" * 32}"\ndata_dir = "data"\n']
    urls = {}
    for i, node in enumerate(("n1", "n2", "n3")):
        urls[node] = f"ws://127.0.0.1:{ports[2 * i + 1]}/kv"
        lines.append(
            f'[nodes.{node}]\npeer = "ws://127.0.0.1:{ports[2 * i]}/raft"\n'
            f'client = "{urls[node]}"\n'
        )
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path, urls


async def test_the_bank_keeps_its_books_through_a_leader_kill(tmp_path: Path) -> None:
    config, urls = _cluster_file(tmp_path)
    processes: dict[str, trio.Process] = {}
    logs = {n: (tmp_path / f"{n}.log").open("wb") for n in urls}
    try:
        for node in urls:
            processes[node] = await trio.lowlevel.open_process(
                [sys.executable, str(BANK), "serve", "--config", str(config), "--id", node],
                stdout=logs[node], stderr=subprocess.STDOUT, cwd=tmp_path,
            )  # fmt: skip
        with trio.fail_after(60):
            async with open_client(list(urls.values()), timeout_s=10) as client:
                for account in ACCOUNTS:
                    await client.call(["open", account, START])
                done = 0
                unknown = 0

                async def mover(seed: int) -> None:
                    nonlocal done, unknown
                    rng = random.Random(seed)
                    for _ in range(40):
                        src, dst = rng.sample(ACCOUNTS, 2)
                        tid = f"{seed}-{rng.getrandbits(64):x}"
                        for _attempt in range(5):  # resend the same id: applied at most once
                            try:
                                await client.call(["transfer", tid, src, dst, rng.randint(1, 300)])
                                done += 1
                                break
                            except CommandFailedError:
                                break  # insufficient funds: refused, nothing moved
                            except (OutcomeUnknownError, KVError):
                                unknown += 1
                                await trio.sleep(0.1)

                async with trio.open_nursery() as nursery:
                    for seed in range(4):
                        nursery.start_soon(mover, seed)
                    await trio.sleep(1.0)
                    leader = (await client.status())["leader"]
                    assert isinstance(leader, str) and leader in processes
                    processes[leader].send_signal(signal.SIGKILL)
                assert done > 0
                books = await client.query(["balances"])
                assert isinstance(books, dict)
                assert sum(books.values()) == START * len(ACCOUNTS), books
                assert all(v >= 0 for v in books.values()), books
                survivors = [u for n, u in urls.items() if n != leader]
                for url in survivors:  # every live node has the same books (stale reads)
                    async with open_client([url]) as one:
                        with trio.fail_after(10):
                            while True:
                                if await one.query(["balances"], consistency="stale") == books:
                                    break
                                await trio.sleep(0.05)
    finally:
        for process in processes.values():
            if process.returncode is None:
                process.kill()
            await process.wait()
        for log in logs.values():
            log.close()
