"""The ``demo`` command: the story it tells, its determinism, and the command line around it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from trio_raft import __version__, _demo
from trio_raft._cli import main

# The events of the story, in the order they must appear (one regex per line of the timeline).
STORY = [
    r"^seed=1 \(replay with --seed 1\)$",
    r"^\[ *\d+\.\d{3}s\] start 3 nodes \(n1, n2, n3\)",
    r"^\[ *\d+\.\d{3}s\] (?P<first>n\d) becomes leader of term 1$",
    r"^\[ *\d+\.\d{3}s\] put x=1 -> committed at index \d+, applied on all 3 nodes$",
    r"^\[ *\d+\.\d{3}s\] put y=2 sent to follower n\d -> NotLeaderError, .*retry on n\d$",
    r"^\[ *\d+\.\d{3}s\] put y=2 -> committed at index \d+, applied on all 3 nodes$",
    r"^\[ *\d+\.\d{3}s\] CRASH (?P<crashed>n\d) \(the leader\)$",
    r"^\[ *\d+\.\d{3}s\] (?P<second>n\d) becomes leader of term \d+ \(after \d+\.\d\ds without a",
    r"^\[ *\d+\.\d{3}s\] put z=3 -> committed at index \d+, applied on n\d, n\d \(n\d is down\)$",
    r"^\[ *\d+\.\d{3}s\] put x=4 -> committed at index \d+, applied on n\d, n\d \(n\d is down\)$",
    r"^\[ *\d+\.\d{3}s\] RESTART (?P<restarted>n\d): its disk holds term 1",
    r"^\[ *\d+\.\d{3}s\] n\d rejoins as follower of term \d+ \(leader n\d\) and catches up",
    r"^\[ *\d+\.\d{3}s\] all 3 nodes hold the same state: \{'x': '4', 'y': '2', 'z': '3'\}$",
    r"^\[ *\d+\.\d{3}s\] read x on leader n\d -> '4' ",
    r"^\[ *\d+\.\d{3}s\] network: \d+ messages sent, \d+ dropped",
    r"^\[ *\d+\.\d{3}s\] invariant checker: \d+ events checked, no violation$",
]


def _timestamps(lines: list[str]) -> list[float]:
    return [float(m.group(1)) for line in lines if (m := re.match(r"^\[ *(\d+\.\d+)s\]", line))]


def test_demo_tells_the_story_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(STORY), "\n".join(lines)
    found: dict[str, str] = {}
    for pattern, line in zip(STORY, lines, strict=True):
        match = re.search(pattern, line)
        assert match, f"expected {pattern!r}, got {line!r}"
        found.update(match.groupdict())
    assert found["crashed"] == found["first"] == found["restarted"]
    assert found["second"] != found["first"]
    times = _timestamps(lines)
    assert times == sorted(times), "virtual timestamps must not go backwards"


def test_demo_output_is_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--seed", "7"]) == 0
    first = capsys.readouterr().out
    assert main(["demo", "--seed", "7"]) == 0
    second = capsys.readouterr().out
    assert first == second
    assert first.startswith("seed=7 (replay with --seed 7)\n")


def test_demo_with_five_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--nodes", "5", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "all 5 nodes hold the same state: {'x': '4', 'y': '2', 'z': '3'}" in out
    assert re.search(
        r"put z=3 -> committed at index \d+, applied on (n\d, ){3}n\d \(n\d is down\)", out
    )


def test_demo_failure_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No election can finish within 1 ms of virtual time: the first scene fails.
    monkeypatch.setattr(_demo, "SCENE_TIMEOUT_S", 0.001)
    assert main(["demo"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: the first election took more than 0.001s of virtual time" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["demo", "--nodes", "2"], "argument --nodes: must be between 3 and 9, got 2"),
        (["demo", "--nodes", "three"], "argument --nodes: expected a whole number"),
        (["demo", "--seed", "-1"], "argument --seed: must be >= 0"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert len(captured.err.splitlines()) == 1 and "--help" in captured.err  # one line
    assert captured.out == ""


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip().endswith(__version__)


@pytest.mark.process  # starts a process: `nox -s processes`
def test_python_m_trio_raft_demo() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trio_raft", "demo"],
        capture_output=True,
        text=True,
        timeout=120,  # a safety net for a hang, not a speed assertion
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all 3 nodes hold the same state" in proc.stdout
    assert proc.stderr == ""


def test_status_view_flags_a_node_whose_disk_is_low() -> None:
    from trio_raft._local_cluster import render

    base = {"term": 2, "commit": 9, "applied": 9, "last_index": 9, "followers": {}}
    leader = {**base, "node": "n1", "role": "leader", "no_space": True}
    leader["followers"] = {"n2": {"match": 7, "next": 8, "probing": False}}
    lines = render({"n1": leader, "n2": {**base, "node": "n2", "role": "follower"}}).splitlines()
    assert lines[1].split()[0] == "n1" and lines[1].endswith("NOSPACE")
    assert lines[2].split() == ["n2", "follower", "2", "9", "9", "2"]
