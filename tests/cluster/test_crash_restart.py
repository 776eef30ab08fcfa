"""``kill -9`` of every node in turn under load, each restarted from its data directory."""

from __future__ import annotations

from pathlib import Path

import trio

from trio_raft.testing import check_linearizable

from ._harness import DEADLINE_S, SMALL_SNAPSHOTS, KVLoad, as_int, leader_of, open_process_cluster

CLIENTS = 3


async def test_kill_every_node_in_turn_under_load_loses_no_write(tmp_path: Path) -> None:
    rounds: list[str] = []
    with trio.fail_after(DEADLINE_S):
        async with open_process_cluster(tmp_path, raft=SMALL_SNAPSHOTS) as cluster:
            await cluster.wait_leader()
            load = KVLoad(cluster.urls(), cluster.token)
            async with trio.open_nursery() as nursery:
                for client_id in range(CLIENTS):
                    nursery.start_soon(load.client, client_id)
                for victim in cluster.ids:
                    statuses = await cluster.statuses()
                    was_leader = leader_of(statuses) == victim
                    await cluster.kill(victim)
                    killed_at = trio.current_time()
                    survivors = [n for n in cluster.ids if n != victim]
                    # The survivors keep committing (after an election if it was the leader).
                    await load.wait_acks(30)
                    served_s = trio.current_time() - killed_at
                    await cluster.start(victim)
                    # Caught up: it applied what the leader had committed before its restart.
                    _, statuses = await cluster.wait_leader(survivors)
                    target = max(as_int(s or {}, "commit") for s in statuses.values())
                    await cluster.wait_applied(victim, target)
                    caught_up_s = trio.current_time() - killed_at
                    role = "leader" if was_leader else "follower"
                    rounds.append(
                        f"{victim} ({role}): 30 writes acknowledged {served_s:.3f} s after its "
                        f"kill, caught up {caught_up_s:.3f} s after it"
                    )
                load.stop()

            statuses = await cluster.wait_converged()
            applied = {as_int(s or {}, "applied") for s in statuses.values()}
            assert len(applied) == 1, statuses
            everything = [*load.acked, *load.maybe, "x", "y"]
            values = {n: await cluster.stale_reads(n, everything) for n in cluster.ids}
            assert values["n1"] == values["n2"] == values["n3"]
            assert {k: values["n1"][k] for k in load.acked} == load.acked, "a write was lost"
            verdict = check_linearizable(load.history.operations())
            assert verdict.ok is True, verdict.explanation
    print(
        f"FIGURE crash-restart (test 4): {load.completed} operations completed "
        f"({len(load.acked)} unique keys acknowledged, {load.unknown} unknown), final applied "
        f"index {applied.pop()}; " + "; ".join(rounds)
    )
