"""The membership invariants of :class:`InvariantChecker` fire on broken event streams and on a
deliberately broken core, and stay quiet on valid runs.

Synthetic streams drive the checker with stand-in nodes (a real :class:`RaftState` behind an
object with the two attributes the checker reads); the end-to-end tests break the core's quorum
functions with ``monkeypatch`` and run a real simulated cluster.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import cast

import attrs
import pytest
import trio
import trio.testing

import trio_raft._core._state as core_state
from tests.sim.test_scenarios import deadline
from trio_raft import (
    Config,
    Entry,
    EntryKind,
    HardState,
    Membership,
    Node,
    Role,
    RoleChangeReason,
    SnapshotMeta,
    StoredState,
)
from trio_raft._core._quorum import VoteResult
from trio_raft._core._state import RaftState, Ready
from trio_raft.testing import InvariantChecker, InvariantViolation, open_simulated_cluster
from trio_raft.testing._invariants import config_step, joint_majority

FIVE = Membership({"n1", "n2", "n3", "n4", "n5"})
# Joint: entering {n1, n2, n3}, leaving {n1, n4, n5}.
JOINT = Membership({"n1", "n2", "n3"}, (), {"n1", "n4", "n5"})


@attrs.define
class FakeNode:
    """What the checker reads of a node: its id and its core state."""

    id: str
    _state: RaftState


def as_node(node: FakeNode) -> Node:
    """``node`` where the checker expects a :class:`Node`: it reads only ``id`` and
    ``_state``, which a FakeNode has."""
    return cast(Node, node)


def fake(
    node_id: str,
    bootstrap: Membership | Collection[str] | None,
    entries: Sequence[Entry] = (),
    *,
    term: int = 0,
) -> FakeNode:
    stored = StoredState(HardState(term), tuple(entries))
    return FakeNode(node_id, RaftState(node_id, bootstrap, Config(), stored))


def config_entry(index: int, term: int, m: Membership) -> Entry:
    return Entry(term, index, m, EntryKind.CONFIG)


def command(index: int, term: int) -> Entry:
    return Entry(term, index, ("put", "k", index))


def become_leader(checker: InvariantChecker, node: FakeNode, term: int) -> None:
    node._state.term = term
    node._state.role = Role.LEADER
    won = RoleChangeReason.ELECTION_WON
    checker.observe(as_node(node), "role", (Role.LEADER, term, won))


def vote(checker: InvariantChecker, voter: str, term: int, candidate: str) -> None:
    checker.durable_write(voter, HardState(term, candidate), None, ())


# -- the checker's own arithmetic --------------------------------------------------------------


def test_joint_majority_counts_each_voter_set() -> None:
    assert joint_majority(FIVE, {"n1", "n2", "n3"})
    assert not joint_majority(FIVE, {"n1", "n2", "n6", "n7"})  # strangers never count
    assert joint_majority(JOINT, {"n1", "n2", "n4"})
    assert not joint_majority(JOINT, {"n1", "n2", "n3"})  # no majority of the outgoing set
    assert not joint_majority(JOINT, {"n1", "n4", "n5"})  # no majority of the incoming set


def test_config_step_kinds() -> None:
    three = Membership({"n1", "n4", "n5"})
    with_learner = Membership({"n1", "n4", "n5"}, {"n6"})
    assert config_step(three, with_learner) == "simple"
    assert config_step(three, JOINT) == "enter"
    assert config_step(JOINT, JOINT.leave()) == "leave"
    assert config_step(three, Membership({"n1", "n2", "n3"})) is None  # no joint phase
    assert config_step(FIVE, JOINT) is None  # leaves voters the previous one does not have
    assert config_step(JOINT, three) is None  # a joint configuration only leaves forward
    assert config_step(JOINT, Membership({"n1", "n2"})) is None


# -- synthetic event streams ---------------------------------------------------------------


async def test_only_voters_lead() -> None:
    checker = InvariantChecker(seed=0)
    learner = fake("n3", Membership({"n1", "n2"}, {"n3"}))
    with pytest.raises(InvariantViolation, match=r"Only voters lead.*n3.*term 2.*learners \{n3\}"):
        become_leader(checker, learner, 2)
    joining = fake("n4", None)
    with pytest.raises(InvariantViolation, match=r"Only voters lead.*n4.*no configuration"):
        become_leader(checker, joining, 3)
    # A voter of the outgoing set of a joint configuration may lead.
    for voter in ("n2", "n3", "n4"):
        vote(checker, voter, 4, "n5")
    leaving = Membership({"n1", "n2", "n3"}, (), {"n4", "n5", "n1"})
    become_leader(checker, fake("n5", None, [config_entry(1, 1, leaving)]), 4)


async def test_vote_quorum_needs_durable_votes_of_a_majority() -> None:
    checker = InvariantChecker(seed=0)
    vote(checker, "n2", 2, "n1")
    vote(checker, "n3", 1, "n1")  # another term
    vote(checker, "n4", 2, "n5")  # another candidate
    vote(checker, "n6", 2, "n1")  # not a voter
    with pytest.raises(InvariantViolation, match=r"Vote quorum.*n1.*term 2.*\{n1, n2, n6\}"):
        become_leader(checker, fake("n1", FIVE), 2)

    checker = InvariantChecker(seed=0)
    vote(checker, "n2", 2, "n1")
    vote(checker, "n3", 2, "n1")
    become_leader(checker, fake("n1", FIVE), 2)


async def test_vote_quorum_while_joint_needs_both_majorities() -> None:
    checker = InvariantChecker(seed=0)
    vote(checker, "n2", 3, "n1")
    vote(checker, "n3", 3, "n1")
    with pytest.raises(InvariantViolation, match=r"Vote quorum.*outgoing"):
        become_leader(checker, fake("n1", None, [config_entry(1, 1, JOINT)]), 3)

    checker = InvariantChecker(seed=0)
    vote(checker, "n2", 3, "n1")
    vote(checker, "n4", 3, "n1")
    become_leader(checker, fake("n1", None, [config_entry(1, 1, JOINT)]), 3)


async def test_vote_quorum_counts_the_votes_a_restart_loaded() -> None:
    checker = InvariantChecker(seed=0)
    vote(checker, "n2", 2, "n1")
    checker.node_started("n3", stored=StoredState(HardState(2, "n1")))
    become_leader(checker, fake("n1", FIVE), 2)


def leader_with_log(term: int, members: Membership, entries: Sequence[Entry]) -> FakeNode:
    return fake("n1", members, entries, term=term)


async def test_commit_quorum_needs_a_majority_of_durable_copies() -> None:
    entries = [command(1, 2), command(2, 2)]
    checker = InvariantChecker(seed=0)
    vote(checker, "n2", 2, "n1")
    vote(checker, "n3", 2, "n1")
    leader = leader_with_log(2, FIVE, entries)
    become_leader(checker, leader, 2)
    for nid in ("n1", "n2"):
        checker.durable_write(nid, None, None, entries)
    checker.durable_write("n3", None, None, entries[:1])
    checker.durable_write("n6", None, None, entries)  # not a voter
    leader._state.commit = 1
    checker.observe(as_node(leader), "commit", 1)
    leader._state.commit = 2
    with pytest.raises(InvariantViolation, match=r"Commit quorum.*n1.*term 2.*index 2.*\{n1, n2\}"):
        checker.observe(as_node(leader), "commit", 2)


async def test_commit_quorum_checks_the_term_of_each_copy() -> None:
    entries = [command(1, 2)]
    checker = InvariantChecker(seed=0)
    vote(checker, "n2", 2, "n1")
    vote(checker, "n3", 2, "n1")
    leader = leader_with_log(2, FIVE, entries)
    become_leader(checker, leader, 2)
    checker.durable_write("n1", None, None, entries)
    checker.durable_write("n2", None, None, [command(1, 1)])  # another entry at that index
    checker.durable_write("n3", None, None, entries)
    checker.durable_write("n3", None, 1, ())  # ... then truncated
    leader._state.commit = 1
    with pytest.raises(InvariantViolation, match=r"Commit quorum.*\{n1\}"):
        checker.observe(as_node(leader), "commit", 1)


async def test_commit_quorum_while_joint_needs_both_majorities() -> None:
    entries = [config_entry(1, 3, JOINT), command(2, 3)]
    checker = InvariantChecker(seed=0)
    vote(checker, "n2", 3, "n1")
    vote(checker, "n4", 3, "n1")
    leader = leader_with_log(3, Membership({"n1", "n4", "n5"}), entries)
    become_leader(checker, leader, 3)
    for nid in ("n1", "n2", "n3"):
        checker.durable_write(nid, None, None, entries)
    leader._state.commit = 2
    with pytest.raises(InvariantViolation, match=r"Commit quorum.*\{n1, n2, n3\}.*outgoing"):
        checker.observe(as_node(leader), "commit", 2)
    # One more copy in the outgoing set makes it a quorum (also counted from a snapshot).
    checker._leader_commit[("n1", 3)] = 0
    checker.observe(as_node(fake("n5", FIVE)), "snapshot", SnapshotMeta(2, 3))
    checker.observe(as_node(leader), "commit", 2)


async def test_commit_counted_before_a_configuration_appended_in_the_same_batch() -> None:
    """The leader counted the commit under {n1, n2, n3}, then appended an entry entering a
    joint configuration with n4 and n5; both are reported after the batch."""
    three = Membership({"n1", "n2", "n3"})
    joint = Membership({"n1", "n4", "n5"}, {"n2", "n3"}, {"n1", "n2", "n3"})
    entries = [config_entry(1, 2, three), command(2, 2)]
    checker = InvariantChecker(seed=0)
    vote(checker, "n2", 2, "n1")
    leader = leader_with_log(2, Membership({"n1", "n2", "n3"}), entries)
    become_leader(checker, leader, 2)
    for nid in ("n1", "n2"):
        checker.durable_write(nid, None, None, entries)
    leader._state.commit = 2
    leader._state._append([config_entry(3, 2, joint)])  # the core adopts it on append
    checker.observe(as_node(leader), "membership", (3, joint))
    checker.observe(as_node(leader), "commit", 2)
    # The next commit is counted under the joint configuration only.
    checker.durable_write("n1", None, None, [config_entry(3, 2, joint)])
    checker.durable_write("n2", None, None, [config_entry(3, 2, joint)])
    leader._state.commit = 3
    with pytest.raises(InvariantViolation, match=r"Commit quorum.*index 3.*\{n1, n2\}"):
        checker.observe(as_node(leader), "commit", 3)


async def test_commit_of_an_earlier_term_entry_by_counting_is_refused() -> None:
    entries = [command(1, 1)]  # Figure 8: the leader of term 2 counts replicas of term 1
    checker = InvariantChecker(seed=0)
    vote(checker, "n2", 2, "n1")
    vote(checker, "n3", 2, "n1")
    leader = leader_with_log(2, FIVE, entries)
    become_leader(checker, leader, 2)
    for nid in FIVE.voters:
        checker.durable_write(nid, None, None, entries)
    leader._state.commit = 1
    with pytest.raises(InvariantViolation, match=r"Commit quorum.*entry of term 1.*own term"):
        checker.observe(as_node(leader), "commit", 1)


async def test_one_change_at_a_time_in_every_log() -> None:
    checker = InvariantChecker(seed=0)
    three = Membership({"n1", "n2", "n3"})
    skip = Membership({"n1", "n2", "n4"})  # changes the voters without a joint phase
    bootstrap = Membership({"n1", "n2", "n3"})  # equal, but not the logged configuration
    node = fake("n2", bootstrap, [config_entry(1, 1, three), config_entry(2, 1, skip)])
    ready = Ready(entries=[node._state.log.entry(2)])
    with pytest.raises(InvariantViolation, match=r"One change at a time.*n2.*entry 2.*n4"):
        checker.observe(as_node(node), "persisted", ready)
    # Enter and leave are fine, and so is a joining node's first configuration.
    checker = InvariantChecker(seed=0)
    joint = Membership({"n1", "n2", "n4"}, (), {"n1", "n2", "n3"})
    entries = [config_entry(1, 1, three), config_entry(2, 1, joint), config_entry(3, 1, skip)]
    node = fake("n2", bootstrap, entries)
    checker.observe(as_node(node), "persisted", Ready(entries=entries))
    # The first configuration written after a bootstrap one is not compared with it.
    checker = InvariantChecker(seed=0)
    node = fake("n4", Membership({"n1", "n2", "n4"}), [config_entry(1, 1, three)])
    checker.observe(as_node(node), "persisted", Ready(entries=[config_entry(1, 1, three)]))
    checker = InvariantChecker(seed=0)
    first = [command(1, 1), config_entry(2, 1, joint)]
    node = fake("n5", None, first)
    checker.observe(as_node(node), "persisted", Ready(entries=first))


async def test_a_leader_appends_a_change_only_after_the_previous_one_committed() -> None:
    one = Membership({"n1"})
    learner = Membership({"n1"}, {"n2"})
    checker = InvariantChecker(seed=0)
    leader = leader_with_log(2, one, [config_entry(1, 2, one)])
    become_leader(checker, leader, 2)  # the sole voter: its own vote is a quorum
    leader._state.log.append([config_entry(2, 2, learner)])
    with pytest.raises(
        InvariantViolation, match=r"One change at a time.*n1.*term 2.*entry 2.*entry 1.*commit"
    ):
        checker.observe(as_node(leader), "membership", (2, learner))

    checker = InvariantChecker(seed=0)
    leader = leader_with_log(2, one, [config_entry(1, 2, one)])
    become_leader(checker, leader, 2)
    leader._state.commit = 1
    leader._state.log.append([config_entry(2, 2, learner)])
    checker.observe(as_node(leader), "membership", (2, learner))


async def test_configuration_agreement_at_committed_indexes() -> None:
    checker = InvariantChecker(seed=0)
    entries = [command(1, 1)]
    a = fake("n1", ["n1", "n2", "n3"], entries)
    b = fake("n2", ["n1", "n2"], entries)  # another bootstrap configuration
    a._state.commit = b._state.commit = 1
    checker.observe(as_node(a), "commit", 1)
    with pytest.raises(
        InvariantViolation, match=r"Configuration agreement.*n2.*\{n1, n2\}.*index 1.*n1.*n3"
    ):
        checker.observe(as_node(b), "commit", 1)


async def test_configuration_agreement_covers_snapshots() -> None:
    checker = InvariantChecker(seed=0)
    three = Membership({"n1", "n2", "n3"})
    a = fake("n1", three, [config_entry(1, 1, three), command(2, 1)])
    a._state.commit = 2
    checker.observe(as_node(a), "commit", 2)
    b = fake("n4", None)
    checker.observe(as_node(b), "restore", SnapshotMeta(2, 1, three))
    c = fake("n5", None)
    with pytest.raises(InvariantViolation, match=r"Configuration agreement.*n5.*snapshot"):
        checker.observe(as_node(c), "restore", SnapshotMeta(2, 1, Membership({"n1"})))


async def test_configuration_in_force_is_the_last_in_the_log() -> None:
    checker = InvariantChecker(seed=0)
    three = Membership({"n1", "n2", "n3"})
    learner = Membership({"n1", "n2", "n3"}, {"n4"})
    node = fake("n2", three, [config_entry(1, 1, three), config_entry(2, 1, learner)])
    checker.observe(as_node(node), "membership", (2, learner))
    with pytest.raises(InvariantViolation, match=r"Configuration in force.*n2.*entry 2"):
        checker.observe(as_node(node), "membership", (1, three))
    node._state.log.truncate_from(2)  # a rollback the node did not report
    with pytest.raises(InvariantViolation, match=r"Configuration in force.*n2.*beyond"):
        checker.observe(as_node(node), "membership", (2, learner))


# -- a deliberately broken core, end to end -----------------------------------------------------


async def test_a_core_counting_one_vote_as_a_quorum_is_caught(
    autojump_clock: trio.testing.MockClock, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    def won_with_any_vote(m: Membership, votes: object) -> VoteResult:
        return VoteResult.WON

    monkeypatch.setattr(core_state, "joint_vote_result", won_with_any_vote)
    with deadline(30, seed), pytest.raises(InvariantViolation, match="Vote quorum"):
        async with open_simulated_cluster(3, seed=seed, pre_vote=False) as cluster:
            await cluster.wait_leader()
            await trio.sleep(1)


async def test_a_core_committing_without_a_quorum_is_caught(
    autojump_clock: trio.testing.MockClock, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    def committed_at_own_index(m: Membership, match: dict[str, int]) -> int:
        return max(match.values())

    monkeypatch.setattr(core_state, "joint_committed_index", committed_at_own_index)
    with deadline(30, seed), pytest.raises(InvariantViolation, match="Commit quorum"):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            leader = await cluster.wait_leader()
            cluster.isolate(leader.id)  # nobody else gets the entry
            with trio.move_on_after(1):
                await leader.propose(("put", "k", 1))


async def test_election_safety_is_global_across_added_and_removed_nodes() -> None:
    """One leader per term among every node that ever ran: forgetting a removed node (whose
    id a fresh node may reuse) does not forget the term it led."""
    checker = InvariantChecker(seed=0)
    one = Membership({"n1"})
    become_leader(checker, fake("n1", one), 2)
    checker.node_removed("n1")
    checker.node_started("n1", stored=StoredState())
    with pytest.raises(InvariantViolation, match=r"Election Safety.*n6 and n1.*term 2"):
        become_leader(checker, fake("n6", Membership({"n6"})), 2)


async def test_role_changes_are_reported_with_a_reason_that_leads_there() -> None:
    checker = InvariantChecker(seed=0)
    node = fake("n1", Membership({"n1", "n2", "n3"}))
    node._state.term = 2
    node._state.role = Role.LEADER
    with pytest.raises(InvariantViolation, match=r"Role change reason.*leader.*election timeout"):
        checker.observe(as_node(node), "role", (Role.LEADER, 2, RoleChangeReason.ELECTION_TIMEOUT))
    node._state.role = Role.CANDIDATE
    with pytest.raises(InvariantViolation, match=r"Role change reported.*leader@2.*candidate@2"):
        checker.observe(as_node(node), "role", (Role.LEADER, 2, RoleChangeReason.ELECTION_WON))
    checker.observe(as_node(node), "role", (Role.CANDIDATE, 2, RoleChangeReason.PRE_VOTE_WON))
