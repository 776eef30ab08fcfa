"""Figure 3's safety properties under a hostile network, on the pure core.

A seeded :class:`random.Random` picks every action: deliver any pending message (so messages are
reordered), duplicate or drop it, fire an election timeout, propose, send heartbeats, move time,
or restart a node from what it persisted. After every action the test checks Election Safety,
Log Matching, Leader Completeness and State Machine Safety (a committed index never changes).
A failure names its seed; the run is reproducible from it.
"""

from __future__ import annotations

import random

import pytest

from trio_raft._config import Config
from trio_raft._core._state import RaftState
from trio_raft._messages import Message
from trio_raft._types import Entry, HardState, NodeId, Role, StoredState

CONFIGS = {
    "plain": Config(pre_vote=False, check_quorum=False),
    "prevote": Config(pre_vote=True, check_quorum=False),
    "checkquorum": Config(pre_vote=True, check_quorum=True),
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

    def collect(self) -> None:
        for st in self.nodes.values():
            if st.has_ready():
                ready = st.take_ready()
                st.on_persisted(st.log.last_index)  # every Ready is synced before sending
                self.pool.extend(ready.messages)
            if st.role is Role.LEADER:
                for peer in st.peers:
                    due = self.rng.random() < 0.2
                    while (m := st.next_append(peer, self.now, heartbeat_due=due)) is not None:
                        self.pool.append(m)
                        due = False

    def restart(self, node_id: NodeId) -> None:
        st = self.nodes[node_id]
        stored = StoredState(
            HardState(st.term, st.voted_for), tuple(st.log.slice(1, st.log.last_index + 1))
        )
        self.nodes[node_id] = RaftState(node_id, self.ids, self.config, stored)

    def act(self) -> None:
        rng = self.rng
        r = rng.random()
        if r < 0.85 and self.pool:
            m = self.pool.pop(rng.randrange(len(self.pool)))
            if rng.random() < 0.05:
                return  # lost
            if rng.random() < 0.05:
                self.pool.append(m)  # duplicated
            self.nodes[m.dst].step(m, self.now)
        elif r < 0.87:
            self.nodes[rng.choice(self.ids)].on_election_timeout(self.now)
        elif r < 0.93:
            for st in self.nodes.values():
                if st.role is Role.LEADER and st.log.last_index - st.commit < 50:
                    st.propose([f"v{rng.randrange(10**6)}"])
        elif r < 0.995:
            self.now += rng.choice([0.01, 0.05, 0.2, 0.5])
        else:
            self.restart(rng.choice(self.ids))
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


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("seed", range(8))
def test_safety_under_a_hostile_network(config: str, seed: int) -> None:
    chaos = Chaos(seed, CONFIGS[config], n=3 + 2 * (seed % 2))
    for _ in range(STEPS):
        chaos.act()
        chaos.check()
    assert chaos.leader_of_term, "no leader was ever elected: the test exercised nothing"
    assert chaos.committed, "nothing ever committed: the test exercised nothing"
