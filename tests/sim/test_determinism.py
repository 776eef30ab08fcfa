"""Same seed, same run: the simulator replays a seed exactly, in-process and across processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import trio
import trio.testing

from trio_raft.testing import ChaosReport, run_chaos

_SCRIPT = """
import functools, sys, trio, trio.testing
import hypothesis  # as under pytest: registers trio's scheduler RNG
from trio_raft.testing import run_chaos
main = functools.partial(run_chaos, int(sys.argv[1]), nodes=5, duration_s=10.0)
r = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
print(r.digest, r.events, r.operations)
"""


def _chaos(seed: int) -> ChaosReport:
    async def main() -> ChaosReport:
        return await run_chaos(seed, nodes=5, duration_s=10.0)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_same_seed_same_trace() -> None:
    first, second = _chaos(7), _chaos(7)
    assert first.events > 1000
    assert (first.digest, first.events, first.operations) == (
        second.digest,
        second.events,
        second.operations,
    )


def test_different_seed_different_trace() -> None:
    assert _chaos(7).digest != _chaos(8).digest


@pytest.mark.process  # starts a process: `nox -s processes`
def test_replay_in_another_process() -> None:
    """A seed printed by a failing test replays in a fresh interpreter (different hash seed)."""
    mine = _chaos(11)
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, "11"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    ).stdout.split()
    assert out == [mine.digest, str(mine.events), str(mine.operations)]
