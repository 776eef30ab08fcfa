"""Three separate ``trio-raft serve`` processes elect a leader and replicate KV writes."""

from __future__ import annotations

from pathlib import Path

import trio

from ._harness import DEADLINE_S, as_int, open_process_cluster


async def test_three_processes_elect_a_leader_and_replicate(tmp_path: Path) -> None:
    keys = {f"key{i}": f"value{i}" for i in range(30)}
    with trio.fail_after(DEADLINE_S):
        async with open_process_cluster(tmp_path) as cluster:
            leader, statuses = await cluster.wait_leader()
            assert sum(s is not None and s["role"] == "leader" for s in statuses.values()) == 1

            async with cluster.client() as client:
                for key, value in keys.items():
                    await client.put(key, value)
                assert await client.cas("key0", "value0", "swapped") is True
                assert await client.cas("key1", "wrong", "nope") is False
                assert await client.delete("key2") is True
                assert await client.get("key0") == b"swapped"
                assert await client.get("key2") is None
            expected: dict[str, str | None] = {**keys, "key0": "swapped", "key2": None}

            statuses = await cluster.wait_converged()
            applied = {as_int(s, "applied") for s in statuses.values() if s is not None}
            # 30 puts, 2 cas, 1 delete, the session's opening and the leader's no-op, at least.
            assert len(applied) == 1 and applied.pop() >= 35, statuses
            for node_id in cluster.ids:
                assert await cluster.stale_reads(node_id, expected) == expected, node_id
            log = cluster.log(leader)
            assert f"{leader}: serving peers on" in log
    # SIGTERM stopped every node cleanly.
    assert cluster.exit_codes == dict.fromkeys(cluster.ids, 0)
