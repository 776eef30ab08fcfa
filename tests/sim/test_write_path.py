"""The leader's write path (design.rst, "The write path"): a leader sends its new entries while
its own write and sync proceed, and counts its own copy only once synced (thesis §10.2.1)."""

from __future__ import annotations

import contextlib
import functools
import random
from typing import cast

import pytest
import trio
import trio.testing

from trio_raft import AppendRequest, Node, RaftError, Role, Status
from trio_raft._core._ready import Ready
from trio_raft._node import _check_command
from trio_raft._types import Entry, HardState
from trio_raft._write import after_leader_writes
from trio_raft.testing import KVStateMachine, open_simulated_cluster


async def test_followers_get_a_leaders_entry_before_its_own_sync_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with open_simulated_cluster(3, seed=7) as cluster:
            leader = await cluster.wait_leader()
            await cluster.wait_converged()
            storage = cluster.storages[leader.id]
            storage.stall(writes=False)  # the leader's syncs hang, its writes do not
            syncs = storage.syncs
            # Committed on the two followers' synced copies while the leader's sync hangs.
            assert await leader.propose(("put", "k", "v")) is None
            index = leader.status.commit_index
            assert storage.syncs == syncs
            assert storage.durable_state().entries[-1].index < index
            for nid in cluster.node_ids:
                if nid != leader.id:
                    assert cluster.storages[nid].durable_state().entries[-1].index >= index
            assert leader.status.role is Role.LEADER
            storage.unstall()
            await cluster.wait_converged()
            assert storage.durable_state().entries[-1].index >= index


@pytest.mark.seeds(20)
async def test_leader_crash_before_its_own_sync_loses_nothing_acknowledged(
    autojump_clock: trio.testing.MockClock, sim_seed: int
) -> None:
    """Clients write through the leader; it crashes at a random moment, its syncs hung or
    slow, so followers hold entries it never synced. Every acknowledged write survives."""
    rng = random.Random(sim_seed)
    with trio.fail_after(60):
        async with open_simulated_cluster(3, seed=sim_seed) as cluster:
            leader = await cluster.wait_leader()
            await cluster.wait_converged()
            storage = cluster.storages[leader.id]
            if rng.random() < 0.5:
                storage.stall(writes=False)
            acked: dict[str, str] = {}

            async def client(c: int) -> None:
                for j in range(1000):
                    try:
                        await leader.propose(("put", f"c{c}-{j}", str(j)))
                    except RaftError:
                        return
                    acked[f"c{c}-{j}"] = str(j)

            async with trio.open_nursery() as nursery:
                for c in range(4):
                    nursery.start_soon(client, c)
                await trio.sleep(rng.uniform(0.015, 0.05))
                await cluster.crash(leader.id)
            storage.unstall()
            await cluster.start(leader.id)
            await cluster.wait_leader()
            await cluster.wait_converged()
            assert acked, f"seed={sim_seed}: nothing was acknowledged before the crash"
            for nid, sm in cluster.state_machines.items():
                state = cast(KVStateMachine, sm).as_dict()
                lost = {k: v for k, v in acked.items() if state.get(k) != v}
                assert not lost, f"seed={sim_seed}: {nid} lost acknowledged writes {lost}"


def test_a_step_downs_write_takes_the_queued_leader_entries_first() -> None:
    """The dispatcher's write after a step-down carries the leader entries still queued for
    the writer, minus those its truncation removed (they never reached the storage)."""
    queued = [Entry(2, 5, "a"), Entry(2, 6, "b"), Entry(2, 7, "c")]
    new = [Entry(3, 6, "x")]
    hard = HardState(3, None)
    merged = after_leader_writes(queued, Ready(hard_state=hard, truncate_from=6, entries=new))
    assert (merged.hard_state, merged.truncate_from, merged.entries) == (
        hard,
        None,
        queued[:1] + new,
    )
    merged = after_leader_writes(queued, Ready(truncate_from=5, entries=[Entry(3, 5, "y")]))
    assert (merged.truncate_from, merged.entries) == (None, [Entry(3, 5, "y")])
    merged = after_leader_writes(queued, Ready(truncate_from=3, entries=[Entry(3, 3, "z")]))
    assert (merged.truncate_from, merged.entries) == (3, [Entry(3, 3, "z")])
    merged = after_leader_writes(queued, Ready(hard_state=hard))
    assert (merged.hard_state, merged.truncate_from, merged.entries) == (hard, None, queued)


@pytest.mark.seeds(10)
async def test_deposed_leader_with_a_write_in_flight_is_overwritten_in_order(
    autojump_clock: trio.testing.MockClock, sim_seed: int
) -> None:
    """An isolated leader's sync hangs with some of its new entries written and more queued
    for its writer; the new leader's AppendEntries makes it step down and truncate them all
    while that write is in flight. Its storage must end up equal to the new leader's log."""
    with trio.fail_after(60):
        async with open_simulated_cluster(3, seed=sim_seed, check_quorum=False) as cluster:
            old = await cluster.wait_leader()
            await cluster.wait_converged()
            term, commit = old.status.term, old.status.commit_index
            cluster.isolate(old.id)
            cluster.storages[old.id].stall(writes=False)
            async with trio.open_nursery() as nursery:
                for batch in range(2):  # the first is in flight, the second queued
                    for i in range(3):
                        nursery.start_soon(_try_propose, old, ("put", "lost", f"{batch}{i}"))
                    await old.wait_status(functools.partial(_log_reaches, commit + 3 * batch + 3))
                assert old._writer.pending, f"seed={sim_seed}"
                others = [n for n in cluster.node_ids if n != old.id]
                new = await cluster.wait_leader(among=others)
                for i in range(3):
                    await new.propose(("put", "won", str(i)))
                log = new._state.log
                entries = tuple(log.slice(commit + 1, log.last_index + 1))
                new_term = new.status.term
                request = AppendRequest(new.id, old.id, new_term, commit, term, entries, commit, 0)
                cluster.network.inject(request)
                await trio.sleep(0.1)
                # Stepped down and truncated; its write waits behind the one in flight.
                assert old._state.log.entry(commit + 1).term > term, f"seed={sim_seed}"
                cluster.storages[old.id].unstall()
            cluster.heal()
            await cluster.wait_converged()
            storage = cluster.storages[old.id]
            log = new._state.log
            assert storage.entries(1, storage.last_index() + 1) == list(
                log.slice(1, log.last_index + 1)
            ), f"seed={sim_seed}"
            state = cast(KVStateMachine, cluster.state_machines[old.id]).as_dict()
            assert "lost" not in state and state["won"] == "2", f"seed={sim_seed}"


def _log_reaches(index: int, status: Status) -> bool:
    return status.last_log_index >= index


async def _try_propose(node: Node, command: object) -> None:
    with contextlib.suppress(RaftError):
        await node.propose(command)


def test_an_encoded_command_is_checked_for_size_only() -> None:
    """A server that checked a request (``kv`` ``call``) proposes its encoding: not encoded
    again, still refused if over the limit."""
    encoded = _check_command(("put", "k", "v"), 100)
    assert _check_command(encoded, 100) is encoded
    with pytest.raises(ValueError, match="max_command_bytes=3"):
        _check_command(encoded, 3)
