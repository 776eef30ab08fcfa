"""Scenario tests: whole simulated clusters driven through the situations the Raft paper describes.

The scenarios live in ``test_election.py``, ``test_replication.py`` and ``test_partitions.py``;
this module holds what they share, plus the hand-delivered RPC test. Every scenario runs on
``autojump_clock`` (virtual time: a minute of cluster time costs well under a second) under one
seed, ``SEED`` unless ``pytest --seed N`` replays another, and every assertion message names it.
Each is bounded by :func:`deadline`, a :func:`trio.fail_after` on virtual time. The cluster's
live :class:`~trio_raft.testing.InvariantChecker` runs throughout, so every scenario also checks
Raft's five safety properties at every step.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager

import pytest
import trio
import trio.testing

from trio_raft import (
    AppendRequest,
    AppendResponse,
    Config,
    Entry,
    EntryKind,
    HardState,
    LeadershipLostError,
    Message,
    Node,
    NodeClosedError,
    NotLeaderError,
    ProposalDroppedError,
    Role,
    Status,
    StoredState,
    VoteRequest,
    VoteResponse,
)
from trio_raft.testing import KVStateMachine, SimulatedCluster, Verdict, open_simulated_cluster

SEED = 1
"""The seed of every scenario unless ``pytest --seed N`` says otherwise."""

ELECTION_S_MIN = Config().election_timeout_s_min
"""Lower end of the default randomized election timeout (also the CheckQuorum period)."""
ELECTION_S_MAX = Config().election_timeout_s_max
"""Upper end of the default randomized election timeout."""


def scenario_seed(config: pytest.Config) -> int:
    """``SEED``, or the seed given with ``pytest --seed N`` (to replay a failure)."""
    option = config.getoption("--seed")
    return SEED if option is None else int(option)


@contextmanager
def deadline(virtual_s: float, seed: int) -> Iterator[None]:
    """:func:`trio.fail_after` on virtual time, failing with the seed that replays the run."""
    try:
        with trio.fail_after(virtual_s):
            yield
    except trio.TooSlowError as exc:
        raise AssertionError(
            f"scenario still running after {virtual_s} virtual seconds (seed={seed})"
        ) from exc


# -- observation helpers ------------------------------------------------------------------------


def log(cluster: SimulatedCluster, node_id: str) -> list[Entry]:
    """The whole log of ``node_id`` as its storage holds it (synced or not)."""
    storage = cluster.storages[node_id]
    return storage.entries(1, storage.last_index() + 1)


def commands(entries: Sequence[Entry]) -> list[object]:
    """The user commands in ``entries``, in log order (no-ops left out)."""
    return [e.command for e in entries if e.kind is EntryKind.COMMAND]


def kv(cluster: SimulatedCluster, node_id: str) -> dict[str, str]:
    """The key-value state machine of ``node_id`` as a dict."""
    sm = cluster.state_machines[node_id]
    assert isinstance(sm, (KVStateMachine, RecordingKV))
    return sm.as_dict()


class RecordingKV:
    """A :class:`KVStateMachine` that also logs each command it applies in a shared list."""

    def __init__(self, applied: list[object]) -> None:
        self._kv = KVStateMachine()
        self._applied = applied

    def apply(self, command: object) -> object:
        self._applied.append(command)
        return self._kv.apply(command)

    def query(self, query: object) -> object:
        return self._kv.query(query)

    def as_dict(self) -> dict[str, str]:
        return self._kv.as_dict()


def leaders(cluster: SimulatedCluster) -> list[Node]:
    """Every running node that believes it leads (of any term)."""
    return [n for n in cluster.nodes.values() if n.status.role is Role.LEADER]


async def wait_all(
    cluster: SimulatedCluster, predicate: Callable[[Status], bool], ids: Sequence[str] = ()
) -> None:
    """Wait until ``predicate`` holds on every node of ``ids`` (default: every running node)."""
    for node_id in ids or list(cluster.nodes):
        await cluster.node(node_id).wait_status(predicate)


async def converge(cluster: SimulatedCluster) -> None:
    """Commit a barrier entry through the current leader, then wait until every running node
    applied the same commit index (so everything acknowledged before is applied everywhere)."""
    await cluster.propose(("put", "barrier", "x"))
    await cluster.wait_converged()


def assert_replicas_equal(cluster: SimulatedCluster, seed: int) -> None:
    """Every running node has the same log, commit index and key-value state."""
    ids = sorted(cluster.nodes)
    first = ids[0]
    for node_id in ids[1:]:
        assert log(cluster, node_id) == log(cluster, first), f"logs differ: seed={seed}"
        assert kv(cluster, node_id) == kv(cluster, first), f"state machines differ: seed={seed}"
        assert (
            cluster.node(node_id).status.commit_index == cluster.node(first).status.commit_index
        ), f"commit indexes differ: seed={seed}"


class MessageLog:
    """Records every message the nodes send from now on (as :attr:`MemoryNetwork.hook`)."""

    def __init__(self, cluster: SimulatedCluster) -> None:
        self.sent: list[Message] = []
        cluster.network.hook = self._hook

    def _hook(self, message: Message) -> Verdict:
        self.sent.append(message)
        return Verdict.DELIVER

    def count(self, kind: type[Message], src: str | None = None, dst: str | None = None) -> int:
        """How many messages of ``kind`` were sent (from ``src``, to ``dst`` if given)."""
        return sum(
            1
            for m in self.sent
            if isinstance(m, kind) and src in (None, m.src) and dst in (None, m.dst)
        )


class Appends:
    """Unique-suffix ``append`` writes and what each client learned of its outcome.

    A write is *acknowledged* (a result came back), *refused* (an error that guarantees it was
    not applied: :class:`NotLeaderError`, :class:`ProposalDroppedError`, :class:`NodeClosedError`)
    or *unknown* (:class:`LeadershipLostError`, or the client gave up waiting).
    """

    def __init__(self) -> None:
        self.acked: dict[str, tuple[str, object]] = {}
        self.unknown: dict[str, str] = {}
        self.refused: dict[str, str] = {}

    async def append(
        self, propose: Callable[[object], Awaitable[object]], key: str, suffix: str
    ) -> None:
        self.unknown[suffix] = key  # until the outcome is known (also if we are cancelled)
        try:
            result = await propose(("append", key, suffix))
        except (NotLeaderError, ProposalDroppedError, NodeClosedError):
            self.refused[suffix] = self.unknown.pop(suffix)
        except LeadershipLostError:
            pass
        else:
            self.acked[suffix] = (self.unknown.pop(suffix), result)

    def check(self, state: dict[str, str], seed: int) -> None:
        """Every acknowledged suffix is in its key's value exactly once and its result is the
        prefix of that value ending with it; unknown ones appear at most once; refused ones and
        suffixes nobody wrote never appear."""
        found = Counter(
            (k, s) for k, value in state.items() for s in re.findall(r"<[^<>]+>", value)
        )
        for suffix, (key, result) in self.acked.items():
            assert found[(key, suffix)] == 1, f"acked {suffix} x{found[(key, suffix)]}: seed={seed}"
            assert isinstance(result, str) and result.endswith(suffix), f"seed={seed}"
            assert state[key].startswith(result), f"{suffix}: result not a prefix: seed={seed}"
        for suffix, key in self.unknown.items():
            assert found[(key, suffix)] <= 1, f"{suffix} applied twice: seed={seed}"
        for suffix, key in self.refused.items():
            assert found[(key, suffix)] == 0, f"refused {suffix} was applied: seed={seed}"
        written = {(k, s) for s, (k, _) in self.acked.items()} | {
            (k, s) for s, k in self.unknown.items()
        }
        assert set(found) <= written, f"invented writes {set(found) - written}: seed={seed}"


# -- hand-delivered RPCs ------------------------------------------------------------------------


async def test_deliver_vote_and_append_rejections(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """Hand-made RPCs to one node: the receiving rules of Raft §5.2-§5.4, answer by answer."""
    n2_log = tuple(Entry(t, i, ("put", "k", f"{t}/{i}")) for i, t in enumerate([1, 1, 2, 2, 2], 1))
    initial = {"n2": StoredState(HardState(3, None), n2_log)}
    with deadline(10, seed):
        async with open_simulated_cluster(
            3, seed=seed, initial_state=initial, start=False
        ) as cluster:
            await cluster.start("n2")  # alone: n1 and n3 exist only as the senders below

            async def deliver(message: Message) -> list[Message]:
                # settle_s: a reply that follows a term, vote or log change waits for the sync
                return await cluster.deliver(message, settle_s=0.01)

            # prev_index 4 holds term 2 here, not 3: reject, hint the start of the term-2 run
            (reply,) = await deliver(AppendRequest("n1", "n2", 4, 4, 3, (), 0))
            assert reply == AppendResponse(
                "n2", "n1", 4, False, rejected_index=4, conflict_term=2, conflict_index=3,
                last_index=5,
            )  # fmt: skip
            # prev_index beyond the log: conflict term 0, next index to try is last + 1
            (reply,) = await deliver(AppendRequest("n1", "n2", 4, 8, 4, (), 0, seq=7))
            assert reply == AppendResponse(
                "n2", "n1", 4, False, rejected_index=8, conflict_term=0, conflict_index=6,
                last_index=5, seq=7,
            )  # fmt: skip
            # a matching prev: the conflicting suffix is replaced
            new = Entry(4, 3, ("put", "k", "4/3"))
            (reply,) = await deliver(AppendRequest("n1", "n2", 4, 2, 1, (new,), 0))
            assert reply == AppendResponse("n2", "n1", 4, True, match_index=3, last_index=3)
            assert log(cluster, "n2") == [*n2_log[:2], new], f"seed={seed}"

            # a candidate whose log ends in an older term is refused, whatever its length
            stale = VoteRequest("n3", "n2", 4, last_log_index=9, last_log_term=2)
            assert await deliver(stale) == [VoteResponse("n2", "n3", 4, False)]
            status = cluster.node("n2").status
            assert (status.term, status.leader_id, status.role) == (4, "n1", Role.FOLLOWER), (
                f"seed={seed}"
            )
            # within the leader's lease a higher-term request is ignored outright (CheckQuorum)
            disruptive = VoteRequest("n3", "n2", 9, last_log_index=3, last_log_term=4)
            assert await deliver(disruptive) == [], f"seed={seed}"
            assert cluster.node("n2").status.term == 4, f"seed={seed}"
            await trio.sleep(1)  # the lease expires: the same request now wins the vote
            assert await deliver(disruptive) == [VoteResponse("n2", "n3", 9, True)]
            assert cluster.storages["n2"].durable_state().hard_state == HardState(9, "n3")
