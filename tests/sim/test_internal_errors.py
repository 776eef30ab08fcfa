"""A node task that raises an unexpected exception stops the node (fail-stop), loudly."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable

import pytest
import trio
import trio.testing

from trio_raft import Config, MemoryStorage, Node, NodeCrashedError, RaftError, open_node
from trio_raft._core._state import RaftState
from trio_raft._types import MAX_TERM, HardState, Role, StoredState
from trio_raft.testing import (
    InvariantViolation,
    KVStateMachine,
    MemoryNetwork,
    open_simulated_cluster,
)


class _BrokenSnapshots:
    """A :class:`KVStateMachine` whose snapshots fail (wrapped: the class is final)."""

    def __init__(self) -> None:
        self._kv = KVStateMachine()

    def apply(self, command: object) -> object:
        return self._kv.apply(command)

    def query(self, query: object) -> object:
        return self._kv.query(query)

    def snapshot(self) -> list[bytes]:
        raise RuntimeError("boom in snapshot")

    def restore(self, chunks: Iterable[bytes]) -> None:
        self._kv.restore(chunks)


async def test_internal_error_stops_the_node_with_a_typed_error(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The error leaves ``open_node`` as NodeCrashedError (not an ExceptionGroup) with the
    original as ``__cause__``; one CRITICAL line names the node and the task and says it is a
    bug; a proposal waiting in another task fails with the same error instead of hanging."""
    network = MemoryNetwork(random.Random(0))
    outcome: list[BaseException] = []

    async def propose_forever(node: Node) -> None:
        try:
            while True:
                await node.propose(("put", "k", "v"))
        except RaftError as exc:
            outcome.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as outer:
            outer.start_soon(network.run)
            with pytest.raises(NodeCrashedError) as info:
                async with open_node(
                    "n1", ["n1"], state_machine=_BrokenSnapshots(),
                    transport=network.transport("n1"), storage=MemoryStorage(),
                    config=Config(snapshot_entries=3), rng=random.Random(0),
                ) as node:  # fmt: skip
                    await node.wait_leader()
                    outer.start_soon(propose_forever, node)
                    await trio.sleep_forever()
            outer.cancel_scope.cancel()
    error = info.value
    assert isinstance(error.__cause__, RuntimeError)
    assert str(error.__cause__) == "boom in snapshot"
    assert (error.node_id, error.task) == ("n1", "applier")  # snapshot() runs in the applier
    assert "bug" in str(error)
    records = [r for r in caplog.records if r.name == "trio_raft.node"]
    assert len(records) == 1, records
    assert records[0].levelno == logging.CRITICAL
    message = records[0].getMessage()
    assert "'n1'" in message and "applier" in message and "bug" in message
    assert len(outcome) == 1 and isinstance(outcome[0], NodeCrashedError), outcome
    assert isinstance(outcome[0].__cause__, RuntimeError)


async def test_crashed_node_fails_the_simulation_with_its_seed(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the simulator an internal error is a test failure that names the seed."""
    original = RaftState.next_append
    calls = 0

    def flaky(self: RaftState, *args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 50:
            raise RuntimeError("injected bug")
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(RaftState, "next_append", flaky)
    with trio.fail_after(30), pytest.raises(InvariantViolation) as info:
        async with open_simulated_cluster(3, seed=7) as cluster:
            await cluster.wait_leader()
            await trio.sleep(10)
    message = str(info.value)
    assert "Fail-stop violated" in message and "seed=7" in message
    assert "injected bug" in message and "replicator" in message
    assert isinstance(info.value.__cause__, NodeCrashedError)


async def test_a_node_at_max_term_stays_up_and_says_why_it_cannot_campaign(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A node whose term reached MAX_TERM has no higher term to campaign in. Across many
    election timeouts it stays a follower, sends no message the wire would refuse (the network
    runs the real codec) and logs one ERROR saying so, rather than crashing."""
    network = MemoryNetwork(random.Random(0), wire_codec=True)
    storage = MemoryStorage(StoredState(HardState(MAX_TERM, None), ()))
    config = Config()
    with trio.fail_after(config.election_timeout_s_max * 30):
        async with trio.open_nursery() as outer:
            outer.start_soon(network.run)
            async with open_node(
                "n1", ["n1", "n2", "n3"], state_machine=KVStateMachine(),
                transport=network.transport("n1"), storage=storage, config=config,
                rng=random.Random(0),
            ) as node:  # fmt: skip
                await trio.sleep(config.election_timeout_s_max * 20)
                status = node.status
            outer.cancel_scope.cancel()
    assert (status.role, status.term) == (Role.FOLLOWER, MAX_TERM)
    records = [
        r for r in caplog.records if r.name == "trio_raft.node" and r.levelno >= logging.ERROR
    ]
    assert len(records) == 1, records
    assert "MAX_TERM" in records[0].getMessage()
