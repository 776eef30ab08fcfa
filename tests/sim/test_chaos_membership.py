"""The membership nemesis: the chaos runs of ``test_chaos.py`` with about a third of the actions
changing the configuration through the leader's Node API (add a fresh learner, promote,
demote, remove, the leader included, replace a voter, transfer leadership).

Each seed is its own test (``test_chaos_membership[SEED]``); replay one with
``pytest --seed SEED``. ``TRIO_RAFT_SEEDS=N`` sweeps N seeds (``nox -s sim`` runs 2000).
Besides the invariants and linearizability, every run ends with the membership liveness checks
of :func:`~trio_raft.testing.run_chaos` (settled, agreed configuration; bystanders harmless).
"""

from __future__ import annotations

import functools
from typing import Any

import attrs
import hypothesis
import hypothesis.strategies as st
import pytest
import trio
import trio.testing

from trio_raft.testing import (
    ACTIONS,
    CHAOS_CONFIG,
    MEMBERSHIP_ACTIONS,
    ChaosReport,
    Fault,
    run_chaos,
)

SECONDS = 30.0
"""Virtual seconds of nemesis per seed (then healing, settling and the bystander check)."""
NODES = ("n1", "n2", "n3", "n4", "n5")
FRESH = ("n6", "n7", "n8")

# Outcomes of a membership action that mean it ran (the others: skipped, refused, timed out).
_EXPECTED = {
    "ok", "no_leader", "no_learner", "timeout", "NotLeaderError", "LeadershipLostError",
    "LeadershipTransferError", "NodeClosedError", "MembershipChangeInProgressError",
    "InvalidMembershipError", "LearnerNotCaughtUpError", "QuorumUnavailableError",
}  # fmt: skip


def _run(seed: int, **kwargs: Any) -> ChaosReport:
    report: ChaosReport = trio.run(
        functools.partial(run_chaos, seed, membership=True, **kwargs),
        clock=trio.testing.MockClock(autojump_threshold=0),
    )
    assert report.linearizability.ok is True, f"seed={seed}: {report.linearizability}"
    unexpected = {k for k in report.membership if k.split(":")[1] not in _EXPECTED}
    assert not unexpected, f"seed={seed}: {unexpected}"
    return report


LIVE_MAJORITY_S = 5.0
"""A run must acknowledge writes if its nemesis left a majority running this long at a stretch
(seed 1240 of the membership nemesis crashed three of five nodes for 25 of its 30 s)."""


@pytest.mark.slow
@pytest.mark.seeds(200)
def test_chaos_membership(sim_seed: int) -> None:
    """30 virtual seconds of the classic nemesis plus membership changes, with KV clients
    writing throughout (every other seed through the real wire codec): safety holds, the
    history is linearizable, the healed cluster settles on one configuration and the removed
    bystanders change nothing. (30 s, not test_chaos's 60: a membership run costs about twice
    as much per virtual second, and CI runs 200 seeds.)"""
    report = _run(sim_seed, duration_s=SECONDS, wire_codec=sim_seed % 2 == 1)
    if report.live_majority_s >= LIVE_MAJORITY_S:
        assert report.acknowledged_writes > 0, f"seed={sim_seed}: no write was ever acknowledged"


@pytest.mark.slow
@pytest.mark.seeds(25)
@pytest.mark.parametrize(
    ("pre_vote", "check_quorum"), [(False, False), (True, False), (False, True)]
)
def test_chaos_membership_with_features_off(
    sim_seed: int, pre_vote: bool, check_quorum: bool
) -> None:
    """Without PreVote and/or CheckQuorum, membership changes are just as safe, and removed
    bystanders still cannot disturb the settled cluster (the ignore rule)."""
    config = attrs.evolve(CHAOS_CONFIG, pre_vote=pre_vote, check_quorum=check_quorum)
    _run(sim_seed, duration_s=SECONDS, config=config)


def test_a_membership_schedule_runs_every_action(seed: int) -> None:
    """A fixed schedule on a clean network runs every membership action through the leader,
    and requests that make no sense for their node are answered as designed: promoting a voter
    and removing a stranger change nothing and return, demoting the last voter is refused."""
    schedule = [
        Fault(1.0, "add_learner", ("n6",)),
        Fault(1.0, "promote", ("n6",)),
        Fault(3.0, "transfer", ("n6",)),
        Fault(3.0, "demote", ("n6",)),
        Fault(3.0, "remove", ("n6",)),
        Fault(3.0, "replace", ("n7", "n1")),
        Fault(6.0, "promote", ("n2",)),
        Fault(1.0, "remove", ("n9",)),
        Fault(1.0, "transfer"),
    ]
    report = _run(seed, duration_s=30.0, schedule=schedule, loss=0.0, duplicate=0.0, reorder=0.0)
    assert report.membership == {
        "add_learner:ok": 1, "promote:ok": 2, "transfer:ok": 2, "demote:ok": 1,
        "remove:ok": 2, "replace:ok": 1,
    }, f"seed={seed}"  # fmt: skip


_fault = st.builds(
    Fault,
    after_s=st.floats(0.0, 4.0, allow_nan=False),
    action=st.sampled_from(ACTIONS + MEMBERSHIP_ACTIONS),
    nodes=st.lists(st.sampled_from(NODES + FRESH), min_size=1, max_size=3, unique=True).map(tuple),
)


@pytest.mark.slow
@hypothesis.settings(max_examples=30, deadline=None, derandomize=True, database=None)
@hypothesis.given(schedule=st.lists(_fault, max_size=10), seed=st.integers(0, 2**31))
def test_hypothesis_membership_schedules(schedule: list[Fault], seed: int) -> None:
    """Fault schedules with membership actions generated by Hypothesis (node ids among the
    five and three fresh ones; actions that make no sense for them must be refused, typed): a
    failing one shrinks to a minimal schedule that ``run_chaos(schedule=..., membership=True)``
    replays."""
    _run(seed, duration_s=20.0, schedule=schedule, converge_s=30.0)
