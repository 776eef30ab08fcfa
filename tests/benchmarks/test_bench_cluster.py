"""The cluster benchmark end to end at a tiny size, and its cleanup on Ctrl-C.

Figures are never asserted (speed is read, not tested): only that writes were acknowledged,
the results were written with their keys and rows, and no process or directory outlives a run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from benchmarks._cluster_report import stall_note

from .. import _ports

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent.parent
PORTS = 16
"""The tiny runs need 8 (null: 1 node, trio-raft: 3 nodes, a peer and a front port each)."""


def _start(
    *args: str, base_port: int, stdout: IO[str] | int = subprocess.PIPE
) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "benchmarks.bench_cluster", "--base-port", str(base_port),
               *args]  # fmt: skip
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.STDOUT, text=True
    )


def _descendants(root: int) -> set[int]:
    """Every live process under ``root`` (from ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _lines(process: subprocess.Popen[str]) -> Iterator[str]:
    assert process.stdout is not None
    for line in process.stdout:
        yield line.rstrip("\n")


@pytest.fixture
def base_port() -> int:
    return _ports.allocate_block(range(PORTS))


def test_a_tiny_run_measures_every_system_and_writes_its_results(
    tmp_path: Path, base_port: int
) -> None:
    results = tmp_path / "results"
    log = tmp_path / "output.txt"
    with log.open("w") as out:
        process = _start(
            "--systems", "null,trio-raft-memory", "--scenarios", "writes", "--outstanding",
            "1,16", "--seconds", "1", "--warmup", "0.3", "--results", str(results),
            base_port=base_port, stdout=out,
        )  # fmt: skip
    seen: set[int] = set()
    try:
        for _ in range(1200):  # a hang detector (2 minutes), not a timing
            if process.poll() is not None:
                break
            seen |= _descendants(process.pid)
            subprocess.run(["sleep", "0.1"], check=True)
    finally:
        process.kill()
        process.wait()
    output = log.read_text()
    assert process.returncode == 0, output
    assert len(seen) >= 4, f"expected the nodes and the load generator among {seen}"
    assert not [pid for pid in seen if _alive(pid)], "a child process outlived the run"
    work = output.split("data in ", 1)[1].split(",", 1)[0]
    assert not Path(work).exists(), "the temporary data directory outlived the run"
    data = json.loads((results / "results.json").read_text())
    assert {"machine", "versions", "settings", "floors", "rows", "command"} <= set(data)
    assert {"cpus", "cpu_model", "load_before", "load_after"} <= set(data["machine"])
    assert {"python", "trio", "trio_raft"} <= set(data["versions"])
    assert data["floors"]["fsync_us"] > 0 and data["floors"]["websocket_rtt_us"] > 0
    rows = {(r["system"], r["outstanding"]): r for r in data["rows"]}
    assert set(rows) == {(s, n) for s in ("null", "trio-raft-memory") for n in (1, 16)}
    for row in rows.values():
        assert row["writes"] > 0, row
        assert row["write_ms"]["p50"] <= row["write_ms"]["p99"]
    assert rows["trio-raft-memory", 16]["nodes"] == 3
    report = (results / "results.md").read_text()
    for system in ("null", "trio-raft-memory"):
        for n in (1, 16):
            assert f"| {system} | {1 if system == 'null' else 3} | {n} | 16 | writes |" in report
    assert "python -m benchmarks.bench_cluster" in report


def test_ctrl_c_stops_every_process_and_removes_the_data(tmp_path: Path, base_port: int) -> None:
    process = _start(
        "--results",
        str(tmp_path / "results"),
        "--systems",
        "trio-raft-file",
        "--scenarios",
        "writes",
        "--outstanding",
        "1",
        "--seconds",
        "60",
        base_port=base_port,
    )
    try:
        lines = _lines(process)
        first = next(lines)
        work = Path(first.split("data in ", 1)[1].split(",", 1)[0])
        for line in lines:
            if line.startswith("floors:"):
                break
        # Wait until the three nodes and the load generator run.
        seen: set[int] = set()
        for _ in range(600):
            seen |= _descendants(process.pid)
            if len([p for p in seen if _alive(p)]) >= 4:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        assert len(seen) >= 4, f"the benchmark did not start its processes: {seen}"
        assert work.is_dir()
        process.send_signal(signal.SIGINT)
        rest = "\n".join(lines)
        process.wait(timeout=30)  # a hang detector, not a timing
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()
    assert process.returncode == 130, rest
    assert "interrupted" in rest
    assert not work.exists(), "the temporary data directory outlived Ctrl-C"
    assert not [pid for pid in seen if _alive(pid)], "a child process outlived Ctrl-C"


def test_a_row_with_no_completed_request_is_called_a_stall() -> None:
    row = {
        "system": "pysyncobj-nobatch", "nodes": 3, "outstanding": 16, "value_bytes": 16,
        "read_ratio": 0.9, "window_s": 5.0, "ops_per_s": 0.0, "errors": 0,
    }  # fmt: skip
    note = stall_note(row)
    assert note is not None
    assert note.startswith("pysyncobj-nobatch, 3 nodes, 16 outstanding, 16 B 90% reads: ")
    assert "no request completed in the 5 s window (0 errors): the system stalled" in note
    assert stall_note({**row, "ops_per_s": 0.2}) is None
