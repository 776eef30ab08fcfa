"""The runnable examples of the docs (``docs/source/examples``) must keep working.

The tutorial and the simulator guide also include the tests below verbatim, each between a pair
of ``# -- tutorial: ...`` or ``# -- simulator: ...`` and ``# -- end of ...`` marker comments: keep
the markers when editing them.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import hypothesis
import hypothesis.strategies as st
import pytest
import trio
import trio.testing

from trio_raft import (
    AppendRequest,
    Entry,
    HardState,
    LeadershipLostError,
    Message,
    Node,
    NodeClosedError,
    NotLeaderError,
    ProposalDroppedError,
    Role,
    StoredState,
    VoteRequest,
    VoteResponse,
)
from trio_raft.testing import (
    ACTIONS,
    Fault,
    History,
    KVStateMachine,
    Verdict,
    apply_fault,
    check_linearizable,
    open_simulated_cluster,
    run_chaos,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "source" / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


counter = _load("counter")
if TYPE_CHECKING:  # loaded from its file at run time: a class the type checker cannot see
    Counter = Any
else:
    Counter = counter.Counter


def test_counter_example_main(capsys: pytest.CaptureFixture[str]) -> None:
    trio.run(counter.main, clock=trio.testing.MockClock(autojump_threshold=0))
    out = capsys.readouterr().out
    expected = (
        r"leader elected: (?P<leader>n\d)\n"
        r"(n1 is not the leader: retrying on (?P=leader)\n)?"
        r"client-1 adds 10 -> counter = 10\n"
        r"client-1 adds 10 -> counter = 20\n"
        r"client-1 adds 10 -> counter = 30\n"
        r"linearizable read on (?P=leader): 30\n"
        r"every replica: \{'n1': 30, 'n2': 30, 'n3': 30\}\n"
    )
    assert re.fullmatch(expected, out), out


def test_counter_ignores_duplicates_and_malformed_commands() -> None:
    c = Counter()
    assert c.apply(("alice", 1, 5)) == 5
    assert c.apply(("alice", 1, 5)) == 5  # a retried command is applied once
    assert c.apply(("bob", 1, 2)) == 7
    assert c.apply("nonsense") is None
    assert c.query(None) == 7


# -- tutorial: testing the counter in the simulator --------------------------------------------
@pytest.mark.parametrize("seed", range(10))
async def test_counter_survives_a_leader_crash(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_simulated_cluster(3, seed=seed, state_machine_factory=Counter) as cluster:
        with trio.fail_after(60):  # virtual seconds: a hang fails fast instead of forever
            leader = await cluster.wait_leader()
            assert await leader.propose(("alice", 1, 5)) == 5

            await cluster.crash(leader.id)
            assert await cluster.propose(("alice", 2, 5)) == 10  # waits for a new leader
            assert await cluster.propose(("alice", 2, 5)) == 10  # a retry is not applied twice

            await cluster.start(leader.id)  # restarts from what its storage had synced
            await cluster.wait_converged()
        values = {nid: cast(Counter, sm).value for nid, sm in cluster.state_machines.items()}
        assert values == {"n1": 10, "n2": 10, "n3": 10}, f"seed={seed}"


# -- end of tutorial ---------------------------------------------------------------------------


# The examples of the simulator guide (docs/source/simulator.rst), included from here verbatim.


# -- simulator: partition --------------------------------------------------------------------
async def test_a_cut_off_leader_is_replaced(autojump_clock: trio.testing.MockClock) -> None:
    async with open_simulated_cluster(5, seed=3) as cluster:
        with trio.fail_after(60):  # virtual seconds
            old = await cluster.wait_leader()
            rest = [n for n in cluster.node_ids if n != old.id]
            cluster.partition([old.id], rest)

            new = await cluster.wait_leader(among=rest)
            assert new.status.term > old.status.term
            assert await new.propose(("put", "k", "v")) is None
            # CheckQuorum: the old leader notices it lost its majority and steps down.
            await old.wait_status(lambda s: s.role is not Role.LEADER)

            cluster.heal()
            await cluster.propose(("put", "k", "w"))
            await cluster.wait_converged()
        states = {cast(KVStateMachine, sm).as_dict()["k"] for sm in cluster.state_machines.values()}
        assert states == {"w"}


# -- end of simulator: partition ---------------------------------------------------------------


# -- simulator: lossy network ------------------------------------------------------------------
async def test_progress_on_a_bad_network(autojump_clock: trio.testing.MockClock) -> None:
    async with open_simulated_cluster(3, seed=5) as cluster:
        net = cluster.network
        net.set_default_link(drop=0.2, duplicate=0.1, reorder=0.3)
        net.set_link("n1", "n2", delay_s_min=0.05, delay_s_max=0.2)  # one slow direction

        for i in range(10):
            await cluster.propose(("append", "log", str(i)))

        net.reset_faults()
        await cluster.wait_converged()
        stats = net.stats()
        assert stats.total.dropped > 0 and stats.total.duplicated > 0
        assert stats.by_type["AppendRequest"].sent > 10


# -- end of simulator: lossy network -----------------------------------------------------------


# -- simulator: hold and release ---------------------------------------------------------------
async def test_commit_waits_for_a_majority(autojump_clock: trio.testing.MockClock) -> None:
    async with open_simulated_cluster(3, seed=1) as cluster:
        leader = await cluster.wait_leader()

        def hold_entries(m: Message) -> Verdict:
            if isinstance(m, AppendRequest) and m.entries:
                return Verdict.HOLD
            return Verdict.DELIVER

        cluster.network.hook = hold_entries
        async with trio.open_nursery() as nursery:
            nursery.start_soon(leader.propose, ("put", "k", "v"))
            await trio.sleep(1.0)  # heartbeats flow, entries do not
            status = leader.status
            assert status.commit_index < status.last_log_index  # appended, not committed
            assert cluster.network.held  # the AppendRequests carrying the entry

            cluster.network.hook = None
            cluster.network.release()  # deliver them now; propose() then returns
        assert leader.status.commit_index == leader.status.last_log_index


# -- end of simulator: hold and release --------------------------------------------------------


# -- simulator: deliver ------------------------------------------------------------------------
async def test_a_stale_candidate_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    log = (Entry(1, 1, ("put", "a", "1")), Entry(2, 2, ("put", "b", "2")))
    initial = {"n1": StoredState(HardState(term=2), log)}
    async with open_simulated_cluster(3, seed=1, initial_state=initial, start=False) as cluster:
        await cluster.start("n1")  # alone: n2 exists only as the sender below
        # n2 asks for n1's vote in term 3, but its log ends in term 1: older than n1's.
        request = VoteRequest("n2", "n1", term=3, last_log_index=1, last_log_term=1)
        replies = await cluster.deliver(request, settle_s=0.01)
        assert replies == [VoteResponse("n1", "n2", term=3, granted=False)]
        assert cluster.node("n1").status.term == 3  # it did adopt the higher term


# -- end of simulator: deliver -----------------------------------------------------------------


# -- simulator: fault schedule -----------------------------------------------------------------
async def test_a_fixed_fault_schedule(autojump_clock: trio.testing.MockClock) -> None:
    schedule = [
        Fault(after_s=1.0, action="crash", nodes=("n1",)),
        Fault(after_s=0.5, action="partition", nodes=("n2",)),  # n2 alone, n3..n5 together
        Fault(after_s=2.0, action="heal"),
        Fault(after_s=0.5, action="restart_all"),
    ]
    async with open_simulated_cluster(5, seed=11) as cluster:
        for fault in schedule:
            await apply_fault(cluster, fault)  # sleeps fault.after_s first
        await cluster.propose(("put", "k", "v"))
        await cluster.wait_converged()


# -- end of simulator: fault schedule ----------------------------------------------------------


# -- simulator: hypothesis ---------------------------------------------------------------------
_fault = st.builds(
    Fault,
    after_s=st.floats(0.0, 2.0),
    action=st.sampled_from(ACTIONS),
    nodes=st.lists(st.sampled_from(["n1", "n2", "n3"]), min_size=1, max_size=2, unique=True).map(
        tuple
    ),
)


@hypothesis.settings(max_examples=5, deadline=None, database=None)
@hypothesis.given(schedule=st.lists(_fault, max_size=5), seed=st.integers(0, 1000))
def test_any_fault_schedule_keeps_the_cluster_safe(schedule: list[Fault], seed: int) -> None:
    async def scenario() -> None:
        async with open_simulated_cluster(3, seed=seed) as cluster:
            for fault in schedule:
                await apply_fault(cluster, fault)
            cluster.heal()
            await apply_fault(cluster, Fault(0.0, "disk_ok", cluster.node_ids))
            await apply_fault(cluster, Fault(0.0, "restart_all"))
            with trio.fail_after(30):
                await cluster.propose(("put", "k", "v"))
                await cluster.wait_converged()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


# -- end of simulator: hypothesis --------------------------------------------------------------


# -- simulator: history ------------------------------------------------------------------------
async def put_or_get(node: Node, history: History, client: int, op: tuple[str, ...]) -> None:
    """Run one KV operation on ``node`` and record what the client saw."""
    handle = history.invoke(client, op, trio.current_time())
    try:
        with trio.fail_after(1.0):
            if op[0] == "get":
                result = await node.read(op)
            else:
                result = await node.propose(op)
    except (NotLeaderError, ProposalDroppedError, NodeClosedError):
        history.fail(handle)  # definitely not applied: leave it out
    except (LeadershipLostError, trio.TooSlowError):
        if op[0] == "get":
            history.fail(handle)  # a read that returned nothing had no effect
        else:
            history.unknown(handle)  # a write may still take effect, now or later
    else:
        history.complete(handle, result, trio.current_time())


async def test_history_is_linearizable(autojump_clock: trio.testing.MockClock) -> None:
    history = History()
    async with open_simulated_cluster(3, seed=2) as cluster:
        leader = await cluster.wait_leader()

        async def client(client: int) -> None:
            for i in range(20):
                op = ("get", "k") if i % 3 == 0 else ("append", "k", f"{client}.{i},")
                node = cluster.leader()
                if node is None:
                    await trio.sleep(0.1)  # no leader right now: nothing invoked
                    continue
                await put_or_get(node, history, client, op)

        async with trio.open_nursery() as nursery:
            for c in range(3):
                nursery.start_soon(client, c)
            await trio.sleep(0.2)
            await cluster.crash(leader.id)  # operations in flight fail or end unknown

    result = check_linearizable(history.operations())
    assert result.ok, result.explanation


# -- end of simulator: history -----------------------------------------------------------------


# -- simulator: chaos --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [1, 2])
def test_chaos(seed: int) -> None:
    report = trio.run(
        functools.partial(run_chaos, seed, nodes=5, duration_s=20.0),
        clock=trio.testing.MockClock(autojump_threshold=0),
    )
    assert report.linearizability.ok, f"seed={seed}: {report.linearizability.explanation}"
    assert report.acknowledged_writes > 0


# -- end of simulator: chaos -------------------------------------------------------------------
