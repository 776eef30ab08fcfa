"""``await node.snapshot()``: a snapshot on demand, in the simulator (virtual time)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_raft import Config, NodeClosedError, NotLeaderError, StorageFullError
from trio_raft.testing import KVStateMachine, open_simulated_cluster

NEVER = Config(snapshot_entries=1_000_000, snapshot_keep_entries=5)
"""The automatic trigger never fires: every snapshot in these tests is asked for."""


class _NoSnapshots:
    """A state machine without ``snapshot()``/``restore()``."""

    def __init__(self) -> None:
        self.applied: list[object] = []

    def apply(self, command: object) -> object:
        self.applied.append(command)
        return None

    def query(self, query: object) -> object:
        return len(self.applied)


async def test_a_snapshot_on_demand_is_durable_and_compacts_the_log(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with open_simulated_cluster(3, seed=11, config=NEVER) as cluster:
            leader = await cluster.wait_leader()
            for i in range(40):
                await leader.propose(("put", f"k{i}", str(i)))
            await cluster.wait_converged()
            for nid, node in cluster.nodes.items():  # the leader and the followers alike
                applied = node.status.last_applied
                assert node.status.snapshot_index == 0
                index = await node.snapshot()
                assert index == applied == node.status.snapshot_index, nid
                durable = cluster.storages[nid]._durable.snapshot
                assert durable is not None and durable[0].index == index
                # Covered already: at once, and no second snapshot.
                assert await node.snapshot() == index
                assert cluster.storages[nid]._durable.snapshot is durable
            await trio.testing.wait_all_tasks_blocked()
            assert leader._state.log.start_index >= 40 - 5  # compacted behind it
            # A restart starts from it.
            expected = cluster.state_machines[leader.id]
            assert isinstance(expected, KVStateMachine)
            state = expected.as_dict()
            await cluster.crash(leader.id)
            restarted = await cluster.start(leader.id)
            assert restarted.status.last_applied >= index
            machine = cluster.state_machines[leader.id]
            assert isinstance(machine, KVStateMachine) and machine.as_dict() == state


async def test_snapshot_refusals(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with open_simulated_cluster(3, seed=12, config=NEVER) as cluster:
            leader = await cluster.wait_leader()
            await leader.propose(("put", "a", "1"))
            follower = next(n for n in cluster.nodes.values() if n is not leader)
            await cluster.wait_converged()
            # A full disk: the storage's typed error, not a hang; the node goes on.
            cluster.storages[follower.id].set_disk_space("full")
            with pytest.raises(StorageFullError):
                await follower.snapshot()
            cluster.storages[follower.id].set_disk_space("ok")
            assert await follower.snapshot() == follower.status.last_applied
            # Cancelled: the wait is abandoned, the node is fine, the next call succeeds.
            await leader.propose(("put", "b", "2"))
            with trio.move_on_after(0):
                await leader.snapshot()
            assert await leader.snapshot() == leader.status.last_applied
            # A shut-down node.
            await cluster.crash(follower.id)
            with pytest.raises(NodeClosedError):
                await follower.snapshot()


async def test_a_state_machine_without_snapshots_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with open_simulated_cluster(
            3, seed=13, config=NEVER, state_machine_factory=_NoSnapshots
        ) as cluster:
            leader = await cluster.wait_leader()
            with pytest.raises(TypeError, match="implement SnapshottingStateMachine"):
                await leader.snapshot()


async def test_a_linearizable_snapshot_holds_every_acknowledged_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with open_simulated_cluster(3, seed=14, config=NEVER) as cluster:
            leader = await cluster.wait_leader()
            follower = next(n for n in cluster.nodes.values() if n is not leader)
            for i in range(10):
                await leader.propose(("put", f"k{i}", str(i)))
            commit = leader.status.commit_index
            with pytest.raises(NotLeaderError):
                await follower.snapshot(linearizable=True)
            assert follower.status.snapshot_index == 0  # nothing taken
            index = await leader.snapshot(linearizable=True)
            assert index >= commit
