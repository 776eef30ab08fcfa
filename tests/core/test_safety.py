"""Figure 3's safety properties under a hostile network, on the pure core.

A seeded :class:`random.Random` picks every action: deliver any pending message (so messages are
reordered), duplicate or drop it, cut a minority off, fire an election timeout, propose, send
heartbeats, move time, or restart a node (usually the leader) from what it persisted. After every
action the test checks Election Safety, Log Matching, Leader Completeness and State Machine Safety
(a committed index never changes). A failure names its seed; the run is reproducible from it.
"""

from __future__ import annotations

import random

import pytest

from trio_raft._config import Config
from trio_raft._core._state import RaftState
from trio_raft._messages import Message
from trio_raft._types import Entry, HardState, NodeId, Role, StoredState

CONFIGS = {
    # One entry per message and a small window make partial replication (Figure 8) likely.
    "plain": Config(pre_vote=False, check_quorum=False, max_entries_per_append=1),
    "prevote": Config(
        pre_vote=True, check_quorum=False, max_entries_per_append=1, max_inflight_appends=1
    ),
    "checkquorum": Config(pre_vote=True, check_quorum=True, max_entries_per_append=2),
}
STEPS = 1500


class Chaos:
    def __init__(self, seed: int, config: Config, n: int) -> None:
        self.rng = random.Random(seed)
        self.config = config
        self.ids = [f"n{i}" for i in range(1, n + 1)]
        self.nodes = {i: RaftState(i, self.ids, config, StoredState()) for i in self.ids}
        self.now = 0.0
        self.pool: list[Message] = []
        self.leader_of_term: dict[int, NodeId] = {}
        self.committed: list[Entry] = []
        """Every entry any node has seen committed, in index order."""
        self.committed_by: list[int] = []
        """For each of them, the lowest term in which some node saw it committed."""
        self.was_leader: set[tuple[NodeId, int]] = set()
        self.heartbeat_due = False
        self.next_heartbeat = 0.0
        self.deadline = {i: self._election_deadline(Role.FOLLOWER) for i in self.ids}
        """When each node's election timer fires, drawn as the node would draw it."""
        self.cut: set[NodeId] = set()
        """Nodes currently partitioned from the rest: messages to or from them are lost."""

    def _election_deadline(self, role: Role) -> float:
        cfg = self.config
        if role is Role.LEADER:
            return self.now + cfg.election_timeout_s_min  # the CheckQuorum period
        return self.now + self.rng.uniform(cfg.election_timeout_s_min, cfg.election_timeout_s_max)

    def collect(self) -> None:
        for node_id, st in self.nodes.items():
            if st.has_ready():
                ready = st.take_ready()
                st.on_persisted(st.log.last_index)  # every Ready is synced before sending
                self.pool.extend(ready.messages)
                if ready.reset_election_timer:
                    self.deadline[node_id] = self._election_deadline(st.role)
            if st.role is Role.LEADER:
                for peer in sorted(st.replica_ids):
                    due = self.heartbeat_due
                    while (m := st.next_append(peer, self.now, heartbeat_due=due)) is not None:
                        self.pool.append(m)
                        due = False
        self.heartbeat_due = False

    def restart(self, node_id: NodeId) -> None:
        st = self.nodes[node_id]
        stored = StoredState(
            HardState(st.term, st.voted_for), tuple(st.log.slice(1, st.log.last_index + 1))
        )
        self.nodes[node_id] = RaftState(node_id, self.ids, self.config, stored)
        self.deadline[node_id] = self._election_deadline(Role.FOLLOWER)

    def act(self) -> None:
        rng = self.rng
        r = rng.random()
        if r < 0.80 and self.pool:
            m = self.pool.pop(rng.randrange(len(self.pool)))
            if rng.random() < 0.05 or m.src in self.cut or m.dst in self.cut:
                return  # lost
            if rng.random() < 0.05:
                self.pool.append(m)  # duplicated
            self.nodes[m.dst].step(m, self.now)
        elif r < 0.82:
            # A spurious timeout (a long GC pause, a skewed timer) to stir up elections.
            self.nodes[rng.choice(self.ids)].on_election_timeout(self.now)
        elif r < 0.84:
            self.cut = set(rng.sample(self.ids, rng.randrange(len(self.ids) // 2 + 1)))
        elif r < 0.89:
            for st in self.nodes.values():
                if st.role is Role.LEADER and st.log.last_index - st.commit < 50:
                    st.propose([f"v{rng.randrange(10**6)}"])
        elif r < 0.985:
            self.now += rng.choice([0.005, 0.01, 0.02])
            if self.now >= self.next_heartbeat:
                self.heartbeat_due = True
                self.next_heartbeat = self.now + self.config.heartbeat_s
            for node_id, st in self.nodes.items():
                if self.deadline[node_id] <= self.now:
                    self.deadline[node_id] = float("inf")  # until its Ready says otherwise
                    st.on_election_timeout(self.now)
        else:
            # A crash: a leader more often than not, since that is when logs diverge.
            leaders = [i for i, st in self.nodes.items() if st.role is Role.LEADER]
            self.restart(rng.choice(leaders if leaders and rng.random() < 0.7 else self.ids))
        self.collect()

    def check(self) -> None:
        for node_id, st in self.nodes.items():
            if st.role is Role.LEADER:
                # Election Safety: at most one leader per term.
                assert self.leader_of_term.setdefault(st.term, node_id) == node_id, st.term
                if (node_id, st.term) not in self.was_leader:
                    self.was_leader.add((node_id, st.term))
                    # Leader Completeness: entries committed in earlier terms are in its log.
                    for index, entry in enumerate(self.committed, start=1):
                        if self.committed_by[index - 1] < st.term:
                            assert st.log.term(index) == entry.term, (node_id, index)
                            assert st.log.entry(index) == entry, (node_id, index)
            # State Machine Safety: a committed index holds one entry forever.
            assert st.commit <= st.log.last_index
            prefix = st.log.slice(1, st.commit + 1)
            known = len(self.committed)
            assert prefix[:known] == self.committed[: len(prefix)], node_id
            self.committed.extend(prefix[known:])
            self.committed_by.extend([st.term] * (len(prefix) - known))
            for i in range(min(known, len(prefix))):
                self.committed_by[i] = min(self.committed_by[i], st.term)
        # Log Matching: same index and term => identical prefixes.
        states = list(self.nodes.values())
        for i, a in enumerate(states):
            for b in states[i + 1 :]:
                top = min(a.log.last_index, b.log.last_index)
                while top and a.log.term(top) != b.log.term(top):
                    top -= 1
                assert a.log.slice(1, top + 1) == b.log.slice(1, top + 1), (a.id, b.id, top)


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("seed", range(6))
def test_safety_under_a_hostile_network(config: str, n: int, seed: int) -> None:
    chaos = Chaos(seed, CONFIGS[config], n)
    for _ in range(STEPS):
        chaos.act()
        chaos.check()
    assert chaos.leader_of_term, "no leader was ever elected: the test exercised nothing"
    assert chaos.committed, "nothing ever committed: the test exercised nothing"
