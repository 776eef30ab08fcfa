"""Scenarios of leader election: first election, re-election, no quorum, PreVote vs plain Raft."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.sim.test_scenarios import (
    ELECTION_S_MAX,
    ELECTION_S_MIN,
    MessageLog,
    assert_replicas_equal,
    converge,
    deadline,
    kv,
    leaders,
    wait_all,
)
from trio_raft import AppendRequest, Role, VoteRequest
from trio_raft.testing import open_simulated_cluster


@pytest.mark.parametrize("size", [3, 5])
async def test_initial_election_elects_one_leader_in_term_1(
    autojump_clock: trio.testing.MockClock, seed: int, size: int
) -> None:
    """A healthy start elects exactly one leader within a few election timeouts, every node
    follows it, and PreVote keeps the term at 1; five quiet seconds later nothing changed."""
    with deadline(30, seed):
        start = trio.current_time()
        async with open_simulated_cluster(size, seed=seed) as cluster:
            leader = await cluster.wait_leader()
            elected_s = trio.current_time() - start
            assert elected_s < 3 * ELECTION_S_MAX, f"election took {elected_s} s: seed={seed}"
            await wait_all(cluster, lambda s: s.leader_id == leader.id)

            def check_one_leader_in_term_1() -> None:
                assert [n.id for n in leaders(cluster)] == [leader.id], f"seed={seed}"
                statuses = [n.status for n in cluster.nodes.values()]
                assert {(s.leader_id, s.term) for s in statuses} == {(leader.id, 1)}, (
                    f"PreVote: a healthy start raises the term exactly once; seed={seed}"
                )

            check_one_leader_in_term_1()
            await trio.sleep(5)  # and it stays that way
            check_one_leader_in_term_1()
            durable_terms = {s.durable_state().hard_state.term for s in cluster.storages.values()}
            assert durable_terms == {1}, f"seed={seed}"


async def test_reelection_after_leader_crash_and_rejoin(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """The leader crashes: the others elect a new one in a higher term; the old leader restarts
    as a follower of the new one and catches up to an identical state machine."""
    with deadline(60, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            old = await cluster.wait_leader()
            old_id, old_term = old.id, old.status.term
            for i in range(5):
                await cluster.propose(("put", f"before{i}", str(i)))
            await cluster.crash(old_id)
            crashed_at = trio.current_time()
            rest = [n for n in cluster.node_ids if n != old_id]
            new = await cluster.wait_leader(among=rest)
            took_s = trio.current_time() - crashed_at
            assert new.status.term > old_term, f"seed={seed}"
            assert took_s < 4 * ELECTION_S_MAX, f"re-election took {took_s} s: seed={seed}"
            for i in range(5):
                assert await cluster.propose(("append", "after", str(i))) == "01234"[: i + 1]

            rejoined = await cluster.start(old_id)
            status = await rejoined.wait_status(
                lambda s: s.leader_id == new.id and s.last_applied == new.status.commit_index
            )
            assert status.role is Role.FOLLOWER and status.term == new.status.term, f"seed={seed}"
            await converge(cluster)
            assert_replicas_equal(cluster, seed)
            state = kv(cluster, old_id)
            assert state["after"] == "01234", f"seed={seed}"
            assert all(state[f"before{i}"] == str(i) for i in range(5)), f"seed={seed}"
            assert [n.id for n in leaders(cluster)] == [new.id], f"seed={seed}"


@pytest.mark.parametrize("leader_survives", [False, True])
async def test_no_leader_without_a_majority(
    autojump_clock: trio.testing.MockClock, seed: int, leader_survives: bool
) -> None:
    """3 of 5 nodes crash. A surviving leader steps down (CheckQuorum); then for 10 s nobody
    leads and, thanks to PreVote, nobody's term grows. One node back makes a majority again."""
    with deadline(60, seed):
        async with open_simulated_cluster(5, seed=seed) as cluster:
            leader = await cluster.wait_leader()
            await converge(cluster)
            followers = [n for n in cluster.node_ids if n != leader.id]
            survivors = [leader.id, followers[0]] if leader_survives else followers[:2]
            down = [n for n in cluster.node_ids if n not in survivors]
            for node_id in down:
                await cluster.crash(node_id)
            if leader_survives:
                crashed_at = trio.current_time()
                await leader.wait_status(lambda s: s.role is not Role.LEADER)
                took_s = trio.current_time() - crashed_at
                assert took_s < 2 * ELECTION_S_MIN + 0.05, (
                    f"stepped down after {took_s} s: seed={seed}"
                )
            terms = {n: cluster.node(n).status.term for n in survivors}
            messages = MessageLog(cluster)

            await trio.sleep(10)
            # A node leads only after a real (non-PreVote) election and then sends appends.
            campaigns = [m for m in messages.sent if isinstance(m, VoteRequest) and not m.pre_vote]
            assert campaigns == [], f"a minority campaigned: seed={seed}"
            assert messages.count(AppendRequest) == 0, f"a minority led: seed={seed}"
            assert messages.count(VoteRequest) > 0, f"survivors never tried PreVote: seed={seed}"
            assert leaders(cluster) == [], f"seed={seed}"
            assert {n: cluster.node(n).status.term for n in survivors} == terms, (
                f"PreVote: terms must not grow without a majority; seed={seed}"
            )

            await cluster.start(down[-1])
            new = await cluster.wait_leader()
            assert new.id in [*survivors, down[-1]], f"seed={seed}"
            assert new.status.term > max(terms.values()), f"seed={seed}"
            await converge(cluster)
            assert_replicas_equal(cluster, seed)


async def test_plain_raft_works_but_a_rejoining_node_raises_the_term(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """The paper's algorithm without PreVote/CheckQuorum elects and replicates, but a node that
    was cut off campaigns on its own and its inflated term deposes the leader when it returns."""
    with deadline(60, seed):
        async with open_simulated_cluster(
            3, seed=seed, pre_vote=False, check_quorum=False
        ) as cluster:
            leader = await cluster.wait_leader()
            for i in range(5):
                assert await cluster.propose(("append", "k", str(i))) == "01234"[: i + 1]
            await converge(cluster)
            assert_replicas_equal(cluster, seed)

            term = leader.status.term
            loner = next(n for n in cluster.node_ids if n != leader.id)
            cluster.isolate(loner)
            await trio.sleep(10)
            inflated = cluster.node(loner).status.term
            assert inflated > term + 5, f"an isolated node campaigns repeatedly: seed={seed}"
            assert leader.status.role is Role.LEADER and leader.status.term == term, f"seed={seed}"

            cluster.heal()
            await wait_all(cluster, lambda s: s.term >= inflated and s.leader_id is not None)
            assert leader.status.term >= inflated, f"the old leader was deposed: seed={seed}"
            await converge(cluster)
            assert_replicas_equal(cluster, seed)
            assert kv(cluster, loner)["k"] == "01234", f"seed={seed}"


async def test_prevote_rejoining_node_does_not_disrupt(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """With PreVote and CheckQuorum (the defaults) the same rejoining node changes nothing."""
    with deadline(60, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            leader = await cluster.wait_leader()
            await converge(cluster)
            term = leader.status.term
            loner = next(n for n in cluster.node_ids if n != leader.id)
            cluster.isolate(loner)
            await trio.sleep(5)
            for i in range(5):  # the majority carries on meanwhile
                assert await leader.propose(("append", "k", str(i))) == "01234"[: i + 1]
            await trio.sleep(5)
            assert cluster.node(loner).status.term == term, f"PreVote: no inflation; seed={seed}"

            cluster.heal()
            await cluster.node(loner).wait_status(
                lambda s: s.leader_id == leader.id and s.last_applied == leader.status.commit_index
            )
            await trio.sleep(5)
            assert [n.id for n in leaders(cluster)] == [leader.id], f"seed={seed}"
            assert {n.status.term for n in cluster.nodes.values()} == {term}, f"seed={seed}"
            assert_replicas_equal(cluster, seed)
            assert kv(cluster, loner)["k"] == "01234", f"seed={seed}"
