"""Membership changes of a cluster of real ``trio-raft serve`` processes, under load.

In every test three KV clients (:class:`._harness.KVLoad`) write all along; at the end the
recorded history must be linearizable and every acknowledged write must be on every member.
Their URL lists name every node the test may run (future joiners included): a URL that
nobody serves is skipped.

* grow 3 -> 5 with ``serve --join``, then shrink back to 3 with ``trio-raft member remove``;
* ``kill -9`` a node, replace it with a fresh one (new id, empty disk, ``--join``), then
  remove the dead one;
* remove the leader (it hands over, and its process exits 0);
* ``transfer_leader`` 20 times under load, each one succeeding;
* a node removed while it was down comes back with its old data and changes nothing.

Figures (``FIGURE`` lines, ``-s``): the time from starting a joiner to "voter", the longest
gap between acknowledged writes around each change.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from trio_raft import kv
from trio_raft.testing import check_linearizable

from ._harness import (
    CLIENT_TIMEOUT_S,
    DEADLINE_S,
    KVLoad,
    NodePorts,
    ProcessCluster,
    allocate_ports,
    as_int,
    open_process_cluster,
)

pytestmark = pytest.mark.skipif(
    not hasattr(kv.KVClient, "members"),
    reason="needs the KV client's membership operations (KVClient.members, add_learner, ...)",
)

CLIENTS = 3
FOUNDERS = ("n1", "n2", "n3")
"""The nodes of the cluster file."""
EVERYONE = ("n1", "n2", "n3", "n4", "n5")


def ports_for_everyone() -> tuple[dict[str, NodePorts], dict[str, NodePorts]]:
    """Ports of every node the test may run, and those of the cluster file's nodes."""
    ports = allocate_ports(EVERYONE)
    return ports, {n: ports[n] for n in FOUNDERS}


def write_gap(acks: Sequence[float], start: float, end: float) -> float:
    """The longest time between two consecutive write acknowledgements around ``[start, end]``
    (from the last one before ``start`` to the first one after ``end``)."""
    times = sorted(acks)
    before = [t for t in times if t <= start][-1:]
    during = [t for t in times if start < t < end]
    after = [t for t in times if t >= end][:1]
    points = before + during + after
    return max((b - a for a, b in itertools.pairwise(points)), default=end - start)


async def voters(cluster: ProcessCluster, ids: Sequence[str]) -> set[str]:
    """The voters of the configuration, as the leader tells a client of ``ids``."""
    async with cluster.client(ids) as client:
        members = await client.members()
    found = members["voters"]
    assert isinstance(found, dict), members
    return set(found)


async def check_end(cluster: ProcessCluster, load: KVLoad, members: Sequence[str]) -> int:
    """Every member converged on the same state holding every acknowledged write, and the
    history is linearizable; returns the final applied index."""
    statuses = await cluster.wait_converged(members)
    everything = [*load.acked, *load.maybe, "x", "y"]
    values = {n: await cluster.stale_reads(n, everything) for n in members}
    first = values[members[0]]
    assert all(v == first for v in values.values()), values
    assert {k: first[k] for k in load.acked} == load.acked, "an acknowledged write was lost"
    verdict = check_linearizable(load.history.operations())
    assert verdict.ok is True, verdict.explanation
    return as_int(statuses[members[0]] or {}, "applied")


async def test_grow_to_five_with_join_and_shrink_back_with_member_remove(
    tmp_path: Path,
) -> None:
    ports, founders = ports_for_everyone()
    figures: list[str] = []
    with trio.fail_after(DEADLINE_S):
        async with open_process_cluster(tmp_path, ports=founders) as cluster:
            await cluster.wait_leader()
            urls = [f"ws://127.0.0.1:{ports[n].client}/kv" for n in EVERYONE]
            load = KVLoad(urls, cluster.token)
            async with trio.open_nursery() as nursery:
                for client_id in range(CLIENTS):
                    nursery.start_soon(load.client, client_id)
                await load.wait_acks(20)
                for size, new in enumerate(("n4", "n5"), start=4):
                    start = trio.current_time()
                    await cluster.join(new, ports[new], via=FOUNDERS)
                    await cluster.wait_log(new, f"{new}: voter in a cluster of {size}")
                    end = trio.current_time()
                    figures.append(
                        f"{new} joined and was promoted {end - start:.3f} s after its process "
                        f"started (longest write gap {write_gap(load.acks, start, end):.3f} s)"
                    )
                    await load.wait_acks(20)
                assert await voters(cluster, FOUNDERS) == set(EVERYONE)
                for gone in ("n4", "n5"):
                    start = trio.current_time()
                    await cluster.cli(
                        "member", "remove", gone, "--url", cluster.address("n1").client,
                        "--url", cluster.address("n2").client, "--timeout", str(CLIENT_TIMEOUT_S),
                    )  # fmt: skip
                    assert await cluster.wait_exit(gone) == 0, cluster.log(gone)
                    assert f"{gone}: removed from the cluster (configuration at index " in (
                        cluster.log(gone)
                    )
                    end = trio.current_time()
                    figures.append(
                        f"{gone} removed and exited in {end - start:.3f} s (longest write gap "
                        f"{write_gap(load.acks, start, end):.3f} s)"
                    )
                    await load.wait_acks(20)
                load.stop()
            assert await voters(cluster, FOUNDERS) == set(FOUNDERS)
            applied = await check_end(cluster, load, FOUNDERS)
    print(
        f"FIGURE membership grow/shrink: {'; '.join(figures)}; {load.completed} operations, "
        f"{load.unknown} unknown, final applied index {applied}"
    )


async def test_replace_a_dead_node_with_a_new_one_then_remove_it(tmp_path: Path) -> None:
    ports, founders = ports_for_everyone()
    with trio.fail_after(DEADLINE_S):
        async with open_process_cluster(tmp_path, ports=founders) as cluster:
            leader, _ = await cluster.wait_leader()
            dead = next(n for n in FOUNDERS if n != leader)
            alive = [n for n in FOUNDERS if n != dead]
            urls = [f"ws://127.0.0.1:{ports[n].client}/kv" for n in EVERYONE]
            load = KVLoad(urls, cluster.token)
            async with trio.open_nursery() as nursery:
                for client_id in range(CLIENTS):
                    nursery.start_soon(load.client, client_id)
                await load.wait_acks(20)
                await cluster.kill(dead)  # the machine is gone, with its disk
                await load.wait_acks(20)
                start = trio.current_time()
                await cluster.join("n4", ports["n4"], via=alive)
                await cluster.wait_log("n4", "n4: voter in a cluster of 4")
                joined_s = trio.current_time() - start
                async with cluster.client(alive) as admin:
                    await admin.remove(dead)
                await load.wait_acks(20)
                load.stop()
            members = [*alive, "n4"]
            assert await voters(cluster, alive) == set(members)
            applied = await check_end(cluster, load, members)
    print(
        f"FIGURE membership replace: n4 replaced {dead} (killed) and was a voter {joined_s:.3f} s "
        f"after its start; {load.completed} operations, {load.unknown} unknown, final applied "
        f"index {applied}"
    )


async def test_remove_the_leader(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE_S):
        async with open_process_cluster(tmp_path) as cluster:
            leader, statuses = await cluster.wait_leader()
            term = as_int(statuses[leader] or {}, "term")
            others = [n for n in FOUNDERS if n != leader]
            load = KVLoad(cluster.urls(), cluster.token)
            async with trio.open_nursery() as nursery:
                for client_id in range(CLIENTS):
                    nursery.start_soon(load.client, client_id)
                await load.wait_acks(30)
                start = trio.current_time()
                async with cluster.client() as admin:
                    await admin.remove(leader)
                assert await cluster.wait_exit(leader) == 0, cluster.log(leader)
                assert f"{leader}: removed from the cluster" in cluster.log(leader)
                new_leader, _ = await cluster.wait_leader(others, min_term=term + 1)
                await load.wait_acks(30)
                gap = write_gap(load.acks, start, trio.current_time())
                load.stop()
            assert await voters(cluster, others) == set(others)
            applied = await check_end(cluster, load, others)
    print(
        f"FIGURE membership remove leader: {leader} removed itself, {new_leader} leads; longest "
        f"write gap {gap:.3f} s; {load.completed} operations, {load.unknown} unknown, final "
        f"applied index {applied}"
    )


async def test_twenty_leadership_transfers_under_load(tmp_path: Path) -> None:
    durations: list[float] = []
    gaps: list[float] = []
    with trio.fail_after(DEADLINE_S):
        async with open_process_cluster(tmp_path) as cluster:
            leader, _ = await cluster.wait_leader()
            load = KVLoad(cluster.urls(), cluster.token)
            async with trio.open_nursery() as nursery:
                for client_id in range(CLIENTS):
                    nursery.start_soon(load.client, client_id)
                await load.wait_acks(20)
                async with cluster.client() as admin:
                    for _ in range(20):
                        start = trio.current_time()
                        new_leader = await admin.transfer_leader()
                        end = trio.current_time()
                        assert new_leader != leader, "the transfer did not move leadership"
                        leader = new_leader
                        durations.append(end - start)
                        await load.wait_acks(10)
                        gaps.append(write_gap(load.acks, start, trio.current_time()))
                load.stop()
            statuses = await cluster.statuses()
            assert all(s is not None and s["leader"] == leader for s in statuses.values())
            applied = await check_end(cluster, load, FOUNDERS)
    durations.sort()
    gaps.sort()
    print(
        f"FIGURE membership 20 transfers: each took {durations[0]:.3f} to {durations[-1]:.3f} s "
        f"(median {durations[10]:.3f}); longest write gap around one: median {gaps[10]:.3f} s, "
        f"worst {gaps[-1]:.3f} s; {load.completed} operations, {load.unknown} unknown, final "
        f"applied index {applied}"
    )


async def test_a_node_removed_while_down_comes_back_and_changes_nothing(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE_S):
        async with open_process_cluster(tmp_path) as cluster:
            leader, _ = await cluster.wait_leader()
            victim = next(n for n in FOUNDERS if n != leader)
            others = [n for n in FOUNDERS if n != victim]
            load = KVLoad(cluster.urls(others), cluster.token)
            async with trio.open_nursery() as nursery:
                for client_id in range(CLIENTS):
                    nursery.start_soon(load.client, client_id)
                await load.wait_acks(20)
                await cluster.kill(victim)
                async with cluster.client(others) as admin:
                    await admin.remove(victim)
                await load.wait_acks(20)
                leader, before = await cluster.wait_leader(others)
                while True:  # the leader replicates to a removed peer a while: wait it out
                    followers = (before[leader] or {}).get("followers") or {}
                    assert isinstance(followers, dict), before[leader]
                    if victim not in followers:
                        break
                    await trio.sleep(0.1)
                    leader, before = await cluster.wait_leader(others)
                term = as_int(before[leader] or {}, "term")
                await cluster.start(victim)  # its old data: a configuration that lists it
                # Ten election timeouts of campaigning (PreVote refused: its log is behind).
                await cluster.wait_log(victim, f"{victim}: no leader has contacted this node")
                await load.wait_acks(20)
                after = await cluster.statuses(others)
                load.stop()
            assert all(s is not None and (s["leader"], s["term"]) == (leader, term)
                       for s in after.values()), after  # fmt: skip
            mine = await cluster.status(victim)
            assert mine is not None and mine["role"] != "leader", mine
            assert as_int(mine, "term") <= term, mine
            assert await voters(cluster, others) == set(others)
            applied = await check_end(cluster, load, others)
    print(
        f"FIGURE membership removed node returns: {victim} ran 10 election timeouts beside "
        f"{leader} (term {term} throughout); final applied index {applied}"
    )
