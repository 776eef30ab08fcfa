"""``Node.propose_nowait``: many requests from one task, no task or wait per request."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import cast

import pytest
import trio
import trio.testing

from trio_raft import LeadershipLostError, NodeClosedError, NotLeaderError, Proposal
from trio_raft._node import INBOX_SIZE
from trio_raft.testing import KVStateMachine, open_simulated_cluster


async def test_proposals_from_one_task_commit_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with open_simulated_cluster(3, seed=3) as cluster:
            leader = await cluster.wait_leader()
            await cluster.wait_converged()
            proposals = [leader.propose_nowait(("append", "k", str(i))) for i in range(100)]
            assert all(p.index is None and not p.done for p in proposals)
            results = [await p.result() for p in proposals]  # append returns the new value
            assert results == ["".join(str(j) for j in range(i + 1)) for i in range(100)]
            assert all(p.done for p in proposals)
            indexes = [p.index for p in proposals]
            first = proposals[0].index
            assert first is not None
            assert indexes == list(range(first, first + 100))
            assert {p.term for p in proposals} == {leader.status.term}
            state = cast(KVStateMachine, cluster.state_machines[leader.id]).as_dict()
            assert state["k"] == "".join(str(i) for i in range(100))
            assert await proposals[0].result() == "0"  # awaited again: the same outcome


async def test_a_follower_fails_the_proposal_and_a_full_inbox_refuses_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with open_simulated_cluster(3, seed=3) as cluster:
            leader = await cluster.wait_leader()
            await cluster.wait_converged()
            follower = cluster.node(next(n for n in cluster.node_ids if n != leader.id))
            proposal = follower.propose_nowait(("put", "k", "v"))
            with pytest.raises(NotLeaderError) as info:
                await proposal.result()
            assert info.value.leader_id == leader.id
            assert proposal.index is None
            # No checkpoint in between: the dispatcher cannot drain the inbox (it takes one
            # event straight from the sender if it was waiting for one).
            accepted: list[Proposal] = []
            with pytest.raises(trio.WouldBlock):
                for i in range(INBOX_SIZE + 2):
                    accepted.append(leader.propose_nowait(("put", f"k{i}", "v")))
            assert INBOX_SIZE <= len(accepted) <= INBOX_SIZE + 1
            with pytest.raises(ValueError, match="Commands must be CBOR values"):
                leader.propose_nowait(object())
            for p in accepted:
                await p.result()
            await cluster.stop(leader.id)
            with pytest.raises(NodeClosedError):
                leader.propose_nowait(("put", "k", "v"))


async def test_on_done_answers_every_outcome_once_without_a_task_per_request(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The server pattern: requests handed over from one task, each answered from its
    ``on_done`` (called once, from a node task, when the outcome is known): results, the
    state machine's own error, a refusal, an ``on_done`` that raises (logged, the node goes
    on) and proposals cut short by the leader's shutdown."""
    answers: list[tuple[int, object]] = []

    def answer(i: int) -> Callable[[Proposal], None]:
        def on_done(proposal: Proposal) -> None:
            assert proposal.done
            try:
                answers.append((i, proposal.result_nowait()))
            except Exception as exc:  # the outcome, whatever it is
                answers.append((i, exc))

        return on_done

    def broken(proposal: Proposal) -> None:
        raise RuntimeError("a broken callback")

    with trio.fail_after(30):
        async with open_simulated_cluster(3, seed=3) as cluster:
            leader = await cluster.wait_leader()
            await cluster.wait_converged()
            before = trio.lowlevel.current_statistics().tasks_living
            proposals = [
                leader.propose_nowait(("append", "k", str(i)), on_done=answer(i)) for i in range(50)
            ]
            assert trio.lowlevel.current_statistics().tasks_living == before  # no task each
            with pytest.raises(trio.WouldBlock):
                proposals[0].result_nowait()  # not known yet
            leader.propose_nowait(("put", "x", "y"), on_done=broken)
            bad = leader.propose_nowait(("no-such-op",), on_done=answer(50))
            await _settled(bad)
            assert [i for i, _ in answers] == list(range(51))  # applied in log order, once each
            assert [v for _, v in answers[:50]] == [
                "".join(str(j) for j in range(i + 1)) for i in range(50)
            ]
            assert isinstance(answers[50][1], ValueError)  # the state machine's own error
            assert "a broken callback" in caplog.text
            assert proposals[-1].result_nowait() == answers[49][1]
            # The node went on after the broken callback.
            assert await leader.propose(("put", "after", "ok")) is None
            follower = cluster.node(next(n for n in cluster.node_ids if n != leader.id))
            follower.propose_nowait(("put", "k", "v"), on_done=answer(51))
            await trio.sleep(0.01)
            assert isinstance(answers[-1][1], NotLeaderError)  # refused by the dispatcher
            # Cut short: the leader cannot commit alone, then shuts down.
            cluster.isolate(leader.id)
            cut = leader.propose_nowait(("put", "k", "lost"), on_done=answer(52))
            await trio.sleep(0.01)
            assert not cut.done
            await cluster.stop(leader.id)
            assert answers[-1][0] == 52 and isinstance(answers[-1][1], LeadershipLostError)
    assert [i for i, _ in answers].count(52) == 1


async def _settled(proposal: Proposal) -> None:
    with contextlib.suppress(Exception):
        await proposal.result()
