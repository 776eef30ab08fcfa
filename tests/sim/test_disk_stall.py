"""A stalled disk must not hold the cluster hostage."""

from __future__ import annotations

from typing import cast

import trio
import trio.testing

from trio_raft import LeadershipLostError, Role
from trio_raft.testing import KVStateMachine, open_simulated_cluster


async def test_leader_with_a_stalled_disk_steps_down_and_a_healthy_node_takes_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with open_simulated_cluster(3, seed=4) as cluster:
            old = await cluster.wait_leader()
            await old.propose(("put", "before", "1"))
            cluster.storages[old.id].stall()
            stalled_at = trio.current_time()
            async with trio.open_nursery() as nursery:
                # A proposal that lands on the stalled leader must not hang. Its replicators
                # send it while the leader's own write hangs, so it commits on the followers'
                # durable copies (a majority without the leader: thesis §10.2.1).
                async def stuck() -> None:
                    try:
                        outcomes.append(await old.propose(("put", "stuck", "1")))
                    except Exception as exc:
                        outcomes.append(exc)

                outcomes: list[object] = []
                nursery.start_soon(stuck)
                await old.wait_status(lambda s: s.role is not Role.LEADER)
            stepped_down_s = trio.current_time() - stalled_at
            assert stepped_down_s <= cluster.config.disk_stall_s + 0.05
            assert outcomes == [None]
            new = await cluster.wait_leader(among=[n for n in cluster.node_ids if n != old.id])
            assert await new.propose(("put", "after", "2")) is None
            # The stalled node cannot campaign meanwhile, nor acknowledge anything.
            assert old.status.role is not Role.LEADER
            cluster.storages[old.id].unstall()
            await cluster.wait_converged()
            assert old.status.leader_id == new.id
            sm = cluster.state_machines[old.id]
            assert cast(KVStateMachine, sm).as_dict()["after"] == "2"
            assert cast(KVStateMachine, sm).as_dict()["stuck"] == "1"


async def test_follower_with_a_stalled_disk_stops_acknowledging(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with open_simulated_cluster(3, seed=5) as cluster:
            leader = await cluster.wait_leader()
            f1, f2 = (n for n in cluster.node_ids if n != leader.id)
            cluster.storages[f1].stall()
            await leader.propose(("put", "a", "1"))  # f2 and the leader are a majority
            match_before = leader.status.followers[f1].match_index
            cluster.storages[f2].stall()
            committed = False
            with trio.move_on_after(2):
                try:
                    await leader.propose(("put", "b", "2"))
                    committed = True
                except LeadershipLostError:
                    pass  # CheckQuorum: the leader heard no answer from a majority
            assert not committed  # no majority of healthy disks: nothing commits
            assert leader.status.commit_index < leader.status.last_log_index
            assert leader.status.role is not Role.LEADER or (
                leader.status.followers[f1].match_index == match_before
            )
            cluster.storages[f1].unstall()
            cluster.storages[f2].unstall()
            await cluster.wait_converged()
