"""``kill -9`` of the leader process: failover under load, and exactly-once client retries
across failovers."""

from __future__ import annotations

import collections
from functools import partial
from pathlib import Path

import trio

from trio_raft import kv
from trio_raft.testing import check_linearizable

from ._harness import (
    DEADLINE_S,
    SMALL_SNAPSHOTS,
    KVLoad,
    ProcessCluster,
    Status,
    as_int,
    decode,
    leader_of,
    open_process_cluster,
)

PROBE_TIMEOUT_S = 60.0
"""Timeout of the write sent across the leader's kill: long enough that only a failover that
never happens (a hang, caught by ``DEADLINE_S`` anyway) leaves its outcome unknown. How long the
failover took is printed, not asserted."""
CLIENTS = 3


async def wait_ops(load: KVLoad, count: int) -> None:
    """Wait until the load has completed ``count`` more operations."""
    target = load.completed + count
    await load.wait_until(lambda: load.completed >= target)


async def measure_election(cluster: ProcessCluster, survivors: list[str], old_term: int) -> float:
    """Seconds from now until one of ``survivors`` reports leading a term above ``old_term``."""
    start = trio.current_time()

    def elected(statuses: dict[str, Status | None]) -> bool:
        leader = leader_of(statuses)
        return leader is not None and as_int(statuses[leader] or {}, "term") > old_term

    await cluster.wait_for(elected, survivors)
    return trio.current_time() - start


async def test_kill_leader_under_load_fails_over_linearizably(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE_S):
        async with open_process_cluster(tmp_path) as cluster:
            leader, statuses = await cluster.wait_leader()
            old_term = as_int(statuses[leader] or {}, "term")
            survivors = [n for n in cluster.ids if n != leader]
            load = KVLoad(cluster.urls(), cluster.token)
            election_s: list[float] = []
            async with trio.open_nursery() as nursery:
                for client_id in range(CLIENTS):
                    nursery.start_soon(load.client, client_id)
                await wait_ops(load, 100)
                async with cluster.client(timeout_s=PROBE_TIMEOUT_S) as probe:
                    before = ("put", "probe", "before")
                    await load.record(CLIENTS, before, partial(probe.put, "probe", "before"))
                    killed_at = trio.current_time()
                    await cluster.kill(leader)

                    async def election() -> None:
                        election_s.append(await measure_election(cluster, survivors, old_term))

                    nursery.start_soon(election)
                    after = ("put", "probe", "after")
                    result = await load.record(CLIENTS, after, partial(probe.put, "probe", "after"))
                    failover_s = trio.current_time() - killed_at
                assert result is None, "the first write after the kill timed out"
                await wait_ops(load, 150)  # the load goes on with the new leader
                load.stop()
            new_leader, _ = await cluster.wait_leader(survivors)
            assert new_leader != leader

            print(
                f"FIGURE failover (test 2): kill -9 of leader {leader} -> {new_leader} elected "
                f"after {election_s[0]:.3f} s (status polling), first write acknowledged after "
                f"{failover_s:.3f} s; {load.completed} operations completed, "
                f"{load.unknown} unknown"
            )

            # Every acknowledged write is there, on the majority and on each survivor.
            await cluster.wait_converged(survivors)
            async with cluster.client(survivors) as client:
                for key, value in load.acked.items():
                    assert decode(await client.get(key)) == value, key
            everything = [*load.acked, *load.maybe, "x", "y", "probe"]
            values = [await cluster.stale_reads(n, everything) for n in survivors]
            assert values[0] == values[1]
            assert {k: values[0][k] for k in load.acked} == load.acked
            assert values[0]["probe"] == "after"

            verdict = check_linearizable(load.history.operations())
            assert verdict.ok is True, verdict.explanation


async def test_client_retries_across_failovers_apply_exactly_once(tmp_path: Path) -> None:
    """Clients append unique items to one key by compare-and-swap while the leader is killed
    twice. A retried cas applied twice would either duplicate an item (the client saw False and
    appended it again) or lose an acknowledgement: each acknowledged item must appear exactly
    once, each item with an unknown outcome at most once, and nothing else."""
    acked: dict[int, list[str]] = collections.defaultdict(list)
    unknown: set[str] = set()
    figures: list[str] = []
    kills: list[float] = []
    calls: list[tuple[float, float, bool]] = []  # (start, end, swapped) of each cas
    with trio.fail_after(DEADLINE_S):
        async with open_process_cluster(tmp_path, raft=SMALL_SNAPSHOTS) as cluster:
            stop = trio.Event()

            async def appender(client_id: int) -> None:
                async with cluster.client() as client:  # a slow get must not fail the test
                    current = decode(await client.get("log"))
                    i = 0
                    while not stop.is_set():
                        item = f"{client_id}:{i}"
                        new = f"{current or ''}{item},"
                        start = trio.current_time()
                        try:
                            swapped = await client.cas("log", current, new)
                        except kv.KVTimeoutError:
                            unknown.add(item)
                            swapped = False
                            i += 1
                        calls.append((start, trio.current_time(), swapped))
                        if swapped:
                            acked[client_id].append(item)
                            current = new
                            i += 1
                        else:
                            current = decode(await client.get("log"))

            async def failover(victim: str) -> str:
                statuses = await cluster.statuses()
                term = as_int(statuses[victim] or {}, "term")
                survivors = [n for n in cluster.ids if n != victim]
                await cluster.kill(victim)
                kills.append(trio.current_time())
                elapsed = await measure_election(cluster, survivors, term)
                figures.append(f"{elapsed:.3f}")
                leader, _ = await cluster.wait_leader(survivors)
                return leader

            leader, _ = await cluster.wait_leader()
            async with trio.open_nursery() as nursery:
                for client_id in range(CLIENTS):
                    nursery.start_soon(appender, client_id)
                await trio.sleep(1.0)
                second = await failover(leader)
                await trio.sleep(0.5)
                await cluster.start(leader)
                await cluster.wait_for(lambda s: all(s.values()))
                await trio.sleep(0.5)
                await failover(second)
                await trio.sleep(1.0)
                stop.set()
            await cluster.start(second)
            statuses = await cluster.wait_converged()

            async with cluster.client() as client:
                log = decode(await client.get("log")) or ""
            items = log.split(",")[:-1]
            for node_id in cluster.ids:
                assert await cluster.stale_reads(node_id, ["log"]) == {"log": log}, node_id

    counts = collections.Counter(items)
    assert [item for item, n in counts.items() if n > 1] == [], "applied more than once"
    everything = {item for items_ in acked.values() for item in items_}
    assert everything <= counts.keys(), f"acknowledged but lost: {everything - counts.keys()}"
    assert counts.keys() <= everything | unknown, "applied but never sent"
    for client_id, mine in acked.items():
        in_log = [item for item in items if item.startswith(f"{client_id}:")]
        assert [item for item in in_log if item in mine] == mine, "out of order"
    # Calls in flight at a kill that swapped: sent to the dead leader, answered by the next one.
    across = sum(start < kill < end and ok for start, end, ok in calls for kill in kills)
    print(
        f"FIGURE exactly-once (test 6): {len(items)} items appended by {CLIENTS} clients "
        f"({len(everything)} acknowledged, {len(unknown)} unknown) across 2 leader kills, "
        f"{across} acknowledged cas calls were in flight at a kill; "
        f"elections took {', '.join(figures)} s; final applied index "
        f"{as_int(statuses['n1'] or {}, 'applied')}"
    )
