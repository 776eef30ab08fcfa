"""Targeted membership simulations: real changes driven through the :class:`~trio_raft.Node` API
in a simulated cluster, on virtual time, under one seed (replay with ``pytest --seed N``).

The invariant checker watches every run (only voters lead, vote and commit quorums of the
configuration in force, one change at a time, configuration agreement), so these tests assert
the outcomes the scenario is about and leave safety to it.
"""

from __future__ import annotations

import contextlib
import math
import random

import pytest
import trio
import trio.testing

from tests.sim.test_scenarios import converge, deadline, kv
from trio_raft import (
    Config,
    EntryKind,
    LeadershipLostError,
    LeadershipTransferError,
    LearnerNotCaughtUpError,
    Membership,
    Message,
    Node,
    NodeClosedError,
    NotLeaderError,
    Role,
    VoteRequest,
)
from trio_raft.testing import (
    KVClients,
    SimulatedCluster,
    Verdict,
    check_linearizable,
    open_simulated_cluster,
)

THREE = Membership({"n1", "n2", "n3"})


async def add_learner(cluster: SimulatedCluster, node_id: str) -> Membership:
    """Start ``node_id`` in join mode and add it as a learner through the leader."""
    await cluster.add_node(node_id)
    leader = await cluster.wait_leader()
    return await leader.add_learner(node_id)


async def write(cluster: SimulatedCluster, n: int, prefix: str = "k") -> None:
    for i in range(n):
        await cluster.propose(("put", f"{prefix}{i}", str(i)))


def counted_replicas(cluster: SimulatedCluster) -> set[str]:
    """The peers the leader's commit rule may count: its configuration's voters."""
    leader = cluster.leader()
    assert leader is not None and leader.membership is not None
    return set(leader.membership.all_voters)


# -- learners (slice 3) --------------------------------------------------------------------------


@pytest.mark.parametrize("behind_snapshot", [False, True], ids=["by_log", "by_snapshot"])
async def test_learner_catches_up_and_is_never_counted(
    autojump_clock: trio.testing.MockClock, seed: int, behind_snapshot: bool
) -> None:
    """A learner added in join mode receives the log (or, behind a compaction point, a snapshot
    carrying the configuration), applies everything, is never counted, and can be promoted."""
    config = Config(snapshot_entries=20, snapshot_keep_entries=2) if behind_snapshot else None
    with deadline(120, seed):
        async with open_simulated_cluster(3, seed=seed, config=config) as cluster:
            await cluster.wait_leader()
            await write(cluster, 60)
            await converge(cluster)
            m = await add_learner(cluster, "n4")
            assert m == Membership(THREE.voters, {"n4"})
            await converge(cluster)
            n4 = cluster.node("n4")
            assert n4.membership == m
            assert kv(cluster, "n4") == kv(cluster, "n1")
            stored = cluster.storages["n4"].durable_state()
            snapshot = cluster.storages["n4"]._durable.snapshot
            if behind_snapshot:
                # Its log starts after an installed snapshot, which carried the configuration.
                assert snapshot is not None, f"n4 installed no snapshot; seed={seed}"
                assert snapshot[0].membership is not None
                assert THREE.voters <= snapshot[0].membership.voters
            else:
                assert snapshot is None
                assert stored.entries[0].index == 1
            # Never counted: with two of three voters down, nothing commits although the
            # leader and the learner hold the entry (a majority of four replicas).
            leader = cluster.leader()
            assert leader is not None
            assert "n4" not in counted_replicas(cluster)
            down = [v for v in sorted(THREE.voters) if v != leader.id]
            for v in down:
                await cluster.crash(v)
            commit = leader.status.commit_index
            with (
                trio.move_on_after(5),
                contextlib.suppress(LeadershipLostError, NotLeaderError),
            ):
                await leader.propose(("put", "stuck", "1"))
            assert leader.status.commit_index == commit, f"a learner was counted; seed={seed}"
            assert n4.status.role is not Role.LEADER and n4.status.term <= leader.status.term
            for v in down:
                await cluster.start(v)
            leader = await cluster.wait_leader()
            m = await leader.promote("n4")
            assert m == Membership(THREE.voters | {"n4"})
            await converge(cluster)
            await cluster.wait_membership_settled()
            assert cluster.node("n4").membership == m


async def test_catch_up_wait_survives_a_shortfall_below_clock_resolution(
    autojump_clock: trio.testing.MockClock, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (found by test_chaos_membership seed 2): a learner short of the catch-up
    period by less than the clock's resolution (``now + short == now``) made ``promote`` spin
    without ever letting virtual time advance."""
    with deadline(60, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            await cluster.wait_leader()
            await add_learner(cluster, "n4")
            await trio.sleep(10)  # where the clock's resolution is coarser than need's
            leader = cluster.leader()
            assert leader is not None
            st = leader._state
            need = cluster.config.election_timeout_s_max
            # Caught up since a moment that leaves it short of ``need`` by less than the
            # clock's resolution now (as seed 2 had: now - since == 0.5999999999999996).
            now0 = trio.current_time()
            since = now0 - need
            while now0 - since >= need:
                since = math.nextafter(since, math.inf)
            assert now0 + (need - (now0 - since)) == now0
            calls = 0

            def caught_up_for(peer: str, now: float) -> float:
                nonlocal calls
                calls += 1
                assert calls < 10_000, "promote spins on a sub-resolution shortfall"
                return max(0.0, now - since) if peer == "n4" else need

            monkeypatch.setattr(st, "caught_up_for", caught_up_for)
            m = await leader.promote("n4")
            assert m.voters == THREE.voters | {"n4"}


async def test_catch_up_refused_for_a_partitioned_learner(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """Promoting a learner cut off from the leader fails with LearnerNotCaughtUpError after
    the catch-up timeout, and nothing is appended: it stays a learner."""
    with deadline(60, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            await cluster.wait_leader()
            await cluster.add_node("n4")
            cluster.isolate("n4")
            leader = await cluster.wait_leader()
            await leader.add_learner("n4")
            await write(cluster, 5)
            leader = await cluster.wait_leader()
            before = leader.status.last_log_index
            with pytest.raises(LearnerNotCaughtUpError) as info:
                await leader.promote("n4", catch_up_timeout_s=3.0)
            assert info.value.node_id == "n4"
            assert info.value.waited_s >= 3.0
            assert leader.status.last_log_index == before, "a refused promotion appended"
            assert leader.membership == Membership(THREE.voters, {"n4"})
            cluster.heal()
            assert (await leader.promote("n4")).voters == THREE.voters | {"n4"}


# -- voter changes (slice 5) ---------------------------------------------------------------------


async def run_with_clients(
    cluster: SimulatedCluster, seed: int, body: object, *, clients: int = 3
) -> KVClients:
    """Run ``body()`` while KV clients write; returns the clients (their history is checked
    linearizable here)."""
    workload = KVClients(cluster, random.Random(seed))
    done = trio.Event()

    async def clients_until_done() -> None:
        while not done.is_set():
            await workload.run(clients, 1.0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(clients_until_done)
        await body()  # type: ignore[operator]
        done.set()
    await converge(cluster)
    result = check_linearizable(workload.history.operations())
    assert result.ok is True, f"seed={seed}: {result.explanation}"
    assert workload.acknowledged > 0, f"seed={seed}: no write acknowledged"
    return workload


async def test_grow_three_to_five_and_back_under_load(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """3 → 5 → 3 while clients write: every change commits, the history is linearizable and
    the replicas of the final configuration agree."""
    with deadline(300, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            await cluster.wait_leader()

            async def body() -> None:
                for nid in ("n4", "n5"):
                    await add_learner(cluster, nid)
                    leader = await cluster.wait_leader()
                    await leader.promote(nid)
                leader = await cluster.wait_leader()
                assert leader.membership == Membership({"n1", "n2", "n3", "n4", "n5"})
                others = sorted(v for v in ("n1", "n2", "n3") if v != leader.id)
                m = await leader.change_membership(voters={leader.id, "n4", "n5"})
                assert m == Membership({leader.id, "n4", "n5"})
                assert not set(others) & m.members

            await run_with_clients(cluster, seed, body)
            await cluster.wait_membership_settled()
            members = cluster.members
            assert members is not None and len(members.voters) == 3
            states = [kv(cluster, n) for n in sorted(members.members)]
            assert all(s == states[0] for s in states)


async def test_replace_the_leader(autojump_clock: trio.testing.MockClock, seed: int) -> None:
    """Add a fresh node, promote it, remove the leader: the leader hands over (TimeoutNow) and
    a remaining voter leads; the removed leader never leads again."""
    with deadline(120, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            old = await cluster.wait_leader()

            async def body() -> None:
                await add_learner(cluster, "n4")
                await old.promote("n4")
                m = await old.remove(old.id)
                assert old.id not in m.members

            await run_with_clients(cluster, seed, body)
            new = await cluster.wait_leader()
            assert new.id != old.id
            assert old.status.role is not Role.LEADER
            await cluster.wait_membership_settled()
            assert cluster.members == Membership((THREE.voters - {old.id}) | {"n4"})


async def test_remove_the_leader_hands_over_without_an_election_timeout(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """A leader removing itself steps down once the change commits and the next leader is
    elected by TimeoutNow: a vote request marked ``transfer`` is sent, and the next leader is
    in place well before an election timeout."""
    with deadline(60, seed):
        async with open_simulated_cluster(5, seed=seed) as cluster:
            old = await cluster.wait_leader()
            await converge(cluster)
            transfers: list[VoteRequest] = []

            def spy(m: Message) -> Verdict:
                if isinstance(m, VoteRequest) and m.transfer:
                    transfers.append(m)
                return Verdict.DELIVER

            cluster.network.hook = spy
            term = old.status.term
            m = await old.remove(old.id)
            started = trio.current_time()
            new = await cluster.wait_leader(among=m.voters)
            took = trio.current_time() - started
            assert transfers, f"no TimeoutNow-driven vote; seed={seed}"
            assert took < cluster.config.election_timeout_s_min, (took, seed)
            assert new.status.term == term + 1, f"more than one election; seed={seed}"
            assert old.status.role is not Role.LEADER


async def test_crash_of_the_leader_between_joint_and_leave(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """The leader commits the joint configuration and crashes before appending the leave
    entry: the next leader (a voter of both sets) leaves the joint configuration itself."""
    with deadline(120, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            leader = await cluster.wait_leader()
            await add_learner(cluster, "n4")
            await converge(cluster)
            final = Membership(THREE.voters | {"n4"})

            def cut_leader_after_joint(m: Message) -> Verdict:
                # Once the leader appended the leave entry, nothing it sends arrives.
                if m.src == leader.id and leader.membership == final:
                    return Verdict.DROP
                return Verdict.DELIVER

            cluster.network.hook = cut_leader_after_joint
            outcome: list[BaseException] = []

            async def promote() -> None:
                try:
                    await leader.promote("n4")
                except (LeadershipLostError, NodeClosedError) as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(promote)
                await leader.wait_status(lambda s: s.membership == final)
                joint = leader._state.membership_at(leader.status.commit_index)
                assert joint is not None and joint.is_joint, f"joint not committed; seed={seed}"
                await cluster.crash(leader.id)
            assert len(outcome) == 1, f"promote returned across the crash; seed={seed}"
            cluster.network.hook = None
            new = await cluster.wait_leader()
            assert new.id != leader.id
            await cluster.wait_membership_settled()
            assert cluster.members == Membership(THREE.voters | {"n4"})
            entries = cluster.storages[new.id].entries(1, new.status.last_log_index + 1)
            configs = [e.command for e in entries if e.kind is EntryKind.CONFIG]
            assert configs[-1] == Membership(THREE.voters | {"n4"})
            assert any(isinstance(c, Membership) and c.is_joint for c in configs)
            await cluster.start(leader.id)
            await converge(cluster)


async def test_partition_during_joint(autojump_clock: trio.testing.MockClock, seed: int) -> None:
    """A change from {n1,n2,n3} to {n1,n4,n5}... is cut by a partition that leaves the new
    set's majority on one side and the old set's on the other while joint: nothing commits
    without both majorities, and after healing the cluster settles on one configuration."""
    with deadline(300, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            leader = await cluster.wait_leader()
            for nid in ("n4", "n5"):
                await add_learner(cluster, nid)
            await converge(cluster)
            old_others = sorted(v for v in THREE.voters if v != leader.id)
            target = {leader.id, "n4", "n5"}

            async def cut_when_joint() -> None:
                await leader.wait_status(
                    lambda s: s.membership is not None and s.membership.is_joint
                )
                # The leader with the new voters on one side, the old voters on the other.
                cluster.partition([leader.id, "n4", "n5"], old_others)
                await trio.sleep(5)
                cluster.heal()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cut_when_joint)
                with (
                    trio.move_on_after(30),
                    contextlib.suppress(LeadershipLostError, NotLeaderError),
                ):
                    await leader.change_membership(voters=target)
            await cluster.wait_membership_settled()
            members = cluster.members
            assert members is not None and members.voters in (THREE.voters, frozenset(target))
            await converge(cluster)


# -- removed nodes -------------------------------------------------------------------------------


@pytest.mark.parametrize("pre_vote", [True, False])
@pytest.mark.parametrize("check_quorum", [True, False])
async def test_removed_node_campaigning_changes_nothing(
    autojump_clock: trio.testing.MockClock, seed: int, pre_vote: bool, check_quorum: bool
) -> None:
    """A voter removed while it hears nothing (so it never learns of its removal) campaigns
    forever at higher terms, its messages reaching everyone: no member's term changes and the
    leader stays."""
    with deadline(120, seed):
        async with open_simulated_cluster(
            4, seed=seed, pre_vote=pre_vote, check_quorum=check_quorum
        ) as cluster:
            leader = await cluster.wait_leader()
            await converge(cluster)
            victim = sorted(n for n in cluster.node_ids if n != leader.id)[0]
            campaigns: list[VoteRequest] = []

            def deaf(msg: Message) -> Verdict:
                if isinstance(msg, VoteRequest) and msg.src == victim:
                    campaigns.append(msg)
                return Verdict.DROP if msg.dst == victim else Verdict.DELIVER

            cluster.network.hook = deaf
            m = await leader.remove(victim)
            assert victim not in m.members
            await converge(cluster)
            await cluster.wait_membership_settled()
            assert cluster.leader() is leader
            term = leader.status.term
            start = len(campaigns)
            await trio.sleep(20 * cluster.config.election_timeout_s_max)
            assert len(campaigns) > start, f"the removed node did not campaign; seed={seed}"
            if not pre_vote:
                assert cluster.node(victim).status.term > term  # at ever higher terms
            assert cluster.leader() is leader, f"seed={seed}"
            for nid in m.members:
                assert cluster.node(nid).status.term == term, f"{nid}: seed={seed}"
            await converge(cluster)


# -- leadership transfer (slice 6) ---------------------------------------------------------------


async def test_twenty_transfers_under_load(
    autojump_clock: trio.testing.MockClock, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 transfers while clients write: each succeeds, and no proposal fails with
    LeadershipLostError (a graceful transfer refuses new proposals with NotLeaderError and
    commits those already appended)."""
    with deadline(300, seed):
        async with open_simulated_cluster(5, seed=seed) as cluster:
            await cluster.wait_leader()
            rng = random.Random(seed)
            moved: list[str] = []
            lost: list[object] = []
            propose = Node.propose

            async def spy_propose(self: Node, command: object, **kwargs: bool) -> object:
                try:
                    return await propose(self, command, **kwargs)
                except LeadershipLostError:
                    lost.append(command)
                    raise

            monkeypatch.setattr(Node, "propose", spy_propose)

            async def body() -> None:
                for i in range(20):
                    leader = await cluster.wait_leader()
                    status = await leader.wait_status(
                        lambda s: s.transfer_target is None and s.membership_committed
                    )
                    assert status.role is Role.LEADER
                    target = rng.choice([None, *sorted(n for n in cluster.nodes if n != leader.id)])
                    new = await leader.transfer_leadership(target)
                    assert new != leader.id, f"transfer {i} did not move; seed={seed}"
                    if target is not None:
                        assert new == target, f"transfer {i}; seed={seed}"
                    moved.append(new)
                    await trio.sleep(0.2)

            await run_with_clients(cluster, seed, body)
            assert len(moved) == 20
            assert not lost, f"proposals lost during graceful transfers: {lost}; seed={seed}"


@pytest.mark.parametrize("kind", ["slow", "dead"])
async def test_transfer_to_a_slow_or_dead_target_times_out_and_resumes(
    autojump_clock: trio.testing.MockClock, seed: int, kind: str
) -> None:
    """A target that never catches up (its links drop everything) or is down: the transfer
    fails with LeadershipTransferError (moved=False) within an election timeout or so, the
    leader still leads, and it accepts proposals again."""
    with deadline(60, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            leader = await cluster.wait_leader()
            await converge(cluster)
            target = sorted(n for n in cluster.node_ids if n != leader.id)[0]
            if kind == "dead":
                await cluster.crash(target)
            else:
                cluster.isolate(target)
            await write(cluster, 3)
            term = leader.status.term
            with pytest.raises(LeadershipTransferError) as info:
                await leader.transfer_leadership(target)
            assert info.value.moved is False
            assert leader.status.role is Role.LEADER and leader.status.term == term
            assert leader.status.transfer_target is None
            await leader.propose(("put", "after", "1"))
            assert cluster.leader() is leader


@pytest.mark.parametrize("graceful", [True, False])
async def test_leaving_the_block_transfers_but_a_crash_does_not(
    autojump_clock: trio.testing.MockClock, seed: int, graceful: bool
) -> None:
    """SimulatedCluster.stop on the leader (leaving open_node gracefully) hands leadership to
    another voter before the node stops: the next leader is there at once, in the next term,
    with no election timeout. A crash leaves the others to time out."""
    with deadline(60, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            leader = await cluster.wait_leader()
            await converge(cluster)
            term = leader.status.term
            stopped_at = trio.current_time()
            if graceful:
                await cluster.stop(leader.id)
            else:
                await cluster.crash(leader.id)
            others = [n for n in cluster.node_ids if n != leader.id]
            new = await cluster.wait_leader(among=others)
            took = trio.current_time() - stopped_at
            if graceful:
                assert took < cluster.config.election_timeout_s_min, (took, seed)
                assert new.status.term == term + 1
            else:
                assert took >= cluster.config.election_timeout_s_min, (took, seed)
            await converge(cluster)
