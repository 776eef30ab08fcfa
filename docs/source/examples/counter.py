"""A replicated counter: three Raft nodes in one trio program.

Run it with ``python counter.py``. The nodes talk over the in-memory network of
``trio_raft.testing`` and keep their logs in memory. To run each node in its own process, over
the WebSocket transport and with durable storage, give the same state machine to
``trio_raft.serve_state_machine`` (see "Your own state machine" in the cluster guide).
"""

from __future__ import annotations

import random
from contextlib import AsyncExitStack

import trio

import trio_raft
from trio_raft.testing import MemoryNetwork

MEMBERS = ["n1", "n2", "n3"]


class Counter:
    """The replicated state: one integer.

    A command is ``(client_id, seq, amount)``. Each client numbers its commands 1, 2, 3, ... and
    the counter remembers the last one it applied per client, so a command that is applied twice
    (a client retrying after an unknown outcome) adds only once: the command is idempotent.
    """

    def __init__(self) -> None:
        self.value = 0
        self._last: dict[str, tuple[int, int]] = {}  # client_id -> (seq, result)

    def apply(self, command: object) -> object:
        match command:
            case (str() as client_id, int() as seq, int() as amount):
                pass
            case _:
                # Never raise here: every replica applies the same entry, so an exception would
                # stop them all. Answer malformed commands deterministically instead.
                return None
        last = self._last.get(client_id)
        if last is not None and seq <= last[0]:
            return last[1]  # a duplicate: answer as the first time, change nothing
        self.value += amount
        self._last[client_id] = (seq, self.value)
        return self.value

    def query(self, query: object) -> object:
        return self.value


class CounterClient:
    """Adds to the counter through whichever node leads, retrying until the addition is applied.

    Every call sends one command, ``(client_id, seq, amount)``, with a fresh ``seq``; retries of
    that call resend the very same command, so the counter can recognise them.
    """

    def __init__(self, nodes: dict[str, trio_raft.Node], client_id: str) -> None:
        self._nodes = nodes
        self._client_id = client_id
        self._seq = 0
        self._target = next(iter(nodes))  # any node: a follower tells us who leads

    async def add(self, amount: int) -> int:
        self._seq += 1
        command = (self._client_id, self._seq, amount)
        while True:
            try:
                result = await self._nodes[self._target].propose(command)
            except trio_raft.NotLeaderError as exc:
                # Nothing was appended, so retrying is always safe.
                if exc.leader_id is None:
                    await trio.sleep(0.1)  # an election is under way
                else:
                    print(f"{self._target} is not the leader: retrying on {exc.leader_id}")
                    self._target = exc.leader_id
            except trio_raft.ProposalDroppedError:
                await trio.sleep(0.1)  # definitely not applied (e.g. back-pressure): retry
            except trio_raft.LeadershipLostError:
                # Maybe applied, maybe not. Retrying is safe only because the counter ignores
                # a (client_id, seq) it has already applied.
                await trio.sleep(0.1)
            else:
                assert isinstance(result, int)
                return result


async def main() -> None:
    network = MemoryNetwork(random.Random(0))
    counters = {node_id: Counter() for node_id in MEMBERS}
    async with trio.open_nursery() as nursery:
        await nursery.start(network.run)
        async with AsyncExitStack() as stack:
            nodes: dict[str, trio_raft.Node] = {}
            for node_id in MEMBERS:
                nodes[node_id] = await stack.enter_async_context(
                    trio_raft.open_node(
                        node_id,
                        MEMBERS,
                        state_machine=counters[node_id],
                        transport=network.transport(node_id),
                        storage=trio_raft.MemoryStorage(),
                    )
                )

            leader_id = await nodes["n1"].wait_leader()
            print(f"leader elected: {leader_id}")
            client = CounterClient(nodes, "client-1")
            for _ in range(3):
                print(f"client-1 adds 10 -> counter = {await client.add(10)}")

            leader = nodes[leader_id]
            print(f"linearizable read on {leader_id}: {await leader.read('value')}")

            # Followers apply a committed entry once the leader tells them it is committed.
            committed = leader.status.commit_index
            for node in nodes.values():
                await node.wait_status(lambda s: s.last_applied >= committed)
            print("every replica:", {n: c.value for n, c in counters.items()})
        nursery.cancel_scope.cancel()  # stop the network


if __name__ == "__main__":
    trio.run(main)
