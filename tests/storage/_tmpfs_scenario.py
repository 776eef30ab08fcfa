"""A three-node cluster whose data directories share one small, real file system until it is
full (run by ``test_tmpfs_disk_full.py`` inside a private mount namespace on a tmpfs).

The nodes run in this process over a :class:`~trio_raft.testing.MemoryNetwork` with real
:class:`~trio_raft.FileStorage` and the real clock. The script fills the disk with writes until
the leader refuses one with :class:`~trio_raft.NoSpaceError`, checks that the leader's alarm
is raised (and records which nodes ever raised theirs) and reads still work, deletes everything
(``frees_space``), waits for the snapshots and compaction to give half the disk back and the
alarms to clear, writes again, and
restarts all three nodes from their directories to check that nothing acknowledged was lost.
It prints one JSON line of findings (the test asserts on them); any failure raises.

Usage: ``python _tmpfs_scenario.py DIRECTORY``.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from trio_raft import Config, Node, NoSpaceError, NotLeaderError, open_file_storage, open_node
from trio_raft.testing import KVStateMachine, MemoryNetwork

IDS = ["n1", "n2", "n3"]
CONFIG = Config(
    election_timeout_s_min=0.3,
    election_timeout_s_max=0.6,
    heartbeat_s=0.05,
    snapshot_entries=40,
    snapshot_keep_entries=5,
)
RESERVE = 2 << 20
VALUE = "x" * 50_000
DEADLINE_S = 90.0


def free_bytes(root: str) -> int:
    st = os.statvfs(root)
    return st.f_bavail * st.f_frsize


@asynccontextmanager
async def cluster(root: str) -> AsyncIterator[dict[str, Node]]:
    network = MemoryNetwork(random.Random(0))
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        nursery.start_soon(network.run)
        nodes = {}
        for nid in IDS:
            storage = await stack.enter_async_context(
                open_file_storage(
                    os.path.join(root, nid), cluster_id="tmpfs", node_id=nid,
                    reserve_bytes=RESERVE, segment_bytes=1 << 20,
                )
            )  # fmt: skip
            nodes[nid] = await stack.enter_async_context(
                open_node(
                    nid, IDS, state_machine=KVStateMachine(), transport=network.transport(nid),
                    storage=storage, config=CONFIG, rng=random.Random(nid),
                )
            )  # fmt: skip
        yield nodes
        nursery.cancel_scope.cancel()


async def leader_of(nodes: dict[str, Node]) -> Node:
    leader_id = await nodes["n1"].wait_leader()
    return nodes[leader_id]


async def propose(nodes: dict[str, Node], command: object, *, frees_space: bool = False) -> object:
    """Propose through the current leader, retrying only where nothing was applied."""
    while True:
        leader = await leader_of(nodes)
        try:
            return await leader.propose(command, frees_space=frees_space)
        except NotLeaderError:
            await trio.sleep(0.05)


async def main(root: str) -> dict[str, object]:
    found: dict[str, object] = {"capacity": free_bytes(root)}
    acknowledged: list[str] = []
    alarmed: set[str] = set()

    async def watch_alarms(nodes: dict[str, Node]) -> None:
        while True:
            alarmed.update(n.id for n in nodes.values() if n.status.no_space)
            await trio.sleep(0.01)

    async with cluster(root) as nodes, trio.open_nursery() as watchers:
        watchers.start_soon(watch_alarms, nodes)
        refused = None
        for i in range(10_000):
            try:
                await propose(nodes, ("put", f"k{i}", VALUE))
            except NoSpaceError as exc:
                refused = str(exc)
                break
            acknowledged.append(f"k{i}")
        found["acknowledged"] = len(acknowledged)
        found["refusal"] = refused
        found["free_at_refusal"] = free_bytes(root)
        leader = await leader_of(nodes)
        found["leader_alarm"] = leader.status.no_space
        await trio.sleep(2.5)  # two polls: followers notice too, unless compaction freed space
        found["alarms"] = sorted(alarmed)
        found["read_during_alarm"] = await leader.read(("get", acknowledged[0])) == VALUE
        for key in acknowledged:
            await propose(nodes, ("delete", key), frees_space=True)
        with trio.fail_after(60):  # snapshots of the emptied state, then compaction
            while free_bytes(root) < found["capacity"] // 2:  # type: ignore[operator]  # noqa: ASYNC110 (the disk has no event)
                await trio.sleep(0.1)
            for node in nodes.values():
                await node.wait_status(lambda s: not s.no_space)
        found["free_after_deletes"] = free_bytes(root)
        for i in range(5):
            await propose(nodes, ("put", f"after{i}", "small"))
        found["all_up"] = sorted(nodes)
        watchers.cancel_scope.cancel()
    async with cluster(root) as nodes:  # restart every node from its directory
        leader = await leader_of(nodes)
        found["after_restart"] = [await leader.read(("get", f"after{i}")) for i in range(5)]
        found["deleted_stay_deleted"] = await leader.read(("get", acknowledged[-1])) is None
    return found


if __name__ == "__main__":

    async def run() -> None:
        with trio.fail_after(DEADLINE_S):
            print(json.dumps(await main(sys.argv[1])), flush=True)

    trio.run(run)
