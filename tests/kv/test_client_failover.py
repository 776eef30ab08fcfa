"""How the KV client rides out a leader crash: it tries the other members at once, ignores
hints that point at the leader it just lost, and while the cluster elects it polls at a steady
short pace (``ELECTION_PAUSE_S``) instead of backing off exponentially, so a write lands soon
after the new leader is elected."""

from __future__ import annotations

import pytest
import trio

from tests.kv.test_server_client import TEST_S, kv_cluster
from trio_raft.kv import KVClient, open_client
from trio_raft.kv._client import _Attempts


async def test_a_leader_crash_costs_only_election_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[tuple[bool, int]] = []
    original = KVClient._backoff

    async def record(self: KVClient, attempts: _Attempts) -> None:
        pauses.append((attempts.electing, attempts.failures))
        await original(self, attempts)

    monkeypatch.setattr(KVClient, "_backoff", record)
    async with kv_cluster() as cluster:
        leader = await cluster.leader()
        async with open_client([cluster.urls[leader.id]] + [
            u for n, u in cluster.urls.items() if n != leader.id
        ], timeout_s=TEST_S) as client:  # fmt: skip
            await client.put("before", "1")  # connected to the leader, and learned the members
            pauses.clear()
            with trio.fail_after(TEST_S):
                async with trio.open_nursery() as nursery:
                    for i in range(8):
                        nursery.start_soon(client.put, f"during{i}", "x")
                    await cluster.crash(leader.id)
            assert await client.get("during7") == b"x"
    assert pauses, "an election happened: some call had to wait for it"
    exponential = [p for p in pauses if not p[0]]
    assert not exponential, f"only short election pauses expected, got {pauses}"


async def test_a_hint_at_an_unreachable_leader_is_not_followed() -> None:
    """A follower that still names the crashed leader: the client does not dial it again."""
    async with kv_cluster() as cluster:
        leader = await cluster.leader()
        async with open_client(list(cluster.urls.values()), timeout_s=TEST_S) as client:
            await client.put("k", "v")
            await cluster.crash(leader.id)
            client._failed_urls[cluster.urls[leader.id]] = None  # as after a failed dial
            follower = next(n for n in cluster.nodes if n != leader.id)
            attempts = _Attempts("test")
            from trio_raft.kv import _protocol as p

            failure = p.Failure(
                1, p.ErrorCode.NOT_LEADER, "not the leader", cluster.urls[leader.id]
            )
            link = type("L", (), {"url": cluster.urls[follower], "dead": False})()
            client._drop = lambda link: None  # type: ignore[method-assign]
            assert client._retry_at_once(link, failure, attempts) is False
            assert client._hint is None and attempts.electing is True
