"""The leader's write path (design.rst, "The write path"): a leader sends its new entries while
its own write and sync proceed, and counts its own copy only once synced (thesis §10.2.1)."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from trio_raft import RaftError, Role
from trio_raft.testing import open_simulated_cluster


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
                state = sm.as_dict()  # type: ignore[attr-defined]
                lost = {k: v for k, v in acked.items() if state.get(k) != v}
                assert not lost, f"seed={sim_seed}: {nid} lost acknowledged writes {lost}"
