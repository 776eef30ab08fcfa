"""``longest_live_majority``: how long a fault schedule left a majority of the nodes running."""

from __future__ import annotations

import random

from trio_raft.testing import Fault, longest_live_majority, random_schedule

NODES = ("n1", "n2", "n3", "n4", "n5")


def test_no_faults_leaves_the_whole_run() -> None:
    assert longest_live_majority([], NODES, 30.0) == 30.0


def test_crashing_a_majority_splits_the_run() -> None:
    schedule = [
        Fault(2.0, "crash", ("n1", "n2")),  # 3 of 5 still up
        Fault(3.0, "crash", ("n3",)),  # t=5: majority down
        Fault(10.0, "restart", ("n1",)),  # t=15: up again, until the end (30)
    ]
    assert longest_live_majority(schedule, NODES, 30.0) == 15.0


def test_restart_all_and_the_end_of_the_run_count() -> None:
    schedule = [
        Fault(1.0, "crash", ("n1", "n2", "n3")),
        Fault(20.0, "partition", ("n4",)),  # partitions are not counted
        Fault(5.0, "restart_all", ()),  # t=26
        Fault(10.0, "crash", NODES),  # t=36: after the run's end, ignored
    ]
    assert longest_live_majority(schedule, NODES, 30.0) == 4.0


def test_seed_1240_of_the_membership_nemesis_kept_a_majority_down() -> None:
    """The schedule that made a sweep 'fail' for lack of acknowledged writes."""
    master = random.Random(1240)
    schedule = random_schedule(random.Random(master.random()), NODES, 30.0, membership=True)
    assert longest_live_majority(schedule, NODES, 30.0) < 5.0


def test_most_random_schedules_leave_a_majority_up_long_enough_to_demand_writes() -> None:
    """The chaos tests' 'some write was acknowledged' check still applies to most seeds."""
    checked = sum(
        longest_live_majority(
            random_schedule(random.Random(seed), NODES, 30.0, membership=True), NODES, 30.0
        ) >= 5.0
        for seed in range(200)
    )  # fmt: skip
    assert checked >= 180, checked
