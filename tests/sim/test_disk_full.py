"""A full disk in the simulator (issue 7): a node whose storage is low on space or full stays up,
raises its disk-space alarm (``Status.no_space``), refuses ordinary proposals as leader with
``NoSpaceError`` while deletes, reads and compaction go on, and loses nothing when space returns.

Disk space is modelled by ``SimulatedStorage.set_disk_space``: ``"low"`` refuses appends that
may not use the reserve, ``"full"`` refuses every append. Chaos runs flip it at random
(``disk_low``/``disk_full``/``disk_ok`` faults in every schedule, see ``tests/sim/test_chaos.py``).
"""

from __future__ import annotations

from typing import cast

import pytest
import trio
import trio.testing

from trio_raft import Config, NoSpaceError, ProposalDroppedError
from trio_raft.testing import KVStateMachine, SimulatedCluster, open_simulated_cluster

CONFIG = Config(snapshot_entries=30, snapshot_keep_entries=5)
ALARM_S = 3.0
"""Virtual time for every node to notice (the storage is polled every second)."""


async def _wait_alarm(cluster: SimulatedCluster, *, on: bool, nodes: list[str]) -> None:
    with trio.fail_after(ALARM_S):
        for nid in nodes:
            await cluster.node(nid).wait_status(lambda s: s.no_space is on)


async def _fill(cluster: SimulatedCluster, count: int, prefix: str = "k") -> None:
    for i in range(count):
        await cluster.propose(("put", f"{prefix}{i}", "v" * 20))


async def test_low_disk_everywhere_refuses_writes_but_serves_reads_and_deletes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_simulated_cluster(3, seed=1, config=CONFIG) as cluster:
        with trio.fail_after(60):
            leader = await cluster.wait_leader()
            await _fill(cluster, 40)
            for storage in cluster.storages.values():
                storage.set_disk_space("low")
            await _wait_alarm(cluster, on=True, nodes=list(cluster.node_ids))
            assert leader.status.role.value == "leader", "the alarm must not depose the leader"

            with pytest.raises(NoSpaceError, match="frees_space=True") as info:
                await leader.propose(("put", "new", "x"))
            assert isinstance(info.value, ProposalDroppedError)
            assert await leader.read(("get", "new")) is None  # definitely not applied

            # Deletes get through (their entries may use the reserve) and free the state.
            for i in range(35):
                await leader.propose(("delete", f"k{i}"), frees_space=True)
            assert await leader.read(("get", "k0")) is None
            assert await leader.read(("get", "k39")) == "v" * 20
            # Snapshots and compaction go on while the alarm is raised.
            await cluster.wait_converged()
            await cluster.wait_logs_bounded()

            for storage in cluster.storages.values():
                storage.set_disk_space("ok")
            await _wait_alarm(cluster, on=False, nodes=list(cluster.node_ids))
            await cluster.propose(("put", "new", "after"))
            assert await cluster.leader().read(("get", "new")) == "after"  # type: ignore[union-attr]
            await cluster.wait_converged()
        states = [cast(KVStateMachine, sm).as_dict() for sm in cluster.state_machines.values()]
        assert all(s == states[0] for s in states)
        assert len(states[0]) == 6  # k35..k39 and "new"


async def test_full_disk_everywhere_keeps_every_node_up_and_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every append is refused on every node: nothing can commit, yet no node stops, nothing
    already acknowledged is lost, and the write waiting through the outage commits once space
    returns (the refused entries were kept and retried)."""
    async with open_simulated_cluster(3, seed=2, config=CONFIG) as cluster:
        with trio.fail_after(120):
            leader = await cluster.wait_leader()
            await _fill(cluster, 10)
            for storage in cluster.storages.values():
                storage.set_disk_space("full")
            await _wait_alarm(cluster, on=True, nodes=list(cluster.node_ids))
            result: list[object] = []

            async def delete_through_the_outage() -> None:
                result.append(await leader.propose(("delete", "k0"), frees_space=True))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(delete_through_the_outage)
                await trio.sleep(10 * CONFIG.election_timeout_s_max)
                assert result == [], "committed with no node able to save it"
                assert set(cluster.nodes) == set(cluster.node_ids), "a node stopped"
                assert await cluster.node(leader.id).read(("get", "k1")) == "v" * 20
                for storage in cluster.storages.values():
                    storage.set_disk_space("ok")
            assert result == [None]
            await _wait_alarm(cluster, on=False, nodes=list(cluster.node_ids))
            await cluster.propose(("put", "k0", "back"))
            await cluster.wait_converged()
        for sm in cluster.state_machines.values():
            assert cast(KVStateMachine, sm).as_dict()["k0"] == "back"
            assert len(cast(KVStateMachine, sm).as_dict()) == 10
        for nid, storage in cluster.storages.items():
            durable = storage.durable_state()
            assert (
                durable.log_start_index + len(durable.entries)
                == cluster.node(nid).status.last_log_index
            ), f"{nid}: its log is not all saved after the outage"


async def test_one_full_follower_does_not_stop_the_cluster_and_catches_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A follower whose disk is full cannot acknowledge; the other two commit without it, and
    it catches up (by entries or a snapshot) once space returns."""
    async with open_simulated_cluster(3, seed=3, config=CONFIG) as cluster:
        with trio.fail_after(120):
            leader = await cluster.wait_leader()
            follower = next(n for n in cluster.node_ids if n != leader.id)
            cluster.storages[follower].set_disk_space("full")
            await _fill(cluster, 100)  # crosses several snapshot points
            await _wait_alarm(cluster, on=True, nodes=[follower])
            assert not leader.status.no_space
            assert leader.status.followers[follower].match_index < leader.status.commit_index
            # A crash and restart of the full follower loses nothing it acknowledged.
            await cluster.restart(follower)
            cluster.storages[follower].set_disk_space("ok")
            await cluster.wait_converged()
            await _wait_alarm(cluster, on=False, nodes=[follower])
            await cluster.wait_logs_bounded()
        states = [cast(KVStateMachine, sm).as_dict() for sm in cluster.state_machines.values()]
        assert all(s == states[0] for s in states)
        assert len(states[0]) == 100
