"""Partitions of real processes through the loopback fault proxy (:mod:`._proxy`): every peer
connection of every node goes through the proxy port of its directed link."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from trio_raft import kv

from ._harness import (
    DEADLINE_S,
    ProcessCluster,
    Statuses,
    allocate_ports,
    as_int,
    leader_of,
    open_process_cluster,
)
from ._proxy import FaultProxy, open_fault_proxy


@asynccontextmanager
async def proxied_cluster(directory: Path) -> AsyncIterator[tuple[ProcessCluster, FaultProxy]]:
    ports = allocate_ports()
    async with (
        open_fault_proxy({node_id: p.peer for node_id, p in ports.items()}) as proxy,
        open_process_cluster(directory, ports=ports, dial=proxy.dial_table()) as cluster,
    ):
        yield cluster, proxy


async def test_isolated_leader_cannot_commit_and_the_majority_moves_on(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE_S):
        async with proxied_cluster(tmp_path) as (cluster, proxy):
            old, statuses = await cluster.wait_leader()
            old_term = as_int(statuses[old] or {}, "term")
            majority = [n for n in cluster.ids if n != old]
            async with cluster.client() as client:
                await client.put("before", "1")
            # Every peer connection went through the proxy.
            assert all(forwarded >= 1 for _, forwarded, _ in proxy.statistics().values())

            proxy.isolate(old)
            isolated_at = trio.current_time()
            figures: dict[str, float] = {}

            minority: list[str | None] = [None]

            async def write_to_the_old_leader() -> None:
                # The old leader appends it but cannot commit it. The client either times out,
                # or (it learned the other members' URLs from the old leader) retries the same
                # write on the new leader once the old one steps down: then the majority
                # commits it, exactly once.
                async with cluster.client([old], timeout_s=3) as client:
                    try:
                        await client.put("minority", "retried")
                    except kv.KVTimeoutError:
                        return
                    minority[0] = "retried"

            def stepped_down(statuses: Statuses) -> bool:
                status = statuses[old]
                return status is not None and status["role"] != "leader"

            async def watch_the_old_leader_step_down() -> None:
                await cluster.wait_for(stepped_down, [old])
                figures["stepped down"] = trio.current_time() - isolated_at

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_to_the_old_leader)
                nursery.start_soon(watch_the_old_leader_step_down)
                new, statuses = await cluster.wait_leader(majority, min_term=old_term + 1)
                async with cluster.client(majority) as client:
                    await client.put("majority", "won")
                figures["majority committed"] = trio.current_time() - isolated_at
            # The old leader could not take part: its term did not move (PreVote), and nothing
            # it accepted while cut off was committed.
            status = await cluster.status(old)
            assert status is not None and status["role"] != "leader"
            assert status["term"] == old_term

            proxy.heal()
            healed_at = trio.current_time()
            statuses = await cluster.wait_converged()
            converged_s = trio.current_time() - healed_at
            assert leader_of(statuses) == new
            expected = {"before": "1", "majority": "won", "minority": minority[0]}
            for node_id in cluster.ids:
                assert await cluster.stale_reads(node_id, expected) == expected, node_id
            print(
                f"FIGURE partition (test 5a): isolated leader {old} stepped down after "
                f"{figures['stepped down']:.3f} s; {new} elected and committed after "
                f"{figures['majority committed']:.3f} s; all converged {converged_s:.3f} s "
                "after healing"
            )


async def test_returning_isolated_follower_does_not_disrupt_the_leader(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE_S):
        async with proxied_cluster(tmp_path) as (cluster, proxy):
            leader, statuses = await cluster.wait_leader()
            term = as_int(statuses[leader] or {}, "term")
            follower = next(n for n in cluster.ids if n != leader)

            proxy.isolate(follower)
            async with cluster.client() as client:
                for i in range(20):
                    await client.put(f"k{i}", str(i))
                await trio.sleep(3.0)  # many election timeouts (0.3 to 0.6 s)
                lonely = await cluster.status(follower)
                assert lonely is not None
                # PreVote: it cannot win, so it never raised its term.
                assert lonely["term"] == term, lonely
                assert lonely["role"] in ("follower", "pre-candidate"), lonely

                proxy.heal()
                statuses = await cluster.wait_converged()
                assert leader_of(statuses) == leader
                assert all(s is not None and s["term"] == term for s in statuses.values())
                await client.put("after", "heal")
            statuses = await cluster.wait_converged()
            assert leader_of(statuses) == leader
            assert all(s is not None and s["term"] == term for s in statuses.values())
            expected = {f"k{i}": str(i) for i in range(20)} | {"after": "heal"}
            assert await cluster.stale_reads(follower, expected) == expected
            _, _, held = proxy.statistics()[leader, follower]
            print(
                f"FIGURE partition (test 5b): {follower} isolated for 3 s came back as "
                f"{lonely['role']} in term {lonely['term']}; {leader} kept leading term {term} "
                f"({held} connections held while cut)"
            )
