"""Exactly-once writes through leader failures, in the deterministic simulator.

A client proposes ``cas(k, b"0", b"1")`` with session ``S`` and seq 2 on the leader, the leader
fails (crash or isolation) at a seeded moment, and the client retries the very same command on
the new leader until it gets an answer. Whatever happened to the first attempt (applied before
the crash, appended to the followers and committed by the next leader, or lost) the retry must
answer ``True``, the first outcome (a second application would answer ``False``), and every
replica must count exactly the writes that were made (:attr:`KVStateMachine.revision`).

Replay one seed with ``pytest tests/kv/test_exactly_once.py --seed N``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio
import trio.testing

from trio_raft import (
    AppendResponse,
    Config,
    LeadershipLostError,
    Message,
    NodeClosedError,
    NotLeaderError,
    ProposalDroppedError,
)
from trio_raft.kv import KVStateMachine
from trio_raft.testing import SimulatedCluster, Verdict, open_simulated_cluster

S = b"\x01" * 16
CAS = ("cas", S, 2, "k", b"0", b"1")
RETRYABLE = (NotLeaderError, LeadershipLostError, ProposalDroppedError, NodeClosedError)


@contextmanager
def deadline(virtual_s: float, seed: int) -> Iterator[None]:
    try:
        with trio.fail_after(virtual_s):
            yield
    except trio.TooSlowError as exc:
        raise AssertionError(f"still running after {virtual_s} virtual s (seed={seed})") from exc


async def propose(cluster: SimulatedCluster, command: object, among: set[str]) -> object:
    """The client's retry loop: the same command, on whichever of ``among`` leads, until it is
    answered (a RETRYABLE error says nothing was applied, or that we cannot know)."""
    while True:
        leader = await cluster.wait_leader(among=among)
        try:
            return await leader.propose(command)
        except RETRYABLE:
            await trio.sleep(0.02)


def kv_machines(cluster: SimulatedCluster) -> dict[str, KVStateMachine]:
    machines = {}
    for node_id, sm in cluster.state_machines.items():
        assert isinstance(sm, KVStateMachine)
        machines[node_id] = sm
    return machines


def copies_in_log(cluster: SimulatedCluster, node_id: str, command: tuple[object, ...]) -> int:
    entries = cluster.storages[node_id].durable_state().entries
    commands = [e.command for e in entries if isinstance(e.command, (list, tuple))]
    return sum(1 for c in commands if list(c) == list(command))


async def check_exactly_once(cluster: SimulatedCluster, seed: int) -> None:
    """After the retried cas, one more write; then every replica must agree on 3 writes."""
    everyone = set(cluster.node_ids)
    assert await propose(cluster, ("cas", S, 3, "k", b"1", b"2"), everyone) is True, seed
    await cluster.wait_converged()
    machines = kv_machines(cluster)
    assert set(machines) == everyone
    for node_id, sm in machines.items():
        assert sm.as_dict() == {"k": b"2"}, f"{node_id}: seed={seed}"
        assert sm.revision == 3, f"{node_id} applied a write twice or lost one: seed={seed}"
        assert sm.sessions() == {S: 3}, f"{node_id}: seed={seed}"


async def first_attempt(leader_propose: object, outcome: list[str], timeout_s: float) -> None:
    """Propose CAS once, as a client whose answer may never come; record what it saw."""
    assert callable(leader_propose)
    with trio.move_on_after(timeout_s):  # the client's own timeout
        try:
            result = await leader_propose(CAS)
        except RETRYABLE as exc:
            outcome.append(type(exc).__name__)
        else:
            assert result is True
            outcome.append("applied")
        return
    outcome.append("timeout")


@pytest.mark.seeds(12)
async def test_retry_across_leader_failure_applies_once(
    autojump_clock: trio.testing.MockClock, sim_seed: int
) -> None:
    rng = random.Random(f"kv-exactly-once/{sim_seed}")
    mode = rng.choice(["crash", "isolate"])
    with deadline(60, sim_seed):
        async with open_simulated_cluster(
            3, seed=sim_seed, state_machine_factory=KVStateMachine
        ) as cluster:
            everyone = set(cluster.node_ids)
            assert await propose(cluster, ("open", S), everyone) is None
            assert await propose(cluster, ("put", S, 1, "k", b"0"), everyone) is None
            old = await cluster.wait_leader()
            outcome: list[str] = []
            async with trio.open_nursery() as nursery:
                timeout_s = rng.choice([0.1, 1.0])  # 0.1: gives up before the leader steps down
                nursery.start_soon(first_attempt, old.propose, outcome, timeout_s)
                # Fault injection at a seeded moment (not synchronization): before the append,
                # while it replicates, after it commits.
                await trio.sleep(rng.choice([0.0, 0.001, 0.003, 0.006, 0.01]))
                if mode == "crash":
                    await cluster.crash(old.id)
                else:
                    cluster.isolate(old.id)
            survivors = everyone - {old.id}
            # The answer may have been lost: the client retries, always, with the same seq.
            assert await propose(cluster, CAS, survivors) is True, f"{outcome}: seed={sim_seed}"
            if mode == "crash":
                await cluster.start(old.id)
            else:
                cluster.heal()
            await check_exactly_once(cluster, sim_seed)


async def test_committed_by_next_leader_then_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The hard case, forced: the followers store the cas but the leader never hears it, so it
    cannot answer; it crashes; the next leader commits that entry, and the client's retry puts
    a second copy in the log. Both copies are applied in log order; the second must be a no-op
    that answers like the first."""
    seed = 4
    with deadline(60, seed):
        async with open_simulated_cluster(
            3, seed=seed, state_machine_factory=KVStateMachine
        ) as cluster:
            everyone = set(cluster.node_ids)
            await propose(cluster, ("open", S), everyone)
            await propose(cluster, ("put", S, 1, "k", b"0"), everyone)
            await cluster.wait_converged()
            old = await cluster.wait_leader()
            target = old.status.last_log_index + 1

            def deafen_leader(message: Message) -> Verdict:
                if isinstance(message, AppendResponse) and message.dst == old.id:
                    return Verdict.DROP
                return Verdict.DELIVER

            cluster.network.hook = deafen_leader
            outcome: list[str] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(first_attempt, old.propose, outcome, 1.0)
                for node_id in everyone - {old.id}:
                    await cluster.node(node_id).wait_status(lambda s: s.last_log_index >= target)
                await cluster.crash(old.id)
            assert outcome == ["LeadershipLostError"]
            cluster.network.hook = None
            survivors = everyone - {old.id}
            assert await propose(cluster, CAS, survivors) is True
            new = await cluster.wait_leader(among=survivors)
            assert copies_in_log(cluster, new.id, CAS) == 2  # the retry did reach the log
            await cluster.start(old.id)
            await check_exactly_once(cluster, seed)


async def test_sessions_travel_in_snapshots(autojump_clock: trio.testing.MockClock) -> None:
    """With a tiny snapshot threshold the log is compacted; a follower that was down catches up
    from a snapshot (InstallSnapshot), and its restored session table still turns a retry of
    the last write into a no-op once it is among the leaders' candidates."""
    seed = 9
    config = Config(snapshot_entries=4, snapshot_keep_entries=0)
    with deadline(60, seed):
        async with open_simulated_cluster(
            3, seed=seed, state_machine_factory=KVStateMachine, config=config
        ) as cluster:
            everyone = set(cluster.node_ids)
            leader = await cluster.wait_leader()
            behind = next(n for n in cluster.node_ids if n != leader.id)
            await cluster.crash(behind)
            await propose(cluster, ("open", S), everyone)
            for seq in range(1, 21):
                await propose(cluster, ("put", S, seq, f"k{seq % 3}", b"%d" % seq), everyone)
            last = ("delete", S, 21, "k0")
            assert await propose(cluster, last, everyone) is True
            cluster.network.reset_stats()
            await cluster.start(behind)
            await cluster.wait_converged()
            installs = cluster.network.stats().by_type.get("SnapshotRequest")
            assert installs is not None and installs.delivered > 0  # caught up by a snapshot
            snapshots = {b"".join(sm.snapshot()) for sm in kv_machines(cluster).values()}
            assert len(snapshots) == 1, "replicas differ after the snapshot install"
            # Make the leader's successor come from the other two, then retry the last write.
            await cluster.crash(leader.id)
            survivors = everyone - {leader.id}
            assert await propose(cluster, last, survivors) is True  # first outcome, not False
            await cluster.start(leader.id)
            await cluster.wait_converged()
            for node_id, sm in kv_machines(cluster).items():
                assert sm.revision == 21, node_id
                assert sm.sessions() == {S: 21}, node_id
                assert sm.as_dict() == {"k1": b"19", "k2": b"20"}, node_id
