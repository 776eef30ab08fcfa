"""Shared test configuration.

* Simulation tests take their seeds from ``--seed N`` (replay one seed) or the
  ``TRIO_RAFT_SEEDS`` environment variable (how many seeds the randomized tests sweep).
* Importing Hypothesis registers trio's scheduler RNG with it (trio's own plugin hook), which is
  how trio supports deterministic scheduling; the simulator seeds that RNG per run.
"""

from __future__ import annotations

import os

import hypothesis  # noqa: F401  (see the module docstring)
import pytest

DEFAULT_SEEDS = 200


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
