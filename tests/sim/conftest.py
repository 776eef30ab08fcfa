"""Fixtures shared by the simulator's scenario tests."""

from __future__ import annotations

import pytest

from tests.sim.test_scenarios import scenario_seed


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """The scenario's seed (see :func:`tests.sim.test_scenarios.scenario_seed`)."""
    return scenario_seed(request.config)
