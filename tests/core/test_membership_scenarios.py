"""Membership changes and leadership transfer on whole RaftState nodes (thesis §4.1-§4.3,
§3.10; etcd's testdata ``joint_autoleave``, ``confchange_v1_remove_leader``,
``confchange_v2_replace_leader``), on the synchronous ``Net`` of ``test_state.py``."""

from __future__ import annotations

import pytest

from trio_raft import (
    InvalidMembershipError,
    LeadershipTransferError,
    LearnerNotCaughtUpError,
    MembershipChangeInProgressError,
    NotLeaderError,
    QuorumUnavailableError,
)
from trio_raft._config import Config
from trio_raft._core import _membership as mb
from trio_raft._core._state import RETIRE_ELECTION_TIMEOUTS, RaftState, Transfer
from trio_raft._messages import AppendRequest, TimeoutNow, VoteRequest
from trio_raft._types import Entry, EntryKind, HardState, Membership, NodeId, Role, StoredState

from .test_state import CFG, LEASE, Net, ids, role

C3 = Membership(ids(3))


class MNet(Net):
    """``Net`` whose first leader has committed its configuration, and that can add nodes in
    join mode (they get their configuration from the log)."""

    def add(self, node_id: NodeId, config: Config = CFG) -> RaftState:
        st = RaftState(node_id, None, config, StoredState())
        self.nodes[node_id] = st
        self.readies[node_id] = []
        self.ids = [*self.ids, node_id]
        return st

    def later(self, leader: str, seconds: float = 1.0) -> None:
        """Let time pass with the cluster healthy (heartbeats answered)."""
        self.now += seconds
        if self[leader].role is Role.LEADER:
            self.heartbeat(leader)
        else:
            self.stabilize()

    def settle(self, leader: str) -> None:
        """Heartbeat rounds with time passing, so stalled probes are retried."""
        for _ in range(3):
            self.later(leader, 2.5 * CFG.heartbeat_s)

    def change(self, leader: str, target: Membership) -> Entry | None:
        entry = self[leader].propose_membership(target, self.now)
        self.stabilize()
        return entry


def started(n: int = 3, config: Config = CFG) -> tuple[MNet, RaftState]:
    net = MNet(n, config=config)
    leader = net.elect("n1")
    net.heartbeat("n1")
    assert leader.membership_committed and leader.membership == Membership(ids(n))
    return net, leader


def with_learner(n: int = 3, learner: str = "n4") -> tuple[MNet, RaftState]:
    net, leader = started(n)
    net.add(learner)
    net.change("n1", mb.with_learner(leader.membership, learner))  # type: ignore[arg-type]
    net.heartbeat("n1")
    return net, leader


def config_of(entry: Entry) -> Membership:
    """The configuration a ``CONFIG`` entry carries (its command)."""
    assert isinstance(entry.command, Membership), entry
    return entry.command


def committed(st: RaftState) -> bool:
    """``st.membership_committed``, read through a call so type checkers do not keep it
    narrowed."""
    return st.membership_committed


def transfer(st: RaftState) -> Transfer | None:
    """``st.transfer``, read through a call so type checkers do not keep it narrowed."""
    return st.transfer


def carries_the_leave(m: object) -> bool:
    """An AppendEntries carrying a configuration entry that is not joint (a leave)."""
    return isinstance(m, AppendRequest) and any(
        e.kind is EntryKind.CONFIG and not config_of(e).is_joint for e in m.entries
    )


# -- the configuration in the log ---------------------------------------------------------------


def test_the_first_leader_writes_the_bootstrap_configuration_and_everyone_adopts_it() -> None:
    net, _ = started()
    for st in net.nodes.values():
        assert st.membership == C3
        assert st.membership_index == 1  # the leader's first entry
        assert st.log.entry(1).kind is EntryKind.CONFIG
    net.timeout("n2")
    assert net["n2"].log.entry(net["n2"].log.last_index).kind is EntryKind.NOOP  # not again


def test_a_configuration_takes_effect_on_append_and_is_rolled_back_with_its_entry() -> None:
    """§4.1: a server uses the latest configuration in its log, committed or not; if that
    entry is removed by a new leader, the previous configuration is in force again."""
    net, leader = with_learner()
    net.later("n1")
    net.isolated.update({"n2", "n3", "n4"})
    entry = leader.propose_membership(Membership({"n1", "n2", "n3", "n4"}), net.now)
    assert entry is not None and leader.membership == entry.command  # in force, uncommitted
    net.stabilize()
    assert not leader.membership_committed
    # n1 appends the joint entry alone; n2 becomes leader and overwrites it.
    net.isolated = {"n1"}
    net.timeout("n2")
    net.isolated = set()
    net.settle("n2")
    assert net["n1"].membership == Membership(ids(3), {"n4"})
    assert net["n1"].log.last_index == net["n2"].log.last_index


def test_learners_replicate_but_never_count_campaign_or_vote_in_a_quorum() -> None:
    net, leader = with_learner()
    learner = net["n4"]
    assert learner.membership == Membership(ids(3), {"n4"}) and learner.membership_committed
    assert learner.log.last_index == leader.log.last_index
    assert not learner.can_campaign
    learner.on_election_timeout(net.now)
    assert role(learner) is Role.FOLLOWER and not learner.take_ready().messages
    # Commit needs 2 of n1..n3: n4's copy does not count.
    net.isolated.update({"n2", "n3"})
    (entry,) = leader.propose(["x"])
    net.stabilize()
    assert net["n4"].log.last_index == entry.index and leader.commit < entry.index
    # CheckQuorum: n4's answers do not keep the leader in office.
    lease = MNet(3, config=LEASE)
    lead = lease.elect("n1")
    lease.add("n4", LEASE)
    lease.change("n1", Membership(ids(3), {"n4"}))
    lead.on_election_timeout(lease.now)  # a round that n2 and n3 answered
    assert role(lead) is Role.LEADER
    lease.isolated.update({"n2", "n3"})
    lease.heartbeat("n1")
    lead.on_election_timeout(lease.now)
    assert role(lead) is Role.FOLLOWER


def test_a_new_learner_catches_up_from_an_empty_log() -> None:
    net, leader = started()
    for i in range(30):
        leader.propose([i])
    net.stabilize()
    net.add("n4")
    net.change("n1", Membership(ids(3), {"n4"}))
    assert net["n4"].log.last_index == leader.log.last_index
    assert net["n4"].commit == leader.commit


# -- voter changes: joint consensus, auto-leave --------------------------------------------------


def test_joint_autoleave() -> None:
    """The leader enters C_old,new, and appends C_new on its own once the joint entry commits;
    the call's target is then the committed configuration on every node."""
    net, leader = with_learner()
    net.later("n1")
    target = Membership({"n1", "n2", "n3", "n4"})
    entry = net.change("n1", target)
    assert entry is not None and config_of(entry).is_joint
    joint_index = entry.index
    leave = leader.log.entry(joint_index + 1)
    assert leave.kind is EntryKind.CONFIG and leave.command == target
    net.heartbeat("n1")  # tells the followers the leave's commit
    for st in net.nodes.values():
        assert st.membership == target and st.membership_committed


def test_a_joint_configuration_commits_only_with_both_majorities() -> None:
    """{n1,n2,n3} -> {n1,n4,n5}: n1+n2 is a majority of the old voters only; nothing commits
    until n4 or n5 answers too."""
    net, leader = started()
    for new in ("n4", "n5"):
        net.add(new)
    net.change("n1", Membership(ids(3), {"n4", "n5"}))
    net.isolated.update({"n4", "n5"})
    net.later("n1")
    # Live majorities are checked before anything is appended:
    with pytest.raises(QuorumUnavailableError) as info:
        leader.propose_membership(Membership({"n1", "n4", "n5"}, {"n2", "n3"}), net.now)
    assert info.value.unreachable == {"n4", "n5"}
    net.isolated.clear()
    net.later("n1")
    entry = leader.propose_membership(Membership({"n1", "n4", "n5"}, {"n2", "n3"}), net.now)
    assert entry is not None
    net.isolated.update({"n4", "n5"})
    net.stabilize()
    assert leader.commit < entry.index  # n1, n2, n3 hold it: not enough
    net.isolated = {"n5"}
    net.settle("n1")
    assert leader.commit >= entry.index + 1  # n1+n2 and n1+n4: both majorities; then the leave
    assert leader.membership == Membership({"n1", "n4", "n5"}, {"n2", "n3"})


def test_a_leader_elected_mid_joint_leaves_the_joint_configuration() -> None:
    """No joint configuration is left behind: a new leader holding one commits its no-op
    (and with it the joint entry), then appends the leave."""
    net, leader = with_learner()
    net.later("n1")
    net.drop = carries_the_leave
    entry = leader.propose_membership(Membership({"n1", "n2", "n4"}), net.now)
    assert entry is not None
    net.stabilize()
    assert net["n2"].membership == entry.command  # joint: the leave never arrived
    net.drop = lambda m: False
    net.isolated = {"n1"}
    net.now += 1
    net.timeout("n2")  # wins with n2+n3 of the old voters and n2+n4 of the new
    new = net["n2"]
    assert role(new) is Role.LEADER
    net.heartbeat("n2")
    assert new.membership == Membership({"n1", "n2", "n4"}) and new.membership_committed


# -- the checks --------------------------------------------------------------------------------


def test_every_refusal_appends_nothing() -> None:
    net, leader = with_learner()
    last = leader.log.last_index
    with pytest.raises(LearnerNotCaughtUpError) as caught:
        leader.propose_membership(Membership({"n1", "n2", "n3", "n4"}), net.now)
    assert caught.value.node_id == "n4"
    with pytest.raises(InvalidMembershipError) as invalid:
        leader.propose_membership(Membership({"n1", "n2", "n5"}), net.now)
    assert invalid.value.rule == "not_a_learner"
    with pytest.raises(NotLeaderError):
        net["n2"].propose_membership(Membership(ids(3)), net.now)
    assert leader.log.last_index == last
    # A change in flight (its entry not committed yet):
    net.isolated.update({"n2", "n3"})
    assert leader.propose_membership(Membership(ids(3)), net.now) is not None
    with pytest.raises(MembershipChangeInProgressError) as busy:
        leader.propose_membership(Membership(ids(3), {"n4"}), net.now)
    assert busy.value.index == leader.log.last_index
    assert leader.propose_membership(Membership(ids(3)), net.now) is None  # a retry: in force


def test_no_change_before_the_leader_committed_an_entry_of_its_term() -> None:
    net, _ = started()
    net.isolated = {"n1"}
    net.drop = lambda m: isinstance(m, AppendRequest)  # n2 wins, but its no-op goes nowhere
    net.now += 1
    net.timeout("n2")
    new = net["n2"]
    assert role(new) is Role.LEADER and not new.leader_ready
    with pytest.raises(MembershipChangeInProgressError, match="has not committed an entry"):
        new.propose_membership(Membership(ids(3), {"n9"}), net.now)


def test_changes_are_idempotent() -> None:
    net, leader = with_learner()
    assert leader.propose_membership(Membership(ids(3), {"n4"}), net.now) is None
    net.later("n1")
    net.isolated = {"n2", "n3", "n4"}
    entry = leader.propose_membership(Membership({"n1", "n2", "n3", "n4"}), net.now)
    assert entry is not None and config_of(entry).is_joint
    net.isolated = set()
    net.heartbeat("n1")
    # Joint and leaving toward the target: asking again appends nothing.
    assert leader.membership == Membership({"n1", "n2", "n3", "n4"})


# -- removed nodes and leaders -----------------------------------------------------------------


def test_a_removed_leader_leads_until_the_change_commits_then_hands_over() -> None:
    """confchange_v1_remove_leader: the leader keeps leading without counting itself and
    refusing proposals, steps down once C_new commits, and the successor (TimeoutNow) wins."""
    net, leader = started()
    net.later("n1")
    entry = leader.propose_membership(Membership({"n2", "n3"}), net.now)
    assert entry is not None
    # Until the leave is appended n1 is an outgoing voter and still accepts proposals.
    net.stabilize()
    assert role(leader) is Role.FOLLOWER  # stepped down after the leave committed
    assert leader.successor in {"n2", "n3"}
    assert any(isinstance(m, TimeoutNow) for m in net.delivered)
    new = net[leader.successor]
    assert role(new) is Role.LEADER and new.term == leader.term + 1
    assert new.membership == Membership({"n2", "n3"})
    with pytest.raises(NotLeaderError):
        leader.propose(["late"])


def test_a_leader_not_in_the_configuration_refuses_proposals_meanwhile() -> None:
    net, leader = started()
    net.later("n1")

    net.drop = carries_the_leave
    leader.propose_membership(Membership({"n2", "n3"}), net.now)
    net.stabilize()
    assert role(leader) is Role.LEADER
    assert leader.membership == Membership({"n2", "n3"}) and not leader.membership_committed
    with pytest.raises(NotLeaderError):
        leader.propose(["x"])
    with pytest.raises(NotLeaderError):
        leader.read_index()
    net.drop = lambda m: False
    net.settle("n1")
    assert role(leader) is Role.FOLLOWER


def test_replace_the_leader() -> None:
    """confchange_v2_replace_leader: {n1,n2,n3} -> {n2,n3,n4} led by n1."""
    net, leader = with_learner()
    net.later("n1")
    net.change("n1", mb.replaced(leader.membership, "n1", "n4"))  # type: ignore[arg-type]
    leaders = [st for st in net.nodes.values() if st.role is Role.LEADER]
    assert len(leaders) == 1 and leaders[0].id in {"n2", "n3", "n4"}
    assert all(st.membership == Membership({"n2", "n3", "n4"}) for st in net.nodes.values())


def test_the_leader_stops_replicating_to_a_removed_peer_once_it_knows() -> None:
    net, leader = with_learner()
    removal = leader.log.last_index + 1  # the index the removal will have
    net.drop = lambda m: m.dst == "n4" and isinstance(m, AppendRequest) and m.commit >= removal
    net.change("n1", Membership(ids(3)))  # remove learner n4: a simple change
    assert net["n4"].membership == Membership(ids(3)) and not net["n4"].membership_committed
    for _ in range(5):  # every message that would tell it is lost: it is kept
        net.heartbeat("n1")
    assert "n4" in leader.replica_ids and not net["n4"].membership_committed
    net.drop = lambda m: False
    net.heartbeat("n1")  # told, and it answers
    assert committed(net["n4"])
    net.heartbeat("n1")
    assert "n4" not in leader.replica_ids and "n4" not in leader.progress


def test_a_removed_peer_that_never_answers_is_dropped_after_a_while() -> None:
    net, leader = with_learner()
    net.isolated = {"n4"}
    net.change("n1", Membership(ids(3)))
    net.heartbeat("n1")
    assert "n4" in leader.replica_ids
    net.now += RETIRE_ELECTION_TIMEOUTS * leader.config.election_timeout_s_max
    net.heartbeat("n1")
    assert "n4" not in leader.replica_ids


def test_a_removed_node_with_a_stale_log_cannot_disrupt() -> None:
    """A node removed while cut off keeps its old configuration and campaigns at ever higher
    terms; its vote requests are dropped unanswered, without adopting its term."""
    net, leader = started(4)
    net.isolated = {"n4"}
    net.later("n1")
    leader.propose_membership(Membership(ids(3)), net.now)  # remove n4 (a voter): joint
    net.stabilize()
    net.later("n1")
    assert leader.membership == Membership(ids(3)) and leader.membership_committed
    term = leader.term
    net.isolated = set()
    for _ in range(5):
        net["n4"].on_election_timeout(net.now)
        net.stabilize()
    for i in ids(3):
        assert net[i].term == term
    assert role(leader) is Role.LEADER


def test_a_non_voter_with_a_newer_log_is_answered() -> None:
    """The n3/n4 example of the design: to n3, n4 is a learner (n3 has not seen the joint
    entry), but n4's log is newer, so n3 answers it and n4 can win."""
    net, leader = with_learner()
    net.later("n1")
    net.drop = lambda m: m.src == "n1" and m.dst == "n3"
    entry = leader.propose_membership(Membership({"n1", "n2", "n3", "n4"}), net.now)
    assert entry is not None
    net.stabilize()
    assert net["n3"].membership == Membership(ids(3), {"n4"})
    net.isolated = {"n1"}
    net.drop = lambda m: False
    net.timeout("n4")
    assert role(net["n4"]) is Role.LEADER
    assert any(
        isinstance(m, VoteRequest) and m.src == "n4" and m.dst == "n3" for m in net.delivered
    )


# -- leadership transfer -----------------------------------------------------------------------


def test_transfer_hands_over_past_the_lease_and_refuses_proposals_meanwhile() -> None:
    """§3.10: the leader brings the target up to date and sends TimeoutNow; the target
    campaigns at once, and the others' CheckQuorum leases let its request through."""
    net = MNet(3, config=LEASE)
    leader = net.elect("n1")
    net.heartbeat("n1")
    net.later("n1")
    net.isolated = {"n3"}
    leader.propose(["behind"])
    net.stabilize()
    net.isolated = set()
    net.drop = lambda m: m.dst == "n3" and m.src == "n1"  # n3 lags while the transfer starts
    assert leader.transfer_leadership("n3", net.now) == "n3"
    with pytest.raises(NotLeaderError) as refused:
        leader.propose(["x"])
    assert refused.value.leader_id == "n3"
    net.stabilize()
    assert role(leader) is Role.LEADER  # n3 cannot catch up: no TimeoutNow yet
    net.drop = lambda m: False
    net.settle("n1")
    assert role(net["n3"]) is Role.LEADER
    assert net["n3"].term == leader.term and role(leader) is Role.FOLLOWER


def test_transfer_times_out_and_the_leader_resumes() -> None:
    net, leader = started()
    net.later("n1")
    net.isolated = {"n2"}
    leader.propose(["x"])
    net.stabilize()
    leader.transfer_leadership("n2", net.now)
    assert leader.transfer is not None
    assert leader.transfer.deadline == net.now + CFG.election_timeout_s_max
    assert leader.leader_deadline <= leader.transfer.deadline
    net.now += CFG.election_timeout_s_max
    leader.on_election_timeout(net.now)
    assert role(leader) is Role.LEADER and transfer(leader) is None
    assert "timed out" in (leader.transfer_failure or "")
    leader.propose(["accepted again"])


def test_transfer_refusals() -> None:
    net, leader = started()
    with pytest.raises(InvalidMembershipError) as info:
        leader.transfer_leadership("n9", net.now)
    assert info.value.rule == "not_a_voter"
    with pytest.raises(NotLeaderError):
        net["n2"].transfer_leadership("n3", net.now)
    assert leader.transfer_leadership("n1", net.now) == "n1"
    net.now += 10  # nobody heard from recently
    with pytest.raises(LeadershipTransferError):
        leader.transfer_leadership(None, net.now)
    lone = MNet(1)
    only = lone.elect("n1")
    with pytest.raises(InvalidMembershipError) as alone:
        only.transfer_leadership(None, 0.0)
    assert alone.value.rule == "no_other_voter"


def test_a_stale_timeout_now_or_one_from_a_stranger_is_ignored() -> None:
    net, _ = started()
    follower = net["n2"]
    follower.step(TimeoutNow("n3", "n2", follower.term), net.now)  # n3 is not its leader
    assert role(follower) is Role.FOLLOWER
    learner = RaftState("n4", None, CFG, StoredState(HardState(1)))
    learner.step(TimeoutNow("n1", "n4", 1), 0.0)
    assert role(learner) is Role.FOLLOWER  # a node without a configuration never campaigns
