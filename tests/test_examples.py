"""The runnable examples of the docs (``docs/source/examples``) must keep working.

The tutorial also shows the simulator test below (between the ``tutorial`` markers) verbatim.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import trio
import trio.testing

from trio_raft.testing import open_simulated_cluster

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "source" / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


counter = _load("counter")
Counter = counter.Counter


def test_counter_example_main(capsys: pytest.CaptureFixture[str]) -> None:
    trio.run(counter.main, clock=trio.testing.MockClock(autojump_threshold=0))
    out = capsys.readouterr().out
    expected = (
        r"leader elected: (?P<leader>n\d)\n"
        r"(n1 is not the leader: retrying on (?P=leader)\n)?"
        r"client-1 #1: \+10 -> counter = 10\n"
        r"client-1 #2: \+10 -> counter = 20\n"
        r"client-1 #3: \+10 -> counter = 30\n"
        r"linearizable read on (?P=leader): 30\n"
        r"every replica: \{'n1': 30, 'n2': 30, 'n3': 30\}\n"
    )
    assert re.fullmatch(expected, out), out


def test_counter_ignores_duplicates_and_malformed_commands() -> None:
    c = Counter()
    assert c.apply(("alice", 1, 5)) == 5
    assert c.apply(("alice", 1, 5)) == 5  # a retried command is applied once
    assert c.apply(("bob", 1, 2)) == 7
    assert c.apply("nonsense") is None
    assert c.query(None) == 7


# -- tutorial: testing the counter in the simulator --------------------------------------------
@pytest.mark.parametrize("seed", range(10))
async def test_counter_survives_a_leader_crash(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_simulated_cluster(3, seed=seed, state_machine_factory=Counter) as cluster:
        with trio.fail_after(60):  # virtual seconds: a hang fails fast instead of forever
            leader = await cluster.wait_leader()
            assert await leader.propose(("alice", 1, 5)) == 5

            await cluster.crash(leader.id)
            assert await cluster.propose(("alice", 2, 5)) == 10  # waits for a new leader
            assert await cluster.propose(("alice", 2, 5)) == 10  # a retry is not applied twice

            await cluster.start(leader.id)  # restarts from what its storage had synced
            await cluster.wait_converged()
        values = {node_id: sm.value for node_id, sm in cluster.state_machines.items()}
        assert values == {"n1": 10, "n2": 10, "n3": 10}, f"seed={seed}"


# -- end of tutorial ---------------------------------------------------------------------------
