"""Paper tests for :class:`RaftState`, in the manner of etcd's ``raft_paper_test.go``.

Each test cites the sentence or section of the Raft paper (Ongaro & Ousterhout, "In Search of an
Understandable Consensus Algorithm", extended version) or of Ongaro's thesis that it checks.
Nodes are driven by hand: single nodes by stepping crafted messages, clusters through
:class:`Net`, a tiny synchronous network that hands each node's ``take_ready().messages`` to the
others and reports every write as persisted right away (unless told not to).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import pytest

from trio_raft._config import Config
from trio_raft._core._progress import Progress, ProgressState
from trio_raft._core._state import RaftState, Ready
from trio_raft._errors import NotLeaderError, TooManyUncommittedError
from trio_raft._messages import (
    AppendRequest,
    AppendResponse,
    Message,
    VoteRequest,
    VoteResponse,
    validate,
)
from trio_raft._types import (
    MAX_TERM,
    Entry,
    EntryKind,
    HardState,
    Membership,
    NodeId,
    Role,
    StoredState,
)

CFG = Config(pre_vote=False, check_quorum=False)
"""Plain Raft of the paper: no PreVote, no CheckQuorum."""
PV = Config(pre_vote=True, check_quorum=False)
LEASE = Config(
    pre_vote=False,
    check_quorum=True,
    election_timeout_s_min=1.0,
    election_timeout_s_max=2.0,
    heartbeat_s=0.1,
)

M = TypeVar("M", bound=Message)


def ids(n: int) -> list[NodeId]:
    return [f"n{i}" for i in range(1, n + 1)]


def log_entries(terms: Sequence[int]) -> tuple[Entry, ...]:
    return tuple(Entry(t, i, f"c{i}") for i, t in enumerate(terms, start=1))


def stored(
    terms: Sequence[int] = (), term: int | None = None, voted_for: NodeId | None = None
) -> StoredState:
    hs_term = term if term is not None else (terms[-1] if terms else 0)
    return StoredState(HardState(hs_term, voted_for), log_entries(terms))


def node(
    node_id: NodeId = "n1",
    *,
    terms: Sequence[int] = (),
    term: int | None = None,
    voted_for: NodeId | None = None,
    n: int = 3,
    config: Config = CFG,
) -> RaftState:
    """A node restarted from a stored log with the given entry terms."""
    return RaftState(node_id, ids(n), config, stored(terms, term, voted_for))


def append(
    term: int,
    prev_index: int,
    prev_term: int,
    entry_terms: Sequence[int] = (),
    *,
    commit: int = 0,
    seq: int = 0,
    src: NodeId = "n2",
    dst: NodeId = "n1",
) -> AppendRequest:
    entries = tuple(
        Entry(t, prev_index + 1 + i, f"c{prev_index + 1 + i}") for i, t in enumerate(entry_terms)
    )
    return AppendRequest(src, dst, term, prev_index, prev_term, entries, commit, seq)


def the(ready: Ready, kind: type[M]) -> M:
    """The single message of ``ready``, which must be a ``kind``."""
    assert len(ready.messages) == 1, ready.messages
    (message,) = ready.messages
    assert isinstance(message, kind), message
    return message


def role(st: RaftState) -> Role:
    """``st.role``, read through a call so type checkers do not keep it narrowed."""
    return st.role


def state(pr: Progress) -> ProgressState:
    return pr.state


def log_terms(st: RaftState) -> list[int]:
    return [st.log.entry(i).term for i in range(1, st.log.last_index + 1)]


def make_leader(st: RaftState, now: float = 0.0) -> Ready:
    """Elect ``st`` by stepping granted votes from its peers; returns the Ready it produced."""
    st.on_election_timeout(now)
    for peer in sorted(st.replica_ids):
        if st.role is Role.LEADER:
            break
        pre = st.role is Role.PRE_CANDIDATE
        st.step(VoteResponse(peer, st.id, st.term + pre, True, pre_vote=pre), now)
    for peer in sorted(st.replica_ids):
        if st.role is Role.LEADER:
            break
        st.step(VoteResponse(peer, st.id, st.term, True), now)
    assert role(st) is Role.LEADER
    return st.take_ready()


class Net:
    """A synchronous network of :class:`RaftState` nodes.

    ``stabilize()`` alternates two steps until nothing moves: every node's Ready is taken (and,
    unless the node is in ``unsynced``, reported persisted at once) and its messages queued; every
    leader is asked for whatever ``next_append`` will send without a heartbeat being due. Then the
    queue is delivered, except messages to or from an ``isolated`` node or matched by ``drop``.
    Time stands still unless a test moves ``now``.
    """

    def __init__(
        self,
        n: int = 3,
        *,
        config: Config = CFG,
        stored: Mapping[NodeId, StoredState] | None = None,
    ) -> None:
        self.ids = ids(n)
        stored = stored or {}
        self.nodes = {
            i: RaftState(i, self.ids, config, stored.get(i, StoredState())) for i in self.ids
        }
        self.now = 0.0
        self.queue: list[Message] = []
        self.delivered: list[Message] = []
        self.isolated: set[NodeId] = set()
        self.drop: Callable[[Message], bool] = lambda m: False
        self.unsynced: set[NodeId] = set()
        self.readies: dict[NodeId, list[Ready]] = {i: [] for i in self.ids}

    def __getitem__(self, node_id: NodeId) -> RaftState:
        return self.nodes[node_id]

    def flush(self, node_id: NodeId) -> Ready:
        st = self.nodes[node_id]
        ready = st.take_ready()
        self.readies[node_id].append(ready)
        if node_id not in self.unsynced:
            st.on_persisted(st.log.last_index)
        self.queue.extend(ready.messages)
        return ready

    def persist(self, node_id: NodeId) -> None:
        st = self.nodes[node_id]
        st.on_persisted(st.log.last_index)

    def _collect(self) -> bool:
        moved = False
        for node_id, st in self.nodes.items():
            if st.has_ready():
                self.flush(node_id)
                moved = True
            if st.role is Role.LEADER:
                for peer in sorted(st.replica_ids):
                    while (m := st.next_append(peer, self.now, heartbeat_due=False)) is not None:
                        self.queue.append(m)
                        moved = True
        return moved

    def _deliver(self) -> bool:
        if not self.queue:
            return False
        batch, self.queue = self.queue, []
        for m in batch:
            if m.src in self.isolated or m.dst in self.isolated or self.drop(m):
                continue
            self.delivered.append(m)
            self.nodes[m.dst].step(m, self.now)
        return True

    def stabilize(self) -> None:
        for _ in range(10_000):
            moved = self._collect()
            if not (self._deliver() or moved):
                return
        raise AssertionError("the network never went quiet")

    def timeout(self, node_id: NodeId) -> None:
        self.nodes[node_id].on_election_timeout(self.now)
        self.stabilize()

    def elect(self, node_id: NodeId) -> RaftState:
        self.timeout(node_id)
        st = self.nodes[node_id]
        assert role(st) is Role.LEADER, (node_id, st.role)
        return st

    def heartbeat(self, leader_id: NodeId) -> None:
        st = self.nodes[leader_id]
        for peer in sorted(st.replica_ids):
            m = st.next_append(peer, self.now, heartbeat_due=True)
            if m is not None:
                self.queue.append(m)
        self.stabilize()

    def confirmed_reads(self, node_id: NodeId) -> list[tuple[int, int]]:
        return [r for ready in self.readies[node_id] for r in ready.confirmed_reads]

    def appends(self, src: NodeId, dst: NodeId) -> list[AppendRequest]:
        return [
            m
            for m in self.delivered
            if isinstance(m, AppendRequest) and m.src == src and m.dst == dst
        ]


def same_logs(*nodes: RaftState) -> bool:
    first = nodes[0].log.slice(1, nodes[0].log.last_index + 1)
    return all(st.log.slice(1, st.log.last_index + 1) == first for st in nodes[1:])


# =============================================================================================
# §5.1 Raft basics: terms
# =============================================================================================


def _in_role(start: Role) -> RaftState:
    if start is Role.FOLLOWER:
        st = node(terms=[1], term=1)
    elif start is Role.PRE_CANDIDATE:
        st = node(terms=[1], term=1, config=PV)
        st.on_election_timeout(0.0)
    elif start is Role.CANDIDATE:
        st = node(terms=[1], term=1)
        st.on_election_timeout(0.0)
    else:
        st = node(terms=[1], term=1)
        make_leader(st)
    assert role(st) is start
    st.take_ready()
    st.on_persisted(st.log.last_index)
    return st


HIGHER_TERM_MESSAGES: dict[str, Message] = {
    "append-request": AppendRequest("n3", "n1", 5, 0, 0, (), 0),
    "append-response": AppendResponse("n3", "n1", 5, False, rejected_index=0),
    "vote-request": VoteRequest("n3", "n1", 5, 0, 0),
    "vote-response": VoteResponse("n3", "n1", 5, False),
}


@pytest.mark.parametrize("start", list(Role))
@pytest.mark.parametrize("kind", list(HIGHER_TERM_MESSAGES))
def test_higher_term_makes_any_role_a_follower(start: Role, kind: str) -> None:
    """§5.1: "If a candidate or leader discovers that its term is out of date, it immediately
    reverts to follower state." and "If one server's current term is smaller than the other's,
    then it updates its current term to the larger value." (Figure 2, All Servers.)"""
    st = _in_role(start)
    st.step(HIGHER_TERM_MESSAGES[kind], 1.0)
    ready = st.take_ready()
    assert role(st) is Role.FOLLOWER
    assert st.term == 5
    assert st.voted_for is None  # the empty log of n3 is not up to date: no vote
    assert ready.hard_state == HardState(5, None)
    assert st.leader_id == ("n3" if kind == "append-request" else None)
    assert ready.role_changed  # a new term always ends the current role
    assert st.progress == {}


def test_stale_append_request_is_answered_with_the_current_term() -> None:
    """§5.1: "If a server receives a request with a stale term number, it rejects the request."
    The answer carries the receiver's term so that the sender learns it is out of date."""
    st = node(terms=[1, 5], term=5)
    st.step(append(3, 1, 1, [3], commit=1), 0.0)
    ready = st.take_ready()
    response = the(ready, AppendResponse)
    assert response.term == 5
    assert not response.success
    assert log_terms(st) == [1, 5]
    assert ready.hard_state is None
    assert not ready.entries
    assert st.commit == 0
    assert st.leader_id is None  # a stale leader is not recognised


def test_stale_vote_request_is_refused_with_the_current_term() -> None:
    """§5.1: a request with a stale term is rejected, telling the candidate the newer term."""
    st = node(terms=[1], term=5)
    st.step(VoteRequest("n2", "n1", 4, 9, 4), 0.0)
    response = the(st.take_ready(), VoteResponse)
    assert (response.term, response.granted) == (5, False)
    assert st.voted_for is None


def test_stale_leader_steps_down_on_the_answer() -> None:
    """§5.1: a leader cut off while the others elected a new one learns the newer term from the
    first answer to its AppendEntries and "immediately reverts to follower state"."""
    net = Net(3)
    old = net.elect("n1")
    net.isolated.add("n1")
    new = net.elect("n2")
    assert new.term == 2
    net.isolated.clear()
    old.propose(["stale"])  # still believes it leads term 1
    net.stabilize()
    assert role(old) is Role.FOLLOWER
    assert old.term == 2
    assert net["n3"].log.last_index == 2  # the stale entry never got into n3's log
    assert all(net["n3"].log.entry(i).command != "stale" for i in (1, 2))


def test_responses_of_an_older_term_are_ignored() -> None:
    """§5.1: a message with a stale term is not acted upon."""
    st = node(terms=[1], term=1)
    make_leader(st)  # term 2, no-op at index 2
    st.on_persisted(2)
    st.step(AppendResponse("n2", "n1", 1, True, match_index=2), 0.0)
    st.step(AppendResponse("n3", "n1", 1, True, match_index=2), 0.0)
    assert st.commit == 0
    assert st.progress["n2"].match == 0
    assert role(st) is Role.LEADER


# =============================================================================================
# §5.2 Leader election
# =============================================================================================


def test_election_timeout_starts_an_election() -> None:
    """§5.2: "To begin an election, a follower increments its current term and transitions to
    candidate state. It then votes for itself and issues RequestVote RPCs in parallel to each of
    the other servers." The term and vote are persisted before the requests go out."""
    st = node(terms=[1, 1, 2], term=2, n=5)
    st.on_election_timeout(0.0)
    ready = st.take_ready()
    assert role(st) is Role.CANDIDATE
    assert (st.term, st.voted_for) == (3, "n1")
    assert ready.hard_state == HardState(3, "n1")
    assert ready.role_changed
    assert ready.reset_election_timer
    assert sorted(ready.messages, key=lambda m: m.dst) == [
        VoteRequest("n1", peer, 3, 3, 2) for peer in ("n2", "n3", "n4", "n5")
    ]


@pytest.mark.parametrize("config", [CFG, PV], ids=["plain", "pre_vote"])
def test_no_election_past_max_term(config: Config) -> None:
    """A term is a 62-bit number on the wire, so a node at MAX_TERM has no term left to campaign
    in: it stays a follower and sends nothing (it used to build a VoteRequest the codec refused,
    which crashed the node). One term below, the last election is still held, in range."""
    st = node(terms=[1], term=MAX_TERM, config=config)
    assert st.terms_exhausted
    st.on_election_timeout(0.0)
    ready = st.take_ready()
    assert role(st) is Role.FOLLOWER
    assert st.term == MAX_TERM
    assert ready.messages == []
    assert ready.reset_election_timer

    st = node(terms=[1], term=MAX_TERM - 1, config=config)
    assert not st.terms_exhausted
    st.on_election_timeout(0.0)
    ready = st.take_ready()
    assert {m.term for m in ready.messages} == {MAX_TERM}
    for m in ready.messages:
        validate(m)  # raises FieldError if the wire would refuse it


def test_candidate_wins_with_a_majority() -> None:
    """§5.2: "A candidate wins an election if it receives votes from a majority of the servers in
    the full cluster for the same term." Once it wins, it becomes leader."""
    st = node(n=5)
    st.on_election_timeout(0.0)
    st.take_ready()
    st.step(VoteResponse("n2", "n1", 1, True), 0.0)
    st.step(VoteResponse("n3", "n1", 1, False), 0.0)
    assert role(st) is Role.CANDIDATE  # 2 of 5
    st.step(VoteResponse("n2", "n1", 1, True), 0.0)  # a duplicate counts once
    assert role(st) is Role.CANDIDATE
    st.step(VoteResponse("n4", "n1", 1, True), 0.0)
    assert role(st) is Role.LEADER  # 3 of 5
    assert st.leader_id == "n1"
    assert st.take_ready().role_changed


def test_single_node_elects_itself() -> None:
    """§5.2 with a cluster of one: the candidate's own vote is a majority."""
    st = node(n=1)
    st.on_election_timeout(0.0)
    assert role(st) is Role.LEADER
    assert st.term == 1


def test_candidate_loses_on_a_majority_of_rejections() -> None:
    """§5.2: when a majority refuses, the candidate cannot win this term; it returns to follower
    (keeping the term and its own vote) and waits for a leader or its next timeout."""
    st = node(n=5)
    st.on_election_timeout(0.0)
    st.take_ready()
    st.step(VoteResponse("n2", "n1", 1, False), 0.0)
    st.step(VoteResponse("n3", "n1", 1, False), 0.0)
    assert role(st) is Role.CANDIDATE  # 2 refusals of 5: 3 votes still possible
    st.step(VoteResponse("n4", "n1", 1, False), 0.0)
    assert role(st) is Role.FOLLOWER
    assert (st.term, st.voted_for) == (1, "n1")


def test_split_vote_then_a_new_election_with_a_higher_term() -> None:
    """§5.2: "if many followers become candidates at the same time, votes could be split so that
    no candidate obtains a majority. When this happens, each candidate will time out and start a
    new election by incrementing its term"."""
    net = Net(4)
    # n1 can reach only n3, n2 only n4: each gets two of four votes.
    reach = {("n1", "n3"), ("n3", "n1"), ("n2", "n4"), ("n4", "n2"), ("n1", "n2"), ("n2", "n1")}
    net.drop = lambda m: (m.src, m.dst) not in reach
    net["n1"].on_election_timeout(0.0)
    net["n2"].on_election_timeout(0.0)
    net.stabilize()
    assert [net[i].role for i in ("n1", "n2")] == [Role.CANDIDATE, Role.CANDIDATE]
    assert (net["n3"].voted_for, net["n4"].voted_for) == ("n1", "n2")
    net.drop = lambda m: False
    net.timeout("n1")
    assert role(net["n1"]) is Role.LEADER
    assert net["n1"].term == 2
    assert all(net[i].term == 2 and net[i].role is Role.FOLLOWER for i in ("n2", "n3", "n4"))


def test_one_vote_per_term() -> None:
    """§5.2: "Each server will vote for at most one candidate in a given term, on a
    first-come-first-served basis." A repeated request from the same candidate (e.g. a
    retransmission) is granted again; the vote is persisted with the grant."""
    st = node()
    st.step(VoteRequest("n2", "n1", 1, 0, 0), 0.0)
    ready = st.take_ready()
    assert the(ready, VoteResponse) == VoteResponse("n1", "n2", 1, True)
    assert ready.hard_state == HardState(1, "n2")
    assert ready.reset_election_timer
    st.step(VoteRequest("n3", "n1", 1, 0, 0), 0.0)
    ready = st.take_ready()
    assert the(ready, VoteResponse) == VoteResponse("n1", "n3", 1, False)
    assert ready.hard_state is None
    st.step(VoteRequest("n2", "n1", 1, 0, 0), 0.0)
    assert the(st.take_ready(), VoteResponse).granted
    assert st.voted_for == "n2"
    st.step(VoteRequest("n3", "n1", 2, 0, 0), 0.0)  # a new term: a new vote
    assert the(st.take_ready(), VoteResponse) == VoteResponse("n1", "n3", 2, True)
    assert (st.term, st.voted_for) == (2, "n3")


def test_vote_survives_a_restart() -> None:
    """§5.2/Figure 2: votedFor is persistent state, so a restarted node still refuses others."""
    st = node(term=1, voted_for="n2")
    st.step(VoteRequest("n3", "n1", 1, 0, 0), 0.0)
    assert not the(st.take_ready(), VoteResponse).granted
    st.step(VoteRequest("n2", "n1", 1, 0, 0), 0.0)
    assert the(st.take_ready(), VoteResponse).granted


def test_candidate_refuses_others_in_its_term() -> None:
    """§5.2: a candidate has voted for itself, so it refuses another candidate of its term."""
    st = node()
    st.on_election_timeout(0.0)
    st.take_ready()
    st.step(VoteRequest("n2", "n1", 1, 5, 1), 0.0)
    assert not the(st.take_ready(), VoteResponse).granted
    assert role(st) is Role.CANDIDATE


def test_follower_with_a_known_leader_refuses_votes_in_that_term() -> None:
    """§5.2 (as in etcd): a follower that already follows a leader in term T (without having
    voted) does not help elect a second leader for T."""
    st = node()
    st.step(append(1, 0, 0), 0.0)
    st.take_ready()
    assert (st.leader_id, st.voted_for) == ("n2", None)
    st.step(VoteRequest("n3", "n1", 1, 5, 1), 0.0)
    assert not the(st.take_ready(), VoteResponse).granted


@pytest.mark.parametrize(
    ("last_index", "last_term", "granted"),
    [
        (3, 2, True),  # identical log
        (4, 2, True),  # same last term, longer
        (2, 2, False),  # same last term, shorter
        (1, 3, True),  # later last term, shorter
        (9, 1, False),  # older last term, longer
        (0, 0, False),  # empty
    ],
)
def test_vote_only_for_an_up_to_date_log(last_index: int, last_term: int, granted: bool) -> None:
    """§5.4.1: "the voter denies its vote if its own log is more up-to-date than that of the
    candidate. [...] If the logs have last entries with different terms, then the log with the
    later term is more up-to-date. If the logs end with the same term, then whichever log is
    longer is more up-to-date." """
    st = node(terms=[1, 2, 2], term=2)
    st.step(VoteRequest("n2", "n1", 3, last_index, last_term), 0.0)
    ready = st.take_ready()
    assert the(ready, VoteResponse).granted is granted
    assert st.term == 3  # the term is adopted either way
    assert st.voted_for == ("n2" if granted else None)
    assert ready.hard_state == HardState(3, "n2" if granted else None)


def test_candidate_returns_to_follower_on_append_from_a_leader_of_its_term() -> None:
    """§5.2: "If the AppendEntries RPC is from another server claiming to be leader whose term is
    at least as large as the candidate's current term, then the candidate recognizes the leader as
    legitimate and returns to follower state." """
    st = node()
    st.on_election_timeout(0.0)
    st.take_ready()
    st.step(append(1, 0, 0, [1]), 0.0)
    ready = st.take_ready()
    assert role(st) is Role.FOLLOWER
    assert st.leader_id == "n2"
    assert ready.role_changed
    assert the(ready, AppendResponse).success
    assert st.term == 1


# =============================================================================================
# PreVote (thesis §9.6)
# =============================================================================================


def test_pre_candidate_keeps_its_term_and_vote() -> None:
    """Thesis §9.6: a node first asks whether it could win; it does not increment its term or
    change its vote while doing so (so nothing is persisted)."""
    st = node(terms=[1, 3], term=3, voted_for="n2", config=PV)
    st.on_election_timeout(0.0)
    ready = st.take_ready()
    assert role(st) is Role.PRE_CANDIDATE
    assert (st.term, st.voted_for) == (3, "n2")
    assert ready.hard_state is None
    assert not ready.must_sync
    assert sorted(ready.messages, key=lambda m: m.dst) == [
        VoteRequest("n1", peer, 4, 2, 3, pre_vote=True) for peer in ("n2", "n3")
    ]


def test_pre_vote_is_granted_without_changing_the_voters_term() -> None:
    """Thesis §9.6: a server grants a PreVote if the candidate's log is up to date, but neither
    adopts the term nor records a vote."""
    st = node(terms=[1], term=3, voted_for="n3", config=PV)
    st.step(VoteRequest("n2", "n1", 4, 1, 1, pre_vote=True), 0.0)
    ready = st.take_ready()
    assert the(ready, VoteResponse) == VoteResponse("n1", "n2", 4, True, pre_vote=True)
    assert (st.term, st.voted_for) == (3, "n3")
    assert ready.hard_state is None
    assert role(st) is Role.FOLLOWER


def test_pre_vote_is_refused_for_a_stale_log() -> None:
    """Thesis §9.6: the PreVote uses the same up-to-date check as a real vote (§5.4.1)."""
    st = node(terms=[1, 2], term=3, config=PV)
    st.step(VoteRequest("n2", "n1", 4, 5, 1, pre_vote=True), 0.0)
    ready = st.take_ready()
    response = the(ready, VoteResponse)
    assert not response.granted
    assert response.pre_vote
    assert st.term == 3
    assert ready.hard_state is None


def test_pre_vote_majority_starts_the_real_election() -> None:
    """Thesis §9.6: "only if [it] hears back from a majority of the cluster [...] does [it]
    increment its term and start a normal election"."""
    st = node(terms=[1], term=1, config=PV)
    st.on_election_timeout(0.0)
    st.take_ready()
    assert st.term == 1
    st.step(VoteResponse("n2", "n1", 2, True, pre_vote=True), 0.0)
    ready = st.take_ready()
    assert role(st) is Role.CANDIDATE
    assert (st.term, st.voted_for) == (2, "n1")
    assert ready.hard_state == HardState(2, "n1")
    assert sorted(ready.messages, key=lambda m: m.dst) == [
        VoteRequest("n1", peer, 2, 1, 1) for peer in ("n2", "n3")
    ]


def test_pre_vote_full_election_through_the_network() -> None:
    """Thesis §9.6 end to end: PreVote round, then the real round, then a leader of term+1."""
    net = Net(3, config=PV)
    leader = net.elect("n1")
    assert leader.term == 1
    assert all(net[i].term == 1 for i in net.ids)
    assert same_logs(*net.nodes.values())


def test_isolated_pre_candidate_does_not_inflate_its_term() -> None:
    """Thesis §9.6: a partitioned node cannot win a PreVote, so its term stays put and it cannot
    disrupt the cluster when it returns."""
    net = Net(3, config=PV)
    net.elect("n1")
    net.isolated.add("n3")
    for _ in range(5):
        net.timeout("n3")
    assert net["n3"].term == 1
    assert role(net["n3"]) is Role.PRE_CANDIDATE
    net.isolated.clear()
    net.heartbeat("n1")
    assert role(net["n1"]) is Role.LEADER
    assert net["n1"].term == 1
    assert role(net["n3"]) is Role.FOLLOWER


def test_pre_candidate_loses_on_a_majority_of_rejections() -> None:
    """Thesis §9.6 / §5.2: a pre-candidate refused by a majority (its log is behind) cannot win;
    like a candidate it returns to follower instead of lingering as pre-candidate."""
    net = Net(
        3,
        config=PV,
        stored={"n1": stored([1]), "n2": stored([1, 1]), "n3": stored([1, 1])},
    )
    net.timeout("n1")
    refusals = [m for m in net.delivered if isinstance(m, VoteResponse) and m.dst == "n1"]
    assert len(refusals) == 2
    assert not any(m.granted for m in refusals)
    assert net["n1"].term == 1
    assert role(net["n1"]) is Role.FOLLOWER


# =============================================================================================
# CheckQuorum and leader lease (thesis §6.2, §4.2.3)
# =============================================================================================


def test_check_quorum_leader_steps_down_without_a_majority() -> None:
    """Thesis §6.2: "a leader steps down if an election timeout elapses without a successful
    round of heartbeats to a majority of its cluster"."""
    net = Net(3, config=LEASE)
    leader = net.elect("n1")
    net.heartbeat("n1")
    leader.on_election_timeout(net.now)  # a round with answers from both followers
    assert role(leader) is Role.LEADER
    net.isolated.add("n1")
    net.heartbeat("n1")  # nobody answers
    leader.on_election_timeout(net.now)
    ready = leader.take_ready()
    assert role(leader) is Role.FOLLOWER
    assert leader.term == 1  # stepping down does not change the term
    assert leader.leader_id is None
    assert ready.role_changed


def test_check_quorum_leader_stays_with_a_majority() -> None:
    """Thesis §6.2: answers from a majority (here one follower of two plus itself) suffice."""
    net = Net(3, config=LEASE)
    leader = net.elect("n1")
    net.isolated.add("n3")
    for _ in range(3):
        net.heartbeat("n1")
        leader.on_election_timeout(net.now)
        assert role(leader) is Role.LEADER


def test_check_quorum_counts_only_this_round() -> None:
    """Thesis §6.2: activity is reset at each round; an answer from an earlier round does not
    keep a now-isolated leader in office."""
    net = Net(5, config=LEASE)
    leader = net.elect("n1")
    leader.on_election_timeout(net.now)
    net.heartbeat("n1")
    leader.on_election_timeout(net.now)
    assert role(leader) is Role.LEADER
    net.isolated.update({"n3", "n4", "n5"})  # only n2 answers: 2 of 5
    net.heartbeat("n1")
    leader.on_election_timeout(net.now)
    assert role(leader) is Role.FOLLOWER


def test_without_check_quorum_an_isolated_leader_stays() -> None:
    """With CheckQuorum off (plain Raft), the election timeout does nothing to a leader."""
    net = Net(3, config=CFG)
    leader = net.elect("n1")
    net.isolated.add("n1")
    for _ in range(3):
        leader.on_election_timeout(net.now)
    assert role(leader) is Role.LEADER


@pytest.mark.parametrize("pre_vote", [False, True])
def test_follower_in_lease_ignores_a_disruptive_vote_request(pre_vote: bool) -> None:
    """Thesis §4.2.3: "if a server receives a RequestVote request within the minimum election
    timeout of hearing from a current leader, it does not update its term or grant its vote".
    Once that time has passed it answers normally."""
    st = node("n2", terms=[1], term=1, config=LEASE)
    st.step(append(1, 1, 1, src="n1", dst="n2"), 10.0)
    st.take_ready()
    request = VoteRequest("n3", "n2", 2, 5, 1, pre_vote=pre_vote)
    st.step(request, 10.9)
    assert not st.has_ready()
    assert st.term == 1
    assert st.leader_id == "n1"
    st.step(request, 11.0)  # election_timeout_s_min after the last contact
    ready = st.take_ready()
    assert the(ready, VoteResponse).granted
    assert st.term == (1 if pre_vote else 2)


def test_lease_is_renewed_by_every_append() -> None:
    """Thesis §4.2.3: the lease runs from the latest contact with the leader."""
    st = node("n2", terms=[1], term=1, config=LEASE)
    st.step(append(1, 1, 1, src="n1", dst="n2"), 10.0)
    st.step(append(1, 1, 1, src="n1", dst="n2"), 10.8)
    st.take_ready()
    st.step(VoteRequest("n3", "n2", 2, 5, 1), 11.5)
    assert not st.has_ready()
    assert st.term == 1


def test_leader_in_lease_ignores_a_disruptive_vote_request() -> None:
    """Thesis §4.2.3: with CheckQuorum the leader itself also ignores a higher-term RequestVote."""
    st = node(terms=[1], term=1, config=LEASE)
    make_leader(st)
    st.step(VoteRequest("n3", "n1", 9, 9, 9), 100.0)
    assert not st.has_ready()
    assert (st.role, st.term) == (Role.LEADER, 2)


def test_without_check_quorum_there_is_no_lease() -> None:
    st = node("n2", terms=[1], term=1, config=CFG)
    st.step(append(1, 1, 1, src="n1", dst="n2"), 10.0)
    st.take_ready()
    st.step(VoteRequest("n3", "n2", 2, 5, 1), 10.0)
    assert the(st.take_ready(), VoteResponse).granted
    assert st.term == 2


# =============================================================================================
# §5.3 Log replication
# =============================================================================================


def test_append_accepted_when_prev_matches() -> None:
    """§5.3 / Figure 2 (AppendEntries 1-4): an entry at prevLogIndex with prevLogTerm exists, so
    the new entries are appended and success is returned."""
    st = node(terms=[1, 1], term=1)
    st.step(append(2, 2, 1, [2, 2]), 0.0)
    ready = st.take_ready()
    assert log_terms(st) == [1, 1, 2, 2]
    assert [(e.term, e.index) for e in ready.entries] == [(2, 3), (2, 4)]
    response = the(ready, AppendResponse)
    assert response.success
    assert response.match_index == 4


def test_append_rejected_when_the_log_is_too_short() -> None:
    """§5.3: "If the follower does not find an entry in its log with the same index and term,
    then it refuses the new entries." The answer says where the log ends."""
    st = node(terms=[1, 1], term=1)
    st.step(append(1, 5, 1, [1]), 0.0)
    ready = st.take_ready()
    response = the(ready, AppendResponse)
    assert not response.success
    assert response.rejected_index == 5
    assert (response.conflict_term, response.conflict_index) == (0, 3)
    assert log_terms(st) == [1, 1]
    assert not ready.entries


def test_append_rejected_when_prev_term_differs() -> None:
    """§5.3: a prevLogIndex whose term differs is refused; the follower reports its conflicting
    term and the first index it holds of that term (the fast back-up hint)."""
    st = node(terms=[1, 2, 2, 2], term=2)
    st.step(append(3, 4, 3, [3]), 0.0)
    ready = st.take_ready()
    response = the(ready, AppendResponse)
    assert not response.success
    assert (response.rejected_index, response.conflict_term, response.conflict_index) == (4, 2, 2)
    assert log_terms(st) == [1, 2, 2, 2]
    assert ready.truncate_from is None


def test_conflicting_suffix_is_truncated_and_replaced() -> None:
    """§5.3: "If an existing entry conflicts with a new one (same index but different terms),
    delete the existing entry and all that follow it" (Figure 2, AppendEntries 3). The node is
    told to drop the persisted entries before writing the new ones."""
    st = node(terms=[1, 1, 2, 2, 2], term=2)
    st.step(append(3, 2, 1, [3, 3]), 0.0)
    ready = st.take_ready()
    assert log_terms(st) == [1, 1, 3, 3]
    assert ready.truncate_from == 3
    assert [(e.term, e.index) for e in ready.entries] == [(3, 3), (3, 4)]
    assert the(ready, AppendResponse).match_index == 4


def test_only_the_conflicting_part_is_replaced() -> None:
    """§5.3: entries that already match are kept; truncation starts at the first conflict."""
    st = node(terms=[1, 1, 2, 2], term=2)
    st.step(append(3, 1, 1, [1, 2, 3]), 0.0)
    ready = st.take_ready()
    assert log_terms(st) == [1, 1, 2, 3]
    assert ready.truncate_from == 4
    assert [e.index for e in ready.entries] == [4]


def test_duplicate_append_is_idempotent() -> None:
    """§5.3: AppendEntries is idempotent; a retransmission changes nothing and needs no write."""
    st = node(terms=[1], term=1)
    request = append(1, 1, 1, [1, 1], commit=2)
    st.step(request, 0.0)
    first = st.take_ready()
    st.on_persisted(st.log.last_index)
    st.step(request, 0.0)
    second = st.take_ready()
    assert log_terms(st) == [1, 1, 1]
    assert first.entries and not second.entries
    assert second.truncate_from is None
    assert not second.must_sync
    assert the(second, AppendResponse) == the(first, AppendResponse)


def test_reordered_older_append_does_not_truncate() -> None:
    """§5.3 (Figure 2, AppendEntries 3 only deletes on a *conflict*): a delayed, shorter request
    arriving after a longer one must not drop the entries the longer one added. The answer claims
    only what that request covered."""
    st = node()
    st.step(append(1, 0, 0, [1, 1, 1]), 0.0)
    st.take_ready()
    st.step(append(1, 0, 0, [1]), 0.0)
    ready = st.take_ready()
    assert log_terms(st) == [1, 1, 1]
    assert ready.truncate_from is None
    assert not ready.entries
    assert the(ready, AppendResponse).match_index == 1


def test_out_of_order_appends_converge() -> None:
    """§5.3: a request that arrives before its predecessor is refused; once the predecessor and a
    retransmission arrive, the log is complete."""
    st = node()
    second = append(1, 2, 1, [1, 1])
    first = append(1, 0, 0, [1, 1])
    st.step(second, 0.0)
    assert not the(st.take_ready(), AppendResponse).success
    st.step(first, 0.0)
    assert the(st.take_ready(), AppendResponse).match_index == 2
    st.step(second, 0.0)
    assert the(st.take_ready(), AppendResponse).match_index == 4
    assert log_terms(st) == [1, 1, 1, 1]


def test_follower_commit_is_min_of_leader_commit_and_last_new_entry() -> None:
    """Figure 2, AppendEntries 5: "If leaderCommit > commitIndex, set commitIndex =
    min(leaderCommit, index of last new entry)". Entries past the request are not verified, so
    they are not committed; and the commit index never goes back."""
    st = node(terms=[1, 1, 1, 1, 1], term=1)  # indexes 3..5 may be stale
    st.step(append(1, 1, 1, [1], commit=10), 0.0)
    assert st.commit == 2
    st.step(append(1, 2, 1, commit=10), 0.0)  # a heartbeat covering up to 2
    assert st.commit == 2
    st.step(append(1, 2, 1, [1, 1], commit=3), 0.0)
    assert st.commit == 3
    st.step(append(1, 0, 0, [1], commit=1), 0.0)  # late and behind
    assert st.commit == 3


def test_rejected_append_does_not_advance_commit() -> None:
    """Figure 2: the commit rule applies only after the consistency check passed."""
    st = node(terms=[1, 1], term=1)
    st.step(append(2, 2, 2, [2], commit=3), 0.0)
    assert st.commit == 0


# -- fast back-up (§5.3, "the follower can include the term of the conflicting entry") ----------


def _roundtrips_to_repair(leader_terms: list[int], follower_terms: list[int]) -> int:
    """Elect n1 (holding ``leader_terms``) with n2's help and count the AppendEntries it sends n3
    (holding ``follower_terms``) before n3's log equals its own."""
    top = max(leader_terms)
    net = Net(
        3,
        stored={
            "n1": stored(leader_terms, term=top),
            "n2": stored(leader_terms, term=top),
            "n3": stored(follower_terms, term=max(follower_terms)),
        },
    )
    net.elect("n1")
    assert same_logs(net["n1"], net["n3"])
    return len(net.appends("n1", "n3"))


def test_fast_backup_over_one_divergent_term() -> None:
    """§5.3: "the leader can decrement nextIndex to bypass all of the conflicting entries in that
    term; one AppendEntries RPC will be required for each term with conflicting entries, rather
    than one RPC per entry." 55 divergent entries of one term cost a constant number of trips."""
    trips = _roundtrips_to_repair([1] * 5 + [3] * 3, [1] * 5 + [2] * 55)
    assert trips <= 3


def test_fast_backup_when_the_leader_holds_part_of_the_divergent_term() -> None:
    """§5.3 (the leader knows the conflicting term): it jumps to the end of its own entries of
    that term instead of walking back over the follower's extra ones."""
    trips = _roundtrips_to_repair([1] * 5 + [2] * 3 + [3], [1] * 5 + [2] * 60)
    assert trips <= 3


def test_fast_backup_over_a_missing_suffix() -> None:
    """§5.3: a follower missing 50 entries tells the leader where its log ends."""
    trips = _roundtrips_to_repair([1] * 55, [1] * 5)
    assert trips <= 3


def test_fast_backup_hint_uses_the_leaders_last_entry_of_the_conflicting_term() -> None:
    """§5.3 fast back-up, leader side: if the leader has entries of the follower's conflicting
    term, the next probe starts right after its last one; otherwise at the follower's hint."""
    st = node(terms=[1, 2, 2, 2, 5], term=5)
    make_leader(st)  # term 6, no-op at 6
    probe = st.next_append("n2", 0.0, heartbeat_due=False)
    assert probe is not None
    assert (probe.prev_index, probe.prev_term) == (5, 5)
    # n2 holds term 2 at index 5 (its run of term 2 starts at 2).
    st.step(
        AppendResponse("n2", "n1", 6, False, rejected_index=5, conflict_term=2, conflict_index=2),
        0.0,
    )
    assert st.progress["n2"].next == 5
    probe = st.next_append("n2", 0.0, heartbeat_due=False)
    assert probe is not None
    assert (probe.prev_index, probe.prev_term) == (4, 2)
    # n3 holds term 3 at index 5, which the leader never had: use n3's own hint.
    st.next_append("n3", 0.0, heartbeat_due=False)
    st.step(
        AppendResponse("n3", "n1", 6, False, rejected_index=5, conflict_term=3, conflict_index=3),
        0.0,
    )
    assert st.progress["n3"].next == 3


def test_fast_backup_costs_one_trip_per_divergent_term() -> None:
    """§5.3: with three divergent terms of 20 entries each, the cost is about one trip per term,
    not one per entry (60)."""
    trips = _roundtrips_to_repair([1] * 5 + [7] * 70, [1] * 5 + [2] * 20 + [4] * 20 + [6] * 20)
    assert trips <= 3 + 2


# =============================================================================================
# §5.4.2 Committing entries from previous terms (Figure 8)
# =============================================================================================


def _figure8_c() -> Net:
    """Figure 8 (c): S1 leads term 4 and has replicated its term-2 entry at index 2 to S3, so
    S1, S2, S3 (a majority) hold it. S5 holds a term-3 entry at index 2."""
    cfg = Config(pre_vote=False, check_quorum=False, max_entries_per_append=1)
    net = Net(
        5,
        config=cfg,
        stored={
            "n1": stored([1, 2], term=3),
            "n2": stored([1, 2], term=3),
            "n3": stored([1], term=3),
            "n4": stored([1], term=3),
            "n5": stored([1, 3], term=3),
        },
    )
    # S4 and S5 get nothing from S1; S3 gets index 2 but not S1's term-4 entry at index 3 (the
    # first probe, which S3 rejects because it lacks index 2, may pass).
    net.drop = lambda m: (
        isinstance(m, AppendRequest)
        and (
            m.dst in ("n4", "n5")
            or (m.dst == "n3" and net["n3"].log.last_index >= 2 and bool(m.entries))
        )
    )
    s1 = net.elect("n1")
    assert s1.term == 4
    assert [net[i].log.term(2) for i in ("n1", "n2", "n3")] == [2, 2, 2]
    assert s1.progress["n3"].match == 2
    return net


def test_figure8_old_term_entry_is_not_committed_by_counting_replicas() -> None:
    """§5.4.2: "Raft never commits log entries from previous terms by counting replicas." In
    Figure 8 (d) S5 can still be elected and overwrite index 2, so committing it would be
    unsafe; the test plays that out."""
    net = _figure8_c()
    s1 = net["n1"]
    assert s1.commit < 2
    # (d): S1 crashes; S5 is elected with votes from S3 and S4 and overwrites index 2.
    net.isolated.add("n1")
    net.drop = lambda m: False
    net.timeout("n5")  # term 4: everyone already voted in term 4, so this round is lost
    net.timeout("n5")
    s5 = net["n5"]
    assert role(s5) is Role.LEADER
    assert s5.term == 5
    assert net["n3"].log.term(2) == 3
    assert s5.commit >= 2


def test_figure8_old_term_entry_commits_indirectly() -> None:
    """§5.4.2: "once an entry from the current term has been committed in this way, then all
    prior entries are committed indirectly because of the Log Matching Property." (Figure 8 (e))
    After that S5 can no longer win an election."""
    net = _figure8_c()
    s1 = net["n1"]
    net.drop = lambda m: isinstance(m, AppendRequest) and m.dst in ("n4", "n5")
    net.now += 1.0  # the message to S3 carrying index 3 was lost: let it be resent
    net.heartbeat("n1")
    assert net["n3"].log.term(3) == 4
    assert s1.commit == 3
    assert s1.log.term(2) == 2
    net.isolated.add("n1")
    net.drop = lambda m: False
    for _ in range(3):
        net.timeout("n5")
    assert role(net["n5"]) is not Role.LEADER
    assert net["n3"].log.term(2) == 2


# =============================================================================================
# §8 client interaction: the leader's no-op, proposals
# =============================================================================================


def test_leader_appends_a_noop_on_election() -> None:
    """§8: "each leader [commits] a blank no-op entry into the log at the start of its term".
    Here the configuration is already in the log, so the entry is a plain no-op."""
    config = Membership(ids(3))
    st = RaftState(
        "n1", ids(3), CFG,
        StoredState(HardState(1), (Entry(1, 1, config, EntryKind.CONFIG), Entry(1, 2, "x"))),
    )  # fmt: skip
    ready = make_leader(st)
    noop = st.log.entry(3)
    assert (noop.term, noop.index, noop.kind, noop.command) == (2, 3, EntryKind.NOOP, None)
    assert ready.entries == [noop]


def test_the_first_leader_writes_the_bootstrap_configuration_in_place_of_its_noop() -> None:
    """Adoption: a bootstrap configuration is in no log, so the first leader appends it as its
    term's first entry (where the no-op would be); from then on the log is the source of
    truth and later leaders append no-ops."""
    st = node(terms=[1, 1], term=1)
    assert st.membership == Membership(ids(3)) and st.membership_index == 0
    ready = make_leader(st)
    first = st.log.entry(3)
    assert (first.term, first.index, first.kind) == (2, 3, EntryKind.CONFIG)
    assert first.command == Membership(ids(3))
    assert ready.entries == [first]
    assert st.membership_index == 3 and not st.membership_committed


def test_noop_commits_and_reaches_every_follower() -> None:
    """§8: the no-op commits once replicated, and every log converges."""
    net = Net(3)
    leader = net.elect("n1")
    assert leader.commit == 1
    net.heartbeat("n1")
    assert [net[i].commit for i in net.ids] == [1, 1, 1]
    assert same_logs(*net.nodes.values())


def test_propose_appends_entries_of_the_leaders_term() -> None:
    """§5.3: "The leader appends the command to its log as a new entry"."""
    net = Net(3)
    leader = net.elect("n1")
    entries = leader.propose(["a", "b"])
    assert [(e.term, e.index, e.command) for e in entries] == [(1, 2, "a"), (1, 3, "b")]
    net.stabilize()
    assert leader.commit == 3
    assert same_logs(*net.nodes.values())


def test_propose_on_a_follower_raises_not_leader_with_a_hint() -> None:
    """§8: "If the client contacts a follower, the follower [...] supply information about the
    most recent leader it has heard from"."""
    net = Net(3)
    net.elect("n1")
    with pytest.raises(NotLeaderError) as info:
        net["n2"].propose(["x"])
    assert info.value.leader_id == "n1"
    assert net["n2"].log.last_index == 1


def test_propose_on_a_candidate_raises_not_leader_without_a_hint() -> None:
    st = node()
    st.on_election_timeout(0.0)
    with pytest.raises(NotLeaderError) as info:
        st.propose(["x"])
    assert info.value.leader_id is None
    assert st.log.last_index == 0


def test_too_many_uncommitted_entries_are_refused() -> None:
    """Back-pressure: a leader that cannot commit refuses proposals past
    ``max_uncommitted_entries`` (counting its no-op) and appends nothing; it accepts again once
    entries commit."""
    net = Net(3, config=Config(pre_vote=False, check_quorum=False, max_uncommitted_entries=3))
    leader = net.elect("n1")
    net.isolated.update({"n2", "n3"})
    leader.propose(["a", "b", "c"])  # 3 uncommitted
    with pytest.raises(TooManyUncommittedError):
        leader.propose(["d"])
    assert leader.log.last_index == 4
    net.isolated.clear()
    net.now += 1.0
    net.heartbeat("n1")
    assert leader.commit == 4
    leader.propose(["d", "e", "f"])
    with pytest.raises(TooManyUncommittedError):
        leader.propose(["g"])


def test_a_batch_over_the_limit_is_refused_whole() -> None:
    st = node(n=1, config=Config(pre_vote=False, check_quorum=False, max_uncommitted_entries=3))
    st.on_election_timeout(0.0)
    st.on_persisted(st.log.last_index)
    assert st.commit == 1
    with pytest.raises(TooManyUncommittedError):
        st.propose(["a", "b", "c", "d"])
    assert st.log.last_index == 1
    assert len(st.propose(["a", "b", "c"])) == 3


# =============================================================================================
# ReadIndex (thesis §6.4)
# =============================================================================================


def test_read_index_waits_for_a_heartbeat_quorum() -> None:
    """Thesis §6.4: the leader "sends heartbeats to the cluster and waits for acknowledgments
    from a majority" before serving the read at its commit index; an older acknowledgment does
    not count."""
    net = Net(3)
    leader = net.elect("n1")
    leader.propose(["a"])
    net.stabilize()
    assert leader.commit == 2
    read = leader.read_index()
    assert not leader.take_ready().confirmed_reads
    # An answer to a message sent before the read (seq 0) proves nothing.
    leader.step(AppendResponse("n2", "n1", 1, True, match_index=2, seq=0), 0.0)
    assert not leader.take_ready().confirmed_reads
    heartbeat = leader.next_append("n2", 0.0, heartbeat_due=False)  # sent because of the read
    assert heartbeat is not None
    assert heartbeat.seq == 1
    assert heartbeat.entries == ()
    net["n2"].step(heartbeat, 0.0)
    ack = the(net["n2"].take_ready(), AppendResponse)
    leader.step(ack, 0.0)
    assert leader.take_ready().confirmed_reads == [(read, 2)]


def test_read_index_counts_only_acks_of_a_later_heartbeat() -> None:
    """Thesis §6.4: each read needs heartbeats sent after it started; an ack for the first of two
    reads does not confirm the second."""
    st = node(terms=[1], term=1)
    make_leader(st)
    st.on_persisted(2)
    st.step(AppendResponse("n2", "n1", 2, True, match_index=2), 0.0)
    assert st.commit == 2
    first = st.read_index()
    request = st.next_append("n2", 0.0, heartbeat_due=False)  # round 1 leaves
    assert request is not None and request.seq == 1
    second = st.read_index()  # arrives while round 1 is in flight
    st.step(AppendResponse("n2", "n1", 2, True, match_index=2, seq=1), 0.0)
    assert st.take_ready().confirmed_reads == [(first, 2)]
    assert st.seq == 2  # round 1 confirmed: round 2 starts, for the second read
    request = st.next_append("n3", 0.0, heartbeat_due=False)
    assert request is not None and request.seq == 2
    st.step(AppendResponse("n3", "n1", 2, True, match_index=2, seq=2), 0.0)
    assert st.take_ready().confirmed_reads == [(second, 2)]


def test_reads_before_their_round_left_share_it() -> None:
    """Two reads before any heartbeat of the round the first started has left: both are
    confirmed by that round (every message of it leaves after both)."""
    st = node(terms=[1], term=1)
    make_leader(st)
    st.on_persisted(2)
    st.step(AppendResponse("n2", "n1", 2, True, match_index=2), 0.0)
    first, second = st.read_index(), st.read_index()
    assert st.seq == 1
    st.step(AppendResponse("n2", "n1", 2, True, match_index=2, seq=1), 0.0)
    assert st.take_ready().confirmed_reads == [(first, 2), (second, 2)]


def test_reads_arriving_during_a_round_share_the_next_one() -> None:
    """ReadIndex batching: any number of reads arriving while a round is in flight cost one
    more round, started when the one in flight is confirmed; none is confirmed by the round
    that was in flight when it arrived."""
    st = node(terms=[1], term=1)
    make_leader(st)
    st.on_persisted(2)
    st.step(AppendResponse("n2", "n1", 2, True, match_index=2), 0.0)
    first = st.read_index()
    assert st.next_append("n2", 0.0, heartbeat_due=False) is not None  # round 1 leaves
    later = [st.read_index() for _ in range(10)]
    assert st.seq == 1 and not st.has_to_send("n2")  # no round per read
    st.step(AppendResponse("n2", "n1", 2, True, match_index=2, seq=1), 0.0)
    assert st.take_ready().confirmed_reads == [(first, 2)]
    assert st.seq == 2 and st.has_to_send("n2")
    request = st.next_append("n2", 0.0, heartbeat_due=False)
    assert request is not None and request.seq == 2
    st.step(AppendResponse("n2", "n1", 2, True, match_index=2, seq=2), 0.0)
    assert st.take_ready().confirmed_reads == [(r, 2) for r in later]
    assert st.seq == 2


def test_read_index_waits_for_an_entry_of_the_leaders_term() -> None:
    """Thesis §6.4 step 1: "If the leader has not yet marked an entry from its current term
    committed, it waits until it has done so." Until then it does not know the commit index."""
    st = node()
    make_leader(st)  # term 1, no-op at index 1, not yet persisted anywhere
    read = st.read_index()
    st.step(AppendResponse("n2", "n1", 1, True, match_index=0, seq=1), 0.0)
    st.step(AppendResponse("n3", "n1", 1, True, match_index=0, seq=1), 0.0)
    assert not st.take_ready().confirmed_reads  # a heartbeat quorum, but nothing committed
    st.on_persisted(1)
    assert not st.has_ready()
    st.step(AppendResponse("n2", "n1", 1, True, match_index=1, seq=1), 0.0)
    assert st.commit == 1
    assert st.take_ready().confirmed_reads == [(read, 1)]


def test_single_node_read_index() -> None:
    """Thesis §6.4: a single-node leader is its own quorum; it confirms a read as soon as its
    no-op is durable (committed), and at once afterwards."""
    st = node(n=1)
    st.on_election_timeout(0.0)
    st.take_ready()
    first = st.read_index()
    assert not st.take_ready().confirmed_reads
    st.on_persisted(1)
    assert st.take_ready().confirmed_reads == [(first, 1)]
    second = st.read_index()
    assert st.take_ready().confirmed_reads == [(second, 1)]


def test_read_index_fails_on_step_down() -> None:
    """Thesis §6.4: a leader that loses its role can no longer confirm pending reads."""
    net = Net(3)
    leader = net.elect("n1")
    read = leader.read_index()
    leader.step(VoteRequest("n2", "n1", 7, 9, 9), 0.0)
    ready = leader.take_ready()
    assert role(leader) is Role.FOLLOWER
    assert ready.failed_reads == [read]
    assert not ready.confirmed_reads


def test_read_index_fails_on_check_quorum_step_down() -> None:
    net = Net(3, config=LEASE)
    leader = net.elect("n1")
    net.isolated.add("n1")
    leader.on_election_timeout(0.0)
    read = leader.read_index()
    leader.on_election_timeout(0.0)
    assert leader.take_ready().failed_reads == [read]


def test_read_index_on_a_follower_raises() -> None:
    net = Net(3)
    net.elect("n1")
    with pytest.raises(NotLeaderError) as info:
        net["n2"].read_index()
    assert info.value.leader_id == "n1"


# =============================================================================================
# Persistence before answering (Figure 2: "updated on stable storage before responding to RPCs")
# =============================================================================================


def test_vote_grant_is_in_the_same_ready_as_the_vote() -> None:
    """Figure 2: currentTerm and votedFor are persisted before the vote is sent; the node writes
    each Ready before sending its messages, so they must travel together."""
    st = node(terms=[1], term=1)
    st.step(VoteRequest("n2", "n1", 2, 1, 1), 0.0)
    ready = st.take_ready()
    assert the(ready, VoteResponse).granted
    assert ready.hard_state == HardState(2, "n2")
    assert ready.must_sync
    assert not st.has_ready()


def test_append_success_is_in_the_same_ready_as_its_entries() -> None:
    """Figure 2: a follower acknowledges only what it has persisted (and its new term)."""
    st = node()
    st.step(append(3, 0, 0, [2, 3]), 0.0)
    ready = st.take_ready()
    assert the(ready, AppendResponse).match_index == 2
    assert ready.hard_state == HardState(3, None)
    assert [e.index for e in ready.entries] == [1, 2]
    assert ready.must_sync
    assert not st.has_ready()


def test_truncation_of_unpersisted_entries_needs_no_truncate() -> None:
    """Entries replaced before they were handed to storage are simply not written."""
    st = node()
    st.step(append(1, 0, 0, [1, 1]), 0.0)
    st.step(append(2, 0, 0, [2]), 0.0)
    ready = st.take_ready()
    assert ready.truncate_from is None
    assert [(e.term, e.index) for e in ready.entries] == [(2, 1)]


def test_leader_counts_itself_only_once_persisted() -> None:
    """Raft §10.2.1 (thesis): the leader may send entries while writing them, but counts its own
    copy toward a majority only once it is durable."""
    net = Net(3)
    net.unsynced.add("n1")
    net.isolated.add("n3")
    leader = net.elect("n1")
    assert net["n2"].log.last_index == 1  # n2 holds the no-op
    assert leader.progress["n2"].match == 1
    assert leader.commit == 0  # n2 alone is not a majority
    net.persist("n1")
    assert leader.commit == 1


def test_single_node_commits_only_once_persisted() -> None:
    st = node(n=1)
    st.on_election_timeout(0.0)
    st.take_ready()
    assert st.commit == 0
    st.on_persisted(1)
    assert st.commit == 1
    st.propose(["a"])
    assert st.commit == 1
    st.on_persisted(2)
    assert st.commit == 2


def test_on_persisted_beyond_the_log_is_clamped() -> None:
    st = node(n=1)
    st.on_election_timeout(0.0)
    st.on_persisted(50)
    assert st.commit == 1
    st.propose(["a"])
    assert st.commit == 1  # index 2 is not durable just because 50 was claimed earlier


# =============================================================================================
# Flow control
# =============================================================================================


def _replicating_leader(config: Config) -> tuple[Net, RaftState]:
    net = Net(3, config=config)
    leader = net.elect("n1")
    assert all(pr.state is ProgressState.REPLICATE for pr in leader.progress.values())
    return net, leader


def _drain(leader: RaftState, peer: NodeId, now: float = 0.0) -> list[AppendRequest]:
    out = []
    while (m := leader.next_append(peer, now, heartbeat_due=False)) is not None:
        out.append(m)
        assert len(out) < 1000
    return out


def test_next_append_respects_max_inflight_appends() -> None:
    """etcd-style pipelining: at most ``max_inflight_appends`` unanswered messages per follower;
    an answer opens the window again."""
    cfg = Config(
        pre_vote=False, check_quorum=False, max_inflight_appends=2, max_entries_per_append=1
    )
    net, leader = _replicating_leader(cfg)
    leader.propose(["a", "b", "c", "d", "e"])
    sent = _drain(leader, "n2")
    assert [[e.index for e in m.entries] for m in sent] == [[2], [3]]
    net["n2"].step(sent[0], 0.0)
    leader.step(the(net["n2"].take_ready(), AppendResponse), 0.0)
    more = _drain(leader, "n2")
    assert [[e.index for e in m.entries] for m in more] == [[4]]


def test_next_append_respects_max_inflight_bytes() -> None:
    cfg = Config(
        pre_vote=False, check_quorum=False, max_inflight_bytes=25, max_entries_per_append=1
    )
    _, leader = _replicating_leader(cfg)
    leader.propose(["x" * 10] * 6)  # len(repr(...)) == 12 each
    sent = _drain(leader, "n2")
    assert len(sent) == 3  # 0, 12, 24 bytes in flight before each: all below 25


def test_next_append_respects_max_entries_per_append() -> None:
    cfg = Config(pre_vote=False, check_quorum=False, max_entries_per_append=3)
    _, leader = _replicating_leader(cfg)
    leader.propose([f"c{i}" for i in range(7)])
    sent = _drain(leader, "n2")
    assert [[e.index for e in m.entries] for m in sent] == [[2, 3, 4], [5, 6, 7]]
    assert [m.prev_index for m in sent] == [1, 4]
    assert all(m.prev_term == 1 for m in sent)
    # The partial last batch waits behind the appends in flight; an answer sends it.
    leader.step(AppendResponse("n2", "n1", 1, True, match_index=7), 0.0)
    (last,) = _drain(leader, "n2")
    assert ([e.index for e in last.entries], last.prev_index) == ([8], 7)


def test_next_append_respects_max_bytes_per_append() -> None:
    """At most ``max_bytes_per_append`` bytes per message, but at least one entry."""
    cfg = Config(pre_vote=False, check_quorum=False, max_bytes_per_append=30)
    _, leader = _replicating_leader(cfg)
    leader.propose(["x" * 10] * 3 + ["y" * 100] + ["z" * 10])
    sent = _drain(leader, "n2")
    assert [[e.index for e in m.entries] for m in sent] == [[2, 3], [4], [5]]
    leader.step(AppendResponse("n2", "n1", 1, True, match_index=5), 0.0)
    assert [[e.index for e in m.entries] for m in _drain(leader, "n2")] == [[6]]


def test_partial_batches_coalesce_behind_an_append_in_flight() -> None:
    """A busy leader sends few large appends, not one per proposal: while an append is in
    flight, entries short of a full batch wait for its answer and then go out as one; a
    heartbeat due meanwhile carries none of them; a full batch pipelines at once."""
    cfg = Config(pre_vote=False, check_quorum=False, max_entries_per_append=4)
    _, leader = _replicating_leader(cfg)
    leader.propose(["a"])
    (first,) = _drain(leader, "n2")
    assert [e.index for e in first.entries] == [2]
    for command in ("b", "c", "d"):
        leader.propose([command])
        assert not leader.has_to_send("n2")
        assert leader.next_append("n2", 0.0, heartbeat_due=False) is None
    heartbeat = leader.next_append("n2", 0.0, heartbeat_due=True)
    assert heartbeat is not None and heartbeat.entries == ()
    leader.step(AppendResponse("n2", "n1", 1, True, match_index=2), 0.0)
    assert leader.has_to_send("n2")
    (batch,) = _drain(leader, "n2")
    assert [e.index for e in batch.entries] == [3, 4, 5]
    leader.propose(["e", "f", "g", "h"])  # a full batch while [3, 4, 5] is in flight
    assert leader.has_to_send("n2")
    (full,) = _drain(leader, "n2")
    assert [e.index for e in full.entries] == [6, 7, 8, 9]


def test_nothing_to_send_when_caught_up_and_no_heartbeat_due() -> None:
    _, leader = _replicating_leader(CFG)
    assert leader.next_append("n2", 0.0, heartbeat_due=False) is None
    heartbeat = leader.next_append("n2", 0.0, heartbeat_due=True)
    assert heartbeat is not None
    assert heartbeat.entries == ()
    assert (heartbeat.prev_index, heartbeat.prev_term, heartbeat.commit) == (1, 1, 1)


def test_heartbeat_carries_min_of_commit_and_match() -> None:
    """A heartbeat must not tell a lagging follower to commit entries it may not hold (the
    follower caps it too, Figure 2 AppendEntries 5, but the leader sends min(commit, match))."""
    net, leader = _replicating_leader(CFG)
    net.isolated.add("n3")
    leader.propose(["a", "b", "c"])
    net.stabilize()
    assert leader.commit == 4
    assert leader.progress["n3"].match == 1
    heartbeat = leader.next_append("n3", net.now, heartbeat_due=True)
    assert heartbeat is not None
    assert heartbeat.entries == ()
    assert (heartbeat.prev_index, heartbeat.commit) == (1, 1)
    up_to_date = leader.next_append("n2", net.now, heartbeat_due=True)
    assert up_to_date is not None
    assert (up_to_date.prev_index, up_to_date.commit) == (4, 4)


def test_heartbeat_goes_out_even_when_the_window_is_full() -> None:
    cfg = Config(
        pre_vote=False, check_quorum=False, max_inflight_appends=1, max_entries_per_append=1
    )
    _, leader = _replicating_leader(cfg)
    leader.propose(["a", "b"])
    assert len(_drain(leader, "n2")) == 1
    heartbeat = leader.next_append("n2", 0.01, heartbeat_due=True)
    assert heartbeat is not None
    assert heartbeat.entries == ()


def test_stalled_window_falls_back_to_probe() -> None:
    """Messages can be lost: when the oldest in-flight message goes unanswered for two heartbeat
    intervals, the leader returns to probing from the follower's match index."""
    net, leader = _replicating_leader(CFG)
    net.isolated.add("n3")
    leader.propose(["a", "b", "c"])
    net.stabilize()  # the entries sent to n3 were lost
    pr = leader.progress["n3"]
    assert state(pr) is ProgressState.REPLICATE
    assert pr.next == 5
    net.now += 2 * CFG.heartbeat_s
    message = leader.next_append("n3", net.now, heartbeat_due=True)
    assert state(pr) is ProgressState.PROBE
    assert message is not None
    assert message.prev_index == 1
    assert [e.index for e in message.entries] == [2, 3, 4]
    assert leader.next_append("n3", net.now, heartbeat_due=False) is None  # one probe at a time
    net.isolated.clear()
    net.queue.append(message)
    net.stabilize()
    assert same_logs(leader, net["n3"])
    assert state(pr) is ProgressState.REPLICATE
    assert pr.match == 4


def test_not_stalled_before_two_heartbeats() -> None:
    net, leader = _replicating_leader(CFG)
    net.isolated.add("n3")
    leader.propose(["a"])
    net.stabilize()
    message = leader.next_append("n3", net.now + 1.5 * CFG.heartbeat_s, heartbeat_due=True)
    assert message is not None
    assert message.entries == ()  # just a heartbeat: the window is still trusted
    assert leader.progress["n3"].state is ProgressState.REPLICATE


def test_log_replication_end_to_end_with_many_entries() -> None:
    """§5.3 as a whole: with small batches and windows, every follower converges and commits."""
    cfg = Config(
        pre_vote=False, check_quorum=False, max_entries_per_append=4, max_inflight_appends=2
    )
    net = Net(5, config=cfg)
    leader = net.elect("n1")
    for i in range(10):
        leader.propose([f"{i}.{j}" for j in range(5)])
    net.stabilize()
    net.heartbeat("n1")
    assert leader.commit == 51
    assert same_logs(*net.nodes.values())
    assert all(net[i].commit == 51 for i in net.ids)
