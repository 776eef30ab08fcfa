"""What an embedding program reads from a running node: ``node.log``, ``node.config``,
``Status.voted_for`` and ``compacted_index`` (and its deprecated alias), and
``Proposal.appended()``."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_raft import (
    Config,
    EntryKind,
    LogPosition,
    NotLeaderError,
    TooManyUncommittedError,
    TrioRaftDeprecationWarning,
)
from trio_raft.kv._server import status_to_wire
from trio_raft.testing import open_simulated_cluster

SMALL = Config(snapshot_entries=20, snapshot_keep_entries=5)


async def test_log_view_status_and_config_of_running_nodes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with open_simulated_cluster(3, seed=4, config=SMALL) as cluster:
            leader = await cluster.wait_leader()
            for i in range(50):
                await leader.propose(("put", f"k{i % 5}", str(i)))
            await cluster.wait_converged()
            for node in cluster.nodes.values():
                assert node.config is cluster.config
                status, log = node.status, node.log
                assert log.compacted_index == status.compacted_index > 0
                assert log.commit_index == status.commit_index
                assert log.last == LogPosition(status.last_log_index, status.last_log_term)
                with pytest.warns(TrioRaftDeprecationWarning, match="use Status.compacted_index"):
                    assert status.log_start_index == status.compacted_index
                wire = status_to_wire(status)
                assert wire["compacted"] == wire["log_start"] == status.compacted_index
                assert wire["voted_for"] == status.voted_for
            # The same committed entries on every node.
            start = max(node.log.first_index for node in cluster.nodes.values())
            stop = leader.log.commit_index + 1
            assert stop - start >= 5
            logs = {nid: node.log.entries(start, stop) for nid, node in cluster.nodes.items()}
            first, *others = logs.values()
            assert all(other == first for other in others)
            commands = [e.command for e in first if e.kind is EntryKind.COMMAND]
            assert commands[-1] == ["put", "k4", "49"]
            # A leader voted for itself; some follower (a majority made it leader) for it.
            assert leader.status.voted_for == leader.id
            votes = [n.status.voted_for for n in cluster.nodes.values() if n is not leader]
            assert leader.id in votes
            assert all(vote in (leader.id, None) for vote in votes)


async def test_a_vote_survives_a_restart_in_the_same_term(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with open_simulated_cluster(3, seed=5) as cluster:
            leader = await cluster.wait_leader()
            await cluster.wait_converged()
            voter = next(
                n for n in cluster.nodes.values() if n is not leader and n.status.voted_for
            )
            term = voter.status.term
            restarted = await cluster.restart(voter.id)
            assert (restarted.status.term, restarted.status.voted_for) == (term, leader.id)


async def test_appended_returns_the_position_or_the_refusal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = Config(max_uncommitted_entries=1)
    with trio.fail_after(60):
        async with open_simulated_cluster(3, seed=6, config=config) as cluster:
            leader = await cluster.wait_leader()
            await cluster.wait_converged()
            proposal = leader.propose_nowait(("put", "k", "v"))
            position = await proposal.appended()
            assert position == LogPosition(proposal.index, proposal.term)  # type: ignore[arg-type]
            assert position.term == leader.status.term
            assert leader.log.term_at(position.index) == position.term
            await proposal.result()
            assert await proposal.appended() == position  # again, after the outcome
            assert leader.log.entry(position.index).command == ["put", "k", "v"]

            follower = cluster.node(next(n for n in cluster.node_ids if n != leader.id))
            refused = follower.propose_nowait(("put", "k", "w"))
            with pytest.raises(NotLeaderError) as info:
                await refused.appended()
            assert info.value.leader_id == leader.id
            assert refused.index is None

            # Back-pressure: with the followers down nothing commits, so a second
            # uncommitted entry is refused before it is appended.
            for nid in cluster.node_ids:
                if nid != leader.id:
                    await cluster.crash(nid)
            stuck = leader.propose_nowait(("put", "k", "x"))
            assert (await stuck.appended()).index == position.index + 1
            over = leader.propose_nowait(("put", "k", "y"))
            with pytest.raises(TooManyUncommittedError):
                await over.appended()
            with pytest.raises(TooManyUncommittedError):
                await over.result()


async def test_following_the_committed_entries(autojump_clock: trio.testing.MockClock) -> None:
    """The audit loop of the ``LogView`` docstring, on a follower, while commands commit."""
    with trio.fail_after(60):
        async with open_simulated_cluster(3, seed=8) as cluster:
            leader = await cluster.wait_leader()
            node = cluster.node(next(n for n in cluster.node_ids if n != leader.id))
            seen: list[object] = []

            async def follow() -> None:
                next_index = node.log.first_index
                while len(seen) < 30:
                    await node.wait_status(lambda s: s.commit_index >= next_index)  # noqa: B023
                    log = node.log
                    for entry in log.entries(next_index, log.commit_index + 1):
                        if entry.kind is EntryKind.COMMAND:
                            seen.append(entry.command)
                    next_index = log.commit_index + 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow)
                for i in range(30):
                    await leader.propose(("put", "k", str(i)))
            assert seen == [["put", "k", str(i)] for i in range(30)]
