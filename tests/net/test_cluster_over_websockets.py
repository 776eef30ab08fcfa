"""A three-node cluster in one process over real WebSockets on loopback.

It elects a leader, replicates 100 proposals, loses its leader (the leader's node and transport
exit), elects another that keeps serving, and takes the old leader back, which catches up.
Every wait is event-driven (``Node.wait_status``) and bounded by :func:`trio.fail_after`.
"""

from __future__ import annotations

import pytest
import trio

from . import kv, open_cluster, propose_all, wait_caught_up, wait_leader


@pytest.mark.process  # restarts a node on its old port, a fixed port: `nox -s processes`
async def test_cluster_elects_replicates_fails_over_and_catches_up() -> None:
    with trio.fail_after(10):
        async with open_cluster() as cluster:
            nodes = cluster.running()
            leader = await wait_leader(nodes)
            await propose_all(nodes, [("put", f"k{i}", f"v{i}") for i in range(100)])
            await wait_caught_up(nodes, leader)
            assert all(kv(n) == {f"k{i}": f"v{i}" for i in range(100)} for n in nodes.values())

            old = leader.id
            cluster.stop(old)
            survivors = cluster.running()
            new_leader = await wait_leader(survivors, not_=old)
            await propose_all(survivors, [("put", f"after{i}", "x") for i in range(20)])

            await cluster.start(old)  # same storage, same port
            nodes = cluster.running()
            new_leader = await wait_leader(nodes)
            await propose_all(nodes, [("put", "last", "y")])
            await wait_caught_up(nodes, new_leader)
            states = [kv(n) for n in nodes.values()]
            stats = [m.transport.statistics() for m in cluster.members.values() if m.transport]
    assert len(states[0]) == 100 + 20 + 1
    assert all(state == states[0] for state in states)
    for s in stats:
        assert s.handshake_failures == 0 and s.decode_failures == 0, s
        assert all(p.dropped_unencodable == p.dropped_too_large == 0 for p in s.peers.values())
