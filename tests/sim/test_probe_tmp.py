from __future__ import annotations
import trio, trio.testing
from trio_raft.testing import open_simulated_cluster
from trio_raft._types import Role

async def test_probe(autojump_clock: trio.testing.MockClock) -> None:
    for n in (3, 5):
        with trio.fail_after(30):
            async with open_simulated_cluster(n, seed=1) as cluster:
                t0 = trio.current_time()
                leader = await cluster.wait_leader()
                print(n, "leader", leader.id, trio.current_time() - t0, [ (x.status.role, x.status.term, x.status.leader_id) for x in cluster.nodes.values()])
                await trio.sleep(5)
                print([ (x.status.role, x.status.term, x.status.leader_id, x.status.commit_index) for x in cluster.nodes.values()])
                print(cluster.network.stats().total)
