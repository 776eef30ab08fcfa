"""Shared test configuration.

* Simulation tests take their seeds from ``--seed N`` (replay one seed) or the
  ``TRIO_RAFT_SEEDS`` environment variable (how many seeds the randomized tests sweep).
* Importing Hypothesis registers trio's scheduler RNG with it (trio's own plugin hook), which is
  how trio supports deterministic scheduling; the simulator seeds that RNG per run.
* Property tests decorated with :func:`hypothesis_settings` run derandomized (the same examples
  every run, no example database), so the suite is not flaky. ``TRIO_RAFT_HYPOTHESIS_RANDOM=1``
  (``nox -s hypothesis``) makes them random, with ten times the examples or
  ``TRIO_RAFT_HYPOTHESIS_EXAMPLES``, and keeps what they find in ``.hypothesis`` to replay.
* Tests that start OS processes or bind fixed ports are marked ``process`` (every test under
  ``tests/cluster`` is, by its directory); ``nox -s processes`` runs them and ``nox -s tests``
  the rest. Any other test that tries either fails (:mod:`tests._process_guard`), so the split
  cannot rot. Fixed ports come from :mod:`tests._ports`, released after each test.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import hypothesis  # importing it matters too: see the module docstring
import pytest

from . import _ports
from ._process_guard import MARKER, forbid_processes_and_fixed_ports

PROCESS_DIRECTORIES = (Path(__file__).parent / "cluster",)
"""Every test under these directories runs real processes: marked ``process`` by directory."""

DEFAULT_SEEDS = 200
HYPOTHESIS_SWEEP_FACTOR = 10


def hypothesis_settings(max_examples: int, **kwargs: Any) -> hypothesis.settings:
    """Settings for a property test: ``max_examples`` derandomized examples, or a random sweep.

    Args:
        max_examples: How many examples CI runs (always the same ones).
        **kwargs: Any other :class:`hypothesis.settings` (``deadline``, health checks...).

    With ``TRIO_RAFT_HYPOTHESIS_RANDOM=1`` the examples are random instead, there are
    ``TRIO_RAFT_HYPOTHESIS_EXAMPLES`` of them (default ten times ``max_examples``), and the
    example database is on, so a failure found replays on the next run.
    """
    if os.environ.get("TRIO_RAFT_HYPOTHESIS_RANDOM", "0") not in ("", "0"):
        default = max_examples * HYPOTHESIS_SWEEP_FACTOR
        examples = int(os.environ.get("TRIO_RAFT_HYPOTHESIS_EXAMPLES", default))
        return hypothesis.settings(max_examples=examples, derandomize=False, **kwargs)
    return hypothesis.settings(max_examples=max_examples, derandomize=True, database=None, **kwargs)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--seed",
        type=int,
        default=None,
        help="run the seeded simulation tests with this one seed (replay a failure)",
    )


def sim_seeds(config: pytest.Config, default: int = DEFAULT_SEEDS) -> list[int]:
    """The seeds a randomized simulation test sweeps."""
    one = config.getoption("--seed")
    if one is not None:
        return [one]
    return list(range(int(os.environ.get("TRIO_RAFT_SEEDS", default))))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "sim_seed" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("seeds")
        default = marker.args[0] if marker is not None else DEFAULT_SEEDS
        metafunc.parametrize("sim_seed", sim_seeds(metafunc.config, default))


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.path.is_relative_to(d) for d in PROCESS_DIRECTORIES):
            item.add_marker(MARKER)


def _guarded(item: pytest.Item) -> Generator[None, object, object]:
    if item.get_closest_marker(MARKER) is not None:
        return (yield)
    with forbid_processes_and_fixed_ports(item.nodeid):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, object, object]:
    try:
        return (yield from _guarded(item))
    finally:
        _ports.release_all()  # the test's processes are gone: its ports are free again
