"""Every message :class:`RaftState` can emit survives the wire format unchanged.

The core and the codec once disagreed: a node refusing a stale-term AppendEntries answered
``rejected_index=-1``, which the codec refuses, so the receiving transport dropped the whole
peer connection. This property drives a small cluster of :class:`RaftState` objects with
arbitrary interleavings of timeouts, proposals, replication, lost, duplicated and reordered
messages, and checks ``decode(encode(m)) == m`` for every message they send. Some runs start
from a log holding a configuration entry (kind 2), so that AppendEntries carry memberships too.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from trio_raft._codec import decode, encode
from trio_raft._config import Config
from trio_raft._core._state import RaftState
from trio_raft._messages import (
    AppendRequest,
    AppendResponse,
    Message,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from trio_raft._types import Entry, EntryKind, HardState, Membership, NodeId, Role, StoredState

from .test_state import role

CLUSTER = "wire-round-trip"
IDS: tuple[NodeId, ...] = ("n1", "n2", "n3")
ACTIONS = ("timeout", "deliver", "deliver", "deliver", "duplicate", "drop", "propose", "append")
MEMBERSHIP = Membership(IDS, (), (), {i: {"peer": f"ws://{i}:1/raft"} for i in IDS})
CONFIG_LOG = StoredState(HardState(1), (Entry(1, 1, MEMBERSHIP, EntryKind.CONFIG),))
"""A log of one configuration entry, as a cluster's first leader writes it."""
CONFIGS = st.builds(
    Config,
    pre_vote=st.booleans(),
    check_quorum=st.booleans(),
    max_entries_per_append=st.integers(1, 4),
    max_inflight_appends=st.integers(1, 3),
)


def round_trip(message: Message) -> Message:
    return decode(encode(message, cluster_id=CLUSTER), cluster_id=CLUSTER, max_bytes=1 << 20)


class Cluster:
    """Three :class:`RaftState` nodes and the messages between them, driven by hand."""

    def __init__(self, config: Config, stored: dict[NodeId, StoredState] | None = None) -> None:
        stored = stored or {}
        self.nodes = {i: RaftState(i, IDS, config, stored.get(i, StoredState())) for i in IDS}
        self.pool: list[Message] = []
        self.emitted: list[Message] = []
        self.now = 0.0

    def collect(self) -> None:
        """Drain every node's :class:`Ready`; writes count as durable at once."""
        for state in self.nodes.values():
            if state.has_ready():
                ready = state.take_ready()
                self.emitted.extend(ready.messages)
                self.pool.extend(ready.messages)
                state.on_persisted(state.log.last_index)

    def emit(self, message: Message | None) -> None:
        if message is not None:
            self.emitted.append(message)
            self.pool.append(message)

    def leaders(self) -> list[RaftState]:
        return [s for s in self.nodes.values() if s.role is Role.LEADER]


@given(config=CONFIGS, data=st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_message_raft_state_emits_round_trips(config: Config, data: st.DataObject) -> None:
    # Any subset of the nodes starts with the configuration entry (the others lack it).
    with_config = data.draw(st.sets(st.sampled_from(IDS)), label="nodes with a CONFIG entry")
    cluster = Cluster(config, dict.fromkeys(with_config, CONFIG_LOG))
    for step in range(data.draw(st.integers(10, 120), label="steps")):
        cluster.now += data.draw(st.sampled_from([0.0, 0.01, 0.1, 1.0]))
        action = data.draw(st.sampled_from(ACTIONS))
        if action == "timeout":
            cluster.nodes[data.draw(st.sampled_from(IDS))].on_election_timeout(cluster.now)
        elif action in ("deliver", "duplicate", "drop") and cluster.pool:
            i = data.draw(st.integers(0, len(cluster.pool) - 1))  # any order: reordering
            message = cluster.pool[i] if action == "duplicate" else cluster.pool.pop(i)
            if action != "drop":
                cluster.nodes[message.dst].step(message, cluster.now)
        elif action == "propose" and (leaders := cluster.leaders()):
            leader = data.draw(st.sampled_from(leaders))
            leader.propose([f"c{step}"] * data.draw(st.integers(1, 3)))
        elif action == "append" and (leaders := cluster.leaders()):
            leader = data.draw(st.sampled_from(leaders))
            peer = data.draw(st.sampled_from(sorted(leader.replica_ids)))
            cluster.emit(leader.next_append(peer, cluster.now, data.draw(st.booleans())))
        cluster.collect()
    for message in cluster.emitted:
        assert round_trip(message) == message, message


def test_a_stale_leader_is_told_the_new_term_in_a_valid_frame() -> None:
    """The answer to an AppendEntries of an older term survives the codec and still makes the
    stale leader step down (Raft §5.1: a server with a stale term reverts to follower)."""
    config = Config(pre_vote=False, check_quorum=False)
    old = RaftState("n1", IDS, config, StoredState())
    old.on_election_timeout(0.0)
    old.step(VoteResponse("n2", "n1", old.term, True), 0.0)
    assert old.role is Role.LEADER and old.term == 1
    follower = RaftState("n2", IDS, config, StoredState())
    follower.on_election_timeout(0.0)
    follower.on_election_timeout(0.0)  # n2 is at term 2 while n1 still leads term 1
    follower.take_ready()

    heartbeat = old.next_append("n2", 0.0, True)
    assert isinstance(heartbeat, AppendRequest) and heartbeat.term < follower.term
    follower.step(round_trip(heartbeat), 0.0)
    [reply] = follower.take_ready().messages
    assert isinstance(reply, AppendResponse) and not reply.success
    decoded = round_trip(reply)
    assert decoded == reply
    old.step(decoded, 0.0)
    assert role(old) is Role.FOLLOWER
    assert old.term == follower.term


def test_configuration_entries_are_replicated_through_the_codec() -> None:
    """A leader whose log holds a configuration entry sends it in a valid frame, and the
    follower appends the very same membership."""
    config = Config(pre_vote=False, check_quorum=False)
    leader = RaftState("n1", IDS, config, CONFIG_LOG)
    leader.on_election_timeout(0.0)
    leader.step(round_trip(VoteResponse("n2", "n1", leader.term, True)), 0.0)
    assert leader.role is Role.LEADER
    leader.take_ready()
    follower = RaftState("n2", IDS, config, StoredState())
    for _ in range(4):  # a probe, a rejection and a back-up, then the entries
        request = leader.next_append("n2", 0.0, False)
        assert isinstance(request, AppendRequest)
        decoded = round_trip(request)
        assert decoded == request
        follower.step(decoded, 0.0)
        follower.on_persisted(follower.log.last_index)
        for reply in follower.take_ready().messages:
            leader.step(round_trip(reply), 0.0)
        if follower.log.last_index >= 1:
            break
    entry = follower.log.entry(1)
    assert entry.kind is EntryKind.CONFIG and entry.command == MEMBERSHIP


def test_timeout_now_through_the_codec_starts_a_transfer_election() -> None:
    """A TimeoutNow from the leader the receiver follows makes it campaign at once, and its
    vote requests carry the transfer flag through the codec; a stale one is ignored."""
    node = RaftState("n2", IDS, Config(), StoredState())
    node.step(round_trip(TimeoutNow("n3", "n2", 2)), 0.0)
    assert (node.term, node.role, node.leader_id) == (3, Role.CANDIDATE, None)  # 2 + 1
    requests = [round_trip(m) for m in node.take_ready().messages]
    assert requests and all(isinstance(m, VoteRequest) and m.transfer for m in requests)
    node.step(round_trip(TimeoutNow("n1", "n2", 1)), 0.0)  # a stale one: ignored
    assert node.term == 3 and not node.take_ready().messages
