"""``Node.propose_nowait``: many requests from one task, no task or wait per request."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_raft import NodeClosedError, NotLeaderError, Proposal
from trio_raft._node import INBOX_SIZE
from trio_raft.testing import open_simulated_cluster


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
            state = cluster.state_machines[leader.id].as_dict()  # type: ignore[attr-defined]
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
