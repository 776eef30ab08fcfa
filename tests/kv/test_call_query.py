"""``call`` and ``query``: any state machine behind the client port (here the bank of
``examples/bank.py``), with redirects, at-most-once calls, and errors that say what happened.

Three nodes in this process on :class:`~trio_raft.testing.MemoryNetwork`, each serving its
client port on a real loopback socket (port 0), so these tests run on the real clock, each
bounded by :func:`trio.fail_after`.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType

import attrs
import pytest
import trio

from trio_raft import Config, MemoryStorage, Node, Status, open_node
from trio_raft.kv import (
    CommandFailedError,
    KVRequestError,
    KVServer,
    OutcomeUnknownError,
    open_client,
    serve_kv,
)
from trio_raft.kv._protocol import MAX_REQUEST_BYTES
from trio_raft.testing import MemoryNetwork

FAST = Config(election_timeout_s_min=0.15, election_timeout_s_max=0.3, heartbeat_s=0.03)
TEST_S = 5.0


def applied_through(index: int) -> Callable[[Status], bool]:
    """A ``wait_status`` predicate: the node applied every entry up to ``index``."""
    return lambda s: s.last_applied >= index


def _load_bank() -> ModuleType:
    path = Path(__file__).parent.parent.parent / "examples" / "bank.py"
    spec = importlib.util.spec_from_file_location("bank_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bank_example"] = module
    spec.loader.exec_module(module)
    return module


bank = _load_bank()


@attrs.define
class Cluster:
    nodes: dict[str, Node] = attrs.Factory(dict)
    banks: dict[str, object] = attrs.Factory(dict)
    servers: dict[str, KVServer] = attrs.Factory(dict)
    urls: dict[str, str] = attrs.Factory(dict)

    async def leader(self) -> Node:
        return self.nodes[await next(iter(self.nodes.values())).wait_leader()]


@pytest.fixture
async def cluster(nursery: trio.Nursery) -> AsyncIterator[Cluster]:
    network = MemoryNetwork(random.Random(3), delay_s_min=0.0, delay_s_max=0.001)
    nursery.start_soon(network.run)
    ids = ["n1", "n2", "n3"]
    c = Cluster()

    async def run(nid: str, *, task_status: trio.TaskStatus[None]) -> None:
        sm = bank.Bank()
        async with open_node(
            nid, ids, state_machine=sm, transport=network.transport(nid),
            storage=MemoryStorage(), rng=random.Random(nid), config=FAST,
        ) as node:  # fmt: skip
            c.nodes[nid], c.banks[nid] = node, sm
            async with trio.open_nursery() as inner:
                c.servers[nid] = await inner.start(
                    lambda task_status: serve_kv(
                        node, host="127.0.0.1", port=0, leader_urls=c.urls,
                        task_status=task_status,
                    )
                )  # fmt: skip
                c.urls[nid] = f"ws://127.0.0.1:{c.servers[nid].port}/kv"
                task_status.started()
                await trio.sleep_forever()

    for nid in ids:
        await nursery.start(run, nid)
    yield c


async def test_calls_and_queries_reach_any_state_machine_through_any_node(
    cluster: Cluster,
) -> None:
    with trio.fail_after(TEST_S):
        leader = await cluster.leader()
        follower = next(nid for nid in cluster.nodes if nid != leader.id)
        async with open_client([cluster.urls[follower]]) as client:  # redirected to the leader
            assert await client.call(["open", "alice", 100]) == 100
            assert await client.call(["open", "bob", 5]) == 5
            tid = bank.new_transfer_id()
            assert await client.call(["transfer", tid, "alice", "bob", 30]) == [70, 35]
            # Resending a transfer id answers as the first time and moves nothing more.
            assert await client.call(["transfer", tid, "alice", "bob", 30]) == [70, 35]
            assert await client.query(["balances"]) == {"alice": 70, "bob": 35}
            assert await client.query(["balance", "bob"], consistency="stale") in (5, 35)
        # Every replica applied the same commands.
        await leader.wait_status(lambda s: s.last_applied == s.commit_index)
        for nid, node in cluster.nodes.items():
            await node.wait_status(applied_through(leader.status.commit_index))
            assert cluster.banks[nid].balances == {"alice": 70, "bob": 35}  # type: ignore[attr-defined]


async def test_a_command_that_apply_refuses_fails_with_its_reason(cluster: Cluster) -> None:
    with trio.fail_after(TEST_S):
        await cluster.leader()
        async with open_client(list(cluster.urls.values())) as client:
            await client.call(["open", "carol", 10])
            with pytest.raises(CommandFailedError, match="InsufficientFunds: 'carol' has 10"):
                await client.call(["transfer", bank.new_transfer_id(), "carol", "carol", 11])
            with pytest.raises(CommandFailedError, match="ValueError: unknown command"):
                await client.call(["rob", "carol"])
            with pytest.raises(KVRequestError, match="unknown query"):
                await client.query(["everything"])
            assert await client.query(["balance", "carol"]) == 10


@pytest.mark.parametrize(
    ("command", "words"),
    [({1, 2}, "command"), ([b"x" * 10] * 100, None), (object(), "command")],
)
async def test_commands_outside_the_data_model_are_refused_before_sending(
    cluster: Cluster, command: object, words: str | None
) -> None:
    with trio.fail_after(TEST_S):
        async with open_client(list(cluster.urls.values())) as client:
            if words is None:
                with pytest.raises(CommandFailedError):  # valid, and apply refuses it
                    await client.call(command)
            else:
                with pytest.raises(KVRequestError, match=words):
                    await client.call(command)


async def test_an_oversized_command_is_refused_without_appending(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the client port's request limit: refused by the client; over the cluster's
    ``max_command_bytes`` (here lowered): refused by the server. Nothing is appended."""
    with trio.fail_after(TEST_S):
        leader = await cluster.leader()
        before = leader.status.last_log_index
        async with open_client(list(cluster.urls.values())) as client:
            with pytest.raises(KVRequestError, match="over the 524288 a server accepts"):
                await client.call(["open", "x" * MAX_REQUEST_BYTES, 1])
            for node in cluster.nodes.values():
                small = attrs.evolve(node._state.config, max_command_bytes=100)
                monkeypatch.setattr(node._state, "config", small)
            with pytest.raises(KVRequestError, match="max_command_bytes"):
                await client.call(["open", "x" * 200, 1])
        assert leader.status.last_log_index == before


async def test_a_call_whose_outcome_is_unknown_is_not_resent(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader answers ``outcome_unknown``: the client raises instead of resending (which
    could apply the command twice)."""
    with trio.fail_after(TEST_S):
        await cluster.leader()
        calls = 0
        original = KVServer._call

        async def lose(self: KVServer, command: object) -> object:
            nonlocal calls
            calls += 1
            from trio_raft import LeadershipLostError

            raise LeadershipLostError("lost leadership after appending (test)")

        monkeypatch.setattr(KVServer, "_call", lose)
        async with open_client(list(cluster.urls.values())) as client:
            with pytest.raises(OutcomeUnknownError) as info:
                await client.call(["open", "dave", 1])
        assert info.value.may_have_applied is True
        assert calls == 1
        monkeypatch.setattr(KVServer, "_call", original)
