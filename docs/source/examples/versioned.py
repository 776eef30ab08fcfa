"""A versioned key-value store: each key's version is the log index of its last write.

Run it with ``python versioned.py``. It shows what a node tells an embedding program beyond
``propose``'s result: the log index and term of each applied command (``apply_entry``), where a
proposal was appended (``Proposal.appended``), the log itself (``node.log``) and the node's vote
(``Status.voted_for``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from contextlib import AsyncExitStack

import trio

import trio_raft
from trio_raft.testing import MemoryNetwork

MEMBERS = ["n1", "n2", "n3"]


class VersionedStore:
    """Keys to ``(version, value)``; a write's version is its entry's log index, the same on
    every replica. ``("put", key, value)`` writes; ``("cas", key, version, value)`` writes only
    if the key is still at ``version`` (0: absent). Both return the new version, or ``None``
    for a refused ``cas``."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[int, str]] = {}
        self.applied_index = 0  # the last index applied, kept in snapshots too

    def apply(self, command: object) -> object:
        raise TypeError("VersionedStore needs each command's index: run it in a node")

    def apply_entry(self, command: object, index: int, term: int) -> object:
        self.applied_index = index
        match command:
            case ["put", str() as key, str() as value]:
                pass
            case ["cas", str() as key, int() as version, str() as value]:
                if self.data.get(key, (0, ""))[0] != version:
                    return None
            case _:
                return None  # malformed: answered alike on every replica
        self.data[key] = (index, value)
        return index

    def query(self, query: object) -> object:
        return self.data.get(str(query))

    def snapshot(self) -> Iterable[bytes]:
        state = {"index": self.applied_index, "data": self.data}
        return [json.dumps(state).encode()]

    def restore(self, chunks: Iterable[bytes]) -> None:
        state = json.loads(b"".join(chunks))
        self.applied_index = state["index"]  # the snapshot's own index is not passed in
        self.data = {key: (version, value) for key, (version, value) in state["data"].items()}


async def main() -> None:
    network = MemoryNetwork(random.Random(0))
    async with trio.open_nursery() as nursery:
        await nursery.start(network.run)
        async with AsyncExitStack() as stack:
            nodes: dict[str, trio_raft.Node] = {}
            for node_id in MEMBERS:
                nodes[node_id] = await stack.enter_async_context(
                    trio_raft.open_node(
                        node_id,
                        MEMBERS,
                        state_machine=VersionedStore(),
                        transport=network.transport(node_id),
                        storage=trio_raft.MemoryStorage(),
                    )
                )
            leader = nodes[await nodes["n1"].wait_leader()]

            version = await leader.propose(["put", "colour", "red"])
            print(f"put colour=red -> version {version}")
            proposal = leader.propose_nowait(["cas", "colour", version, "blue"])
            position = await proposal.appended()  # once in the leader's log, not yet committed
            print(f"cas appended at index {position.index} of term {position.term}")
            print(f"cas -> version {await proposal.result()}")
            stale = await leader.propose(["cas", "colour", version, "green"])
            print(f"cas from the old version -> {stale}")
            print(f"read colour: {await leader.read('colour')}")

            log = leader.log
            print(f"log {log.first_index}..{log.last_index}, committed up to {log.commit_index}:")
            for entry in log.entries(stop=log.commit_index + 1):
                print(f"  {entry.index} (term {entry.term}) {entry.kind.name} {entry.command}")
            print(f"{leader.id} voted for {leader.status.voted_for} in term {leader.status.term}")
        nursery.cancel_scope.cancel()  # stop the network


if __name__ == "__main__":
    trio.run(main)
