"""The tutorial's versioned store (``docs/source/examples/versioned.py``): an
``IndexedStateMachine`` whose versions are log indexes, the same on every replica."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import trio
import trio.testing

from trio_raft import Config
from trio_raft.testing import open_simulated_cluster

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "source" / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


versioned = _load("versioned")
VersionedStore = versioned.VersionedStore


def test_versioned_example_main(capsys: pytest.CaptureFixture[str]) -> None:
    trio.run(versioned.main, clock=trio.testing.MockClock(autojump_threshold=0))
    out = capsys.readouterr().out
    assert re.search(
        r"put colour=red -> version (\d+)\n"
        r"cas appended at index (\d+) of term \d+\n"
        r"cas -> version \2\n"
        r"cas from the old version -> None\n"
        r"read colour: \(\2, 'blue'\)\n",
        out,
    ), out
    assert "COMMAND ['cas', 'colour'" in out
    assert re.search(r"voted for n\d in term \d+", out)


def test_versions_and_refusals() -> None:
    store = VersionedStore()
    assert store.apply_entry(["put", "k", "a"], 3, 1) == 3
    assert store.apply_entry(["cas", "k", 2, "b"], 5, 1) is None  # stale version
    assert store.apply_entry(["cas", "k", 3, "b"], 6, 2) == 6
    assert store.apply_entry(["cas", "new", 0, "x"], 7, 2) == 7  # 0: absent
    assert store.apply_entry("junk", 8, 2) is None
    assert store.query("k") == (6, "b")
    with pytest.raises(TypeError, match="needs each command's index"):
        store.apply(["put", "k", "c"])
    copy = VersionedStore()
    copy.restore(store.snapshot())
    assert (copy.data, copy.applied_index) == (store.data, 8)


async def test_every_replica_has_the_same_versions_across_restarts_and_snapshots(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = Config(snapshot_entries=10, snapshot_keep_entries=2)
    with trio.fail_after(120):
        async with open_simulated_cluster(
            3, seed=7, config=config, state_machine_factory=VersionedStore
        ) as cluster:
            versions = {}
            for i in range(60):
                if i % 20 == 10:
                    await cluster.restart(cluster.node_ids[i % 3])
                versions[f"k{i % 4}"] = await cluster.propose(["put", f"k{i % 4}", str(i)])
            await cluster.wait_converged()
            for sm in cluster.state_machines.values():
                assert isinstance(sm, VersionedStore)
                assert {key: version for key, (version, _) in sm.data.items()} == versions
