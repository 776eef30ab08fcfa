"""Majority arithmetic (Raft §5.2 votes, §5.3 commit), checked against a dumb reference."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_raft._core._quorum import (
    VoteResult,
    committed_index,
    joint_committed_index,
    joint_vote_result,
    majority,
    vote_result,
)
from trio_raft._types import Membership


def ids(n: int) -> list[str]:
    return [f"n{i}" for i in range(1, n + 1)]


@pytest.mark.parametrize(
    ("n", "expected"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)]
)
def test_majority(n: int, expected: int) -> None:
    assert majority(n) == expected


@pytest.mark.parametrize("n", range(1, 8))
def test_vote_result_for_every_tally(n: int) -> None:
    """For n voters, every (granted, rejected) split: WON at a majority of grants, LOST once a
    majority is out of reach, PENDING in between."""
    voters = ids(n)
    need = n // 2 + 1
    for granted in range(n + 1):
        for rejected in range(n + 1 - granted):
            votes = {v: True for v in voters[:granted]}
            votes.update({v: False for v in voters[granted : granted + rejected]})
            result = vote_result(voters, votes)
            if granted >= need:
                assert result is VoteResult.WON, (n, granted, rejected)
            elif granted + (n - granted - rejected) < need:
                assert result is VoteResult.LOST, (n, granted, rejected)
            else:
                assert result is VoteResult.PENDING, (n, granted, rejected)


def test_vote_result_examples() -> None:
    assert vote_result(ids(1), {"n1": True}) is VoteResult.WON
    assert vote_result(ids(1), {}) is VoteResult.PENDING
    assert vote_result(ids(3), {"n1": True}) is VoteResult.PENDING
    assert vote_result(ids(3), {"n1": True, "n2": True}) is VoteResult.WON
    assert vote_result(ids(3), {"n1": True, "n2": False}) is VoteResult.PENDING
    assert vote_result(ids(3), {"n1": True, "n2": False, "n3": False}) is VoteResult.LOST
    # 4 voters: 2 of 4 is not a majority, and 2 rejections already make it unreachable.
    assert vote_result(ids(4), {"n1": True, "n2": True}) is VoteResult.PENDING
    assert vote_result(ids(4), {"n1": True, "n2": True, "n3": False, "n4": False}) is (
        VoteResult.LOST
    )


def test_votes_from_non_voters_do_not_count() -> None:
    votes = {"n1": True, "x": True, "y": True}
    assert vote_result(ids(3), votes) is VoteResult.PENDING
    assert vote_result(ids(3), {"n1": True, "x": False, "y": False}) is VoteResult.PENDING


def test_committed_index_examples() -> None:
    assert committed_index(ids(1), {"n1": 7}) == 7
    assert committed_index(ids(3), {"n1": 5, "n2": 3, "n3": 1}) == 3
    assert committed_index(ids(3), {"n1": 5}) == 0  # missing voters count as 0
    assert committed_index(ids(4), {"n1": 4, "n2": 4, "n3": 2, "n4": 9}) == 4
    assert committed_index(ids(5), {"n1": 9, "n2": 9, "n3": 1, "n4": 1, "n5": 2}) == 2
    assert committed_index(ids(3), {"n1": 5, "n2": 5, "x": 100, "y": 100}) == 5


def committed_index_reference(voters: list[str], match: dict[str, int]) -> int:
    """For every candidate index k, count the voters holding k; the largest k a majority holds."""
    best = 0
    for k in range(max(match.values(), default=0) + 1):
        holders = sum(1 for v in voters if match.get(v, 0) >= k)
        if holders > len(voters) / 2:
            best = k
    return best


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 7),
    data=st.data(),
)
def test_committed_index_matches_reference(n: int, data: st.DataObject) -> None:
    voters = ids(n)
    present = data.draw(st.lists(st.sampled_from([*voters, "x", "y"]), unique=True))
    match = {v: data.draw(st.integers(0, 20)) for v in present}
    assert committed_index(voters, match) == committed_index_reference(voters, match)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 7), data=st.data())
def test_vote_result_matches_reference(n: int, data: st.DataObject) -> None:
    voters = ids(n)
    votes = data.draw(st.dictionaries(st.sampled_from([*voters, "x"]), st.booleans()))
    yes = sum(1 for v in voters if votes.get(v) is True)
    undecided = sum(1 for v in voters if v not in votes)
    if yes > n / 2:
        expected = VoteResult.WON
    elif yes + undecided > n / 2:
        expected = VoteResult.PENDING
    else:
        expected = VoteResult.LOST
    assert vote_result(voters, votes) is expected


# -- joint configurations (thesis §4.3): a majority of each set --------------------------------

NODES = [f"n{i}" for i in range(1, 8)]


@st.composite
def memberships(draw: st.DrawFn) -> Membership:
    """Any configuration over n1..n7, joint or not, with learners from the rest."""
    voters = draw(st.sets(st.sampled_from(NODES), min_size=1))
    outgoing = draw(st.sets(st.sampled_from(NODES)).filter(lambda o: o != voters))
    others = sorted(set(NODES) - voters)
    learners = draw(st.sets(st.sampled_from(others))) if others else set()
    return Membership(voters, learners, outgoing)


def joint_committed_reference(m: Membership, match: dict[str, int]) -> int:
    """For every candidate index k, whether a majority of each non-empty set holds k."""
    best = 0
    for k in range(max(match.values(), default=0) + 1):
        sets = [s for s in (m.voters, m.outgoing) if s]
        if all(sum(1 for v in s if match.get(v, 0) >= k) > len(s) / 2 for s in sets):
            best = k
    return best


@settings(max_examples=200, deadline=None)
@given(m=memberships(), data=st.data())
def test_joint_committed_index_matches_reference(m: Membership, data: st.DataObject) -> None:
    present = data.draw(st.lists(st.sampled_from([*NODES, "x"]), unique=True))
    match = {v: data.draw(st.integers(0, 20)) for v in present}
    assert joint_committed_index(m, match) == joint_committed_reference(m, match)


@settings(max_examples=200, deadline=None)
@given(m=memberships(), data=st.data())
def test_joint_vote_result_matches_reference(m: Membership, data: st.DataObject) -> None:
    votes = data.draw(st.dictionaries(st.sampled_from([*NODES, "x"]), st.booleans()))

    def outcome(voters: frozenset[str]) -> str:
        if not voters:
            return "won"
        yes = sum(1 for v in voters if votes.get(v) is True)
        no = sum(1 for v in voters if votes.get(v) is False)
        if yes > len(voters) / 2:
            return "won"
        return "lost" if len(voters) - no <= len(voters) / 2 else "pending"

    results = {outcome(m.voters), outcome(m.outgoing)}
    expected = (
        VoteResult.LOST
        if "lost" in results
        else VoteResult.WON
        if results == {"won"}
        else VoteResult.PENDING
    )
    assert joint_vote_result(m, votes) is expected


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 7), data=st.data())
def test_joint_functions_equal_the_simple_ones_when_not_joint(n: int, data: st.DataObject) -> None:
    voters = ids(n)
    m = Membership(voters)
    match = data.draw(st.dictionaries(st.sampled_from([*voters, "x"]), st.integers(0, 9)))
    votes = data.draw(st.dictionaries(st.sampled_from([*voters, "x"]), st.booleans()))
    assert joint_committed_index(m, match) == committed_index(voters, match)
    assert joint_vote_result(m, votes) is vote_result(voters, votes)


def test_joint_examples() -> None:
    """{n1,n2,n3} -> {n1,n4,n5}: n1 alone has a majority of neither; n1+n2 is a majority of the
    old set only; n1+n2+n4 is a majority of both."""
    m = Membership({"n1", "n4", "n5"}, (), {"n1", "n2", "n3"})
    assert joint_vote_result(m, {"n1": True}) is VoteResult.PENDING
    assert joint_vote_result(m, {"n1": True, "n2": True}) is VoteResult.PENDING
    assert joint_vote_result(m, {"n1": True, "n2": True, "n4": True}) is VoteResult.WON
    assert joint_vote_result(m, {"n4": False, "n5": False}) is VoteResult.LOST
    assert joint_committed_index(m, {"n1": 9, "n2": 9, "n3": 9, "n4": 1, "n5": 0}) == 1
    assert joint_committed_index(m, {"n1": 9, "n2": 7, "n3": 1, "n4": 8, "n5": 0}) == 7
