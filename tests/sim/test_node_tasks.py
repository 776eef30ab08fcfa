"""The node's task tree: what runs under which scope, and what a step-down cancels."""

from __future__ import annotations

import random
from contextlib import AsyncExitStack
from typing import cast

import trio
import trio.testing

from trio_raft import AppendRequest, MemoryStorage, Message, NodeClosedError, Role, open_node
from trio_raft.testing import KVStateMachine, MemoryNetwork, MemoryTransport, open_simulated_cluster


def _task_names() -> list[str]:
    names: list[str] = []

    def walk(task: trio.lowlevel.Task) -> None:
        names.append(task.name)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    root = trio.lowlevel.current_root_task()
    assert root is not None  # inside trio.run
    walk(root)
    return names


def _replicators(node_id: str) -> list[str]:
    return [n for n in _task_names() if n.startswith(f"trio_raft replicator {node_id}->")]


async def test_leader_runs_one_replicator_per_follower(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with open_simulated_cluster(5, seed=1) as cluster:
            leader = await cluster.wait_leader()
            term = leader.status.term
            await trio.testing.wait_all_tasks_blocked()
            expected = sorted(
                f"trio_raft replicator {leader.id}->{p}@{term}"
                for p in cluster.node_ids
                if p != leader.id
            )
            assert sorted(_replicators(leader.id)) == expected
            for follower in cluster.node_ids:
                if follower != leader.id:
                    assert _replicators(follower) == []


async def test_higher_term_cancels_every_replicator_of_the_old_term(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with open_simulated_cluster(3, seed=2) as cluster:
            leader = await cluster.wait_leader()
            term = leader.status.term
            await trio.testing.wait_all_tasks_blocked()
            assert len(_replicators(leader.id)) == 2
            other = next(n for n in cluster.node_ids if n != leader.id)
            # A message of a higher term from anyone: the leader must step down at once.
            cluster.network.inject(AppendRequest(other, leader.id, term + 5, 0, 0, (), 0))
            await trio.testing.wait_all_tasks_blocked()
            assert leader.status.role is Role.FOLLOWER
            assert leader.status.term == term + 5
            assert _replicators(leader.id) == []


async def test_leader_cut_off_steps_down_and_stops_replicating(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """CheckQuorum: an isolated leader steps down within about an election timeout, and no
    replicator of its term outlives the step-down."""
    with trio.fail_after(30):
        async with open_simulated_cluster(3, seed=3) as cluster:
            leader = await cluster.wait_leader()
            cluster.isolate(leader.id)
            start = trio.current_time()
            await leader.wait_status(lambda s: s.role is not Role.LEADER)
            waited = trio.current_time() - start
            assert waited <= 2 * cluster.config.election_timeout_s_min + 0.01
            await trio.testing.wait_all_tasks_blocked()
            assert _replicators(leader.id) == []


async def test_crash_stops_every_task_of_the_node(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        async with open_simulated_cluster(3, seed=4) as cluster:
            leader = await cluster.wait_leader()
            await cluster.crash(leader.id)
            await trio.testing.wait_all_tasks_blocked()
            assert not [n for n in _task_names() if f" {leader.id}" in n]
            try:
                await leader.propose(("put", "k", "v"))
            except NodeClosedError:
                pass
            else:
                raise AssertionError("a crashed node accepted a proposal")


async def test_a_command_that_apply_rejects_fails_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A malformed command is committed, fails the same way everywhere, and nothing stops."""
    with trio.fail_after(10):
        async with open_simulated_cluster(3, seed=5) as cluster:
            leader = await cluster.wait_leader()
            try:
                await leader.propose(("bogus",))
            except ValueError as exc:
                assert "malformed KV command" in str(exc)
            else:
                raise AssertionError("apply's ValueError did not reach the proposer")
            assert await leader.propose(("put", "k", "v")) is None
            await cluster.wait_converged()
            states = [cast(KVStateMachine, sm).as_dict() for sm in cluster.state_machines.values()]
            assert states == [{"k": "v"}] * 3


class _RequiredMembersOnly:
    """A transport with only the protocol's required members (no ``deliver_into``)."""

    def __init__(self, inner: MemoryTransport) -> None:
        self._inner = inner

    def send(self, message: Message) -> None:
        self._inner.send(message)

    @property
    def receive_channel(self) -> trio.abc.ReceiveChannel[Message]:
        return self._inner.receive_channel


async def test_a_transport_without_deliver_into_is_pumped_and_others_are_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Third-party transports need only ``send`` and ``receive_channel``: the node runs a pump
    task for them; the package's transports deliver into the inbox themselves (no pump)."""
    ids = ["n1", "n2", "n3"]
    network = MemoryNetwork(random.Random(4))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            nursery.start_soon(network.run)
            nodes = {}
            for i, nid in enumerate(ids):
                inner = network.transport(nid)
                transport = _RequiredMembersOnly(inner) if nid != "n3" else inner
                nodes[nid] = await stack.enter_async_context(
                    open_node(
                        nid,
                        ids,
                        state_machine=KVStateMachine(),
                        transport=transport,
                        storage=MemoryStorage(),
                        rng=random.Random(i),
                    )
                )
            leader = nodes[await nodes["n1"].wait_leader()]
            for i in range(20):
                await leader.propose(("put", "k", str(i)))
            for node in nodes.values():
                await node.wait_status(lambda s: s.last_applied >= leader.status.commit_index)
                assert node.state_machine.query(("get", "k")) == "19"
            pumps = [n for n in _task_names() if n.startswith("trio_raft pump ")]
            assert sorted(pumps) == ["trio_raft pump n1", "trio_raft pump n2"]
            nursery.cancel_scope.cancel()
