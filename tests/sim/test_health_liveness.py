"""``/health`` is liveness: it fails once a node's dispatcher is stuck in one step (a disk
that stopped answering), so an orchestrator restarts it; it passes again if the step ends.
On the simulator's virtual clock: the stall is a stalled simulated disk."""

from __future__ import annotations

import json

import trio
import trio.testing

from tests.sim.test_scenarios import deadline
from trio_raft._admin import STALL_ELECTION_TIMEOUTS, AdminServer
from trio_raft.testing import open_simulated_cluster


async def test_health_fails_while_the_dispatcher_is_stuck_and_recovers(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    with deadline(60, seed):
        async with open_simulated_cluster(3, seed=seed) as cluster:
            leader = await cluster.wait_leader()
            follower = next(n for n in cluster.node_ids if n != leader.id)
            node = cluster.node(follower)
            admin = AdminServer(node, None)

            def health() -> tuple[int, dict[str, object]]:
                status, body, _ = admin._route("GET", "/health")
                return status, json.loads(body)

            assert health() == (200, {"node": follower, "status": "ok"})
            cluster.storages[follower].stall()  # its next write never returns
            await leader.propose(("put", "a", "1"))  # the other two commit it
            stall_s = STALL_ELECTION_TIMEOUTS * cluster.config.election_timeout_s_max
            await trio.sleep(stall_s / 2)
            assert health()[0] == 200  # busy, not yet stuck
            await trio.sleep(stall_s)
            status, body = health()
            assert status == 503 and body["status"] == "stalled", body
            assert "stuck in one step" in str(body["reason"])
            assert float(body["stalled_s"]) > stall_s  # type: ignore[arg-type]
            cluster.storages[follower].unstall()
            await node.wait_status(lambda s: s.last_applied >= leader.status.commit_index)
            assert health()[0] == 200
        assert health() == (503, {"node": follower, "status": "closed"})
