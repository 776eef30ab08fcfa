"""SimulatedCluster's growing set of nodes: add_node (join mode), stop, remove_node, members, and
the bootstrap configuration of the initial nodes on every (re)start."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.sim.test_scenarios import converge, deadline, kv
from trio_raft import Membership, Role
from trio_raft.testing import SimulatedCluster, open_simulated_cluster

INITIAL = Membership({"n1", "n2", "n3"})


def node_ids(cluster: SimulatedCluster) -> tuple[str, ...]:
    """``cluster.node_ids``, read through a call so type checkers do not keep it narrowed."""
    return cluster.node_ids


async def test_add_node_starts_a_fresh_node_in_join_mode(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """A node added later gets fresh storage and no configuration: it never campaigns, the
    cluster's configuration and convergence ignore it, and it restarts in join mode; the
    initial nodes keep the initial ids as their bootstrap configuration."""
    with deadline(60, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            leader = await cluster.wait_leader()
            await converge(cluster)
            n4 = await cluster.add_node("n4")
            assert cluster.node_ids == ("n1", "n2", "n3", "n4")
            assert cluster.initial_ids == ("n1", "n2", "n3")
            assert n4.membership is None
            assert cluster.storages["n4"].durable_state().entries == ()
            await trio.sleep(10 * cluster.config.election_timeout_s_max)
            assert n4.status.term == 0, f"a joining node campaigned; seed={seed}"
            assert n4.status.role is Role.FOLLOWER
            assert cluster.leader() is leader
            assert cluster.members == INITIAL
            await converge(cluster)  # n4 is no member: nothing waits for it
            await cluster.wait_membership_settled()  # nor for its configuration
            assert n4.status.last_applied == 0

            n4 = await cluster.restart("n4")
            assert n4.membership is None
            n1 = await cluster.restart("n1")
            assert n1.membership == INITIAL, "the initial ids, never the grown tuple"
            await converge(cluster)
            assert cluster.members == INITIAL


async def test_initial_nodes_bootstrap_from_the_initial_ids(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """Nodes added before the initial ones start are not in their bootstrap configuration."""
    with deadline(60, seed):
        async with open_simulated_cluster(3, seed=seed, start=False) as cluster:
            assert cluster.members is None  # nothing runs, nobody leads
            await cluster.add_node("n4")
            for nid in cluster.initial_ids:
                node = await cluster.start(nid)
                assert node.membership == INITIAL
            leader = await cluster.wait_leader()
            assert leader.id in INITIAL.voters
            await converge(cluster)
            assert cluster.members == INITIAL


async def test_add_node_refuses_known_ids_and_unlisted_static_starts(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    with deadline(60, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            await cluster.wait_leader()
            with pytest.raises(ValueError, match="already a node"):
                await cluster.add_node("n2")
            with pytest.raises(ValueError, match="not in the committed configuration"):
                await cluster.add_node("n5", join=False)
            assert "n5" not in cluster.node_ids
            with pytest.raises(ValueError, match="not a node"):
                await cluster.remove_node("n9")


async def test_remove_node_forgets_it_and_the_id_may_come_back_fresh(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """remove_node crashes the node and drops its storage; the others go on. The id may come
    back as a fresh node: empty storage, join mode. (Only safe once the configuration no longer
    lists the id: a leader trusts what a member acknowledged, and a fresh node reusing a voter's
    id could vote twice in one term; the membership tests do it that way.)"""
    with deadline(60, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            await cluster.wait_leader()
            await cluster.propose(("put", "a", "1"))
            await cluster.remove_node("n3")
            assert cluster.node_ids == ("n1", "n2")
            assert "n3" not in cluster.storages and "n3" not in cluster.nodes
            await cluster.propose(("put", "b", "2"))  # n1 and n2 are a majority
            await converge(cluster)
            assert cluster.members == INITIAL  # the configuration did not change

            n3 = await cluster.add_node("n3")
            assert node_ids(cluster) == ("n1", "n2", "n3")
            assert cluster.storages["n3"].durable_state().entries == ()
            assert n3.membership is None
            assert n3.status.term == 0


async def test_stop_leaves_the_block_and_the_node_restarts(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """stop shuts a node down through its own exit (the leader too); the others elect a new
    leader, and the stopped node restarts from what it synced and catches up."""
    with deadline(60, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            leader = await cluster.wait_leader()
            await cluster.propose(("put", "a", "1"))
            await cluster.stop(leader.id)
            assert leader.id not in cluster.nodes
            await cluster.stop(leader.id)  # a stopped node is left alone
            successor = await cluster.wait_leader()
            assert successor.id != leader.id
            await cluster.propose(("put", "b", "2"))
            await cluster.start(leader.id)
            await converge(cluster)
            assert kv(cluster, leader.id) == {"a": "1", "b": "2", "barrier": "x"}


async def _grown_run(seed: int) -> str:
    async with open_simulated_cluster(3, seed=seed) as cluster:
        await cluster.wait_leader()
        await cluster.add_node("n4")
        await cluster.propose(("put", "a", "1"))
        await cluster.remove_node("n4")
        await cluster.add_node("n4")
        await cluster.stop("n1")
        await cluster.restart("n4")
        await cluster.start("n1")
        await cluster.add_node("n5")
        await converge(cluster)
        return cluster.checker.digest


def test_a_grown_cluster_replays_identically(seed: int) -> None:
    """Added, removed, stopped and re-added nodes keep a seed's run deterministic."""
    digests = {
        trio.run(_grown_run, seed, clock=trio.testing.MockClock(autojump_threshold=0))
        for _ in range(2)
    }
    assert len(digests) == 1
