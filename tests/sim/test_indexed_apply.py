"""``IndexedStateMachine``: ``apply_entry`` gets each command's log index and term, across
crashes, restarts, snapshots and InstallSnapshot, the same on every replica."""

from __future__ import annotations

import random
from collections.abc import Iterable

import cbor2
import pytest
import trio
import trio.testing

from trio_raft import (
    Config,
    EntryKind,
    LeadershipLostError,
    NotLeaderError,
    ProposalDroppedError,
)
from trio_raft.testing import SimulatedCluster, open_simulated_cluster

SMALL = Config(snapshot_entries=20, snapshot_keep_entries=5, snapshot_chunk_bytes=256)


class IndexRecorder:
    """Records every ``(index, term, command)`` it applies; its snapshot holds the record, so
    an incarnation restored from a snapshot knows every command applied before it."""

    def __init__(self, restores: list[int] | None = None) -> None:
        self.applied: list[tuple[int, int, str]] = []
        self.restores = [] if restores is None else restores
        """Where to note the index of every snapshot restored (shared by a test's nodes)."""
        self.problems: list[str] = []
        self.restored_index = 0
        """The last index in the snapshot it was restored from (0 if none)."""

    def apply(self, command: object) -> object:
        raise TypeError("the node must call apply_entry")

    def apply_entry(self, command: object, index: int, term: int) -> object:
        last = self.applied[-1][0] if self.applied else self.restored_index
        if index <= last:
            self.problems.append(f"index {index} after {last}")
        assert isinstance(command, str)
        self.applied.append((index, term, command))
        return index

    def query(self, query: object) -> object:
        return len(self.applied)

    def snapshot(self) -> Iterable[bytes]:
        return [cbor2.dumps([list(record) for record in self.applied])]

    def restore(self, chunks: Iterable[bytes]) -> None:
        self.applied = [(i, t, c) for i, t, c in cbor2.loads(b"".join(chunks))]
        self.restored_index = self.applied[-1][0] if self.applied else 0
        self.restores.append(self.restored_index)


class PositionedRecorder(IndexRecorder):
    """An :class:`IndexRecorder` told where each snapshot it restores ends (``restore_at``):
    the node must call that, never ``restore``."""

    def __init__(self, restores: list[int], positions: list[tuple[int, int, int]]) -> None:
        super().__init__(restores)
        self.positions = positions
        """``(index, term, last command index in the data)`` of every restore (shared)."""

    def restore(self, chunks: Iterable[bytes]) -> None:
        raise AssertionError("the node must call restore_at")

    def restore_at(self, chunks: Iterable[bytes], index: int, term: int) -> None:
        super().restore(chunks)
        self.positions.append((index, term, self.restored_index))


async def _propose_until_applied(cluster: SimulatedCluster, command: str) -> tuple[int, int] | None:
    """Propose ``command`` through the leader until a proposal of it is applied; return its
    appended position and check it is what ``apply_entry`` was given. ``None`` if an attempt
    ended with an unknown outcome (it may have been applied too: the command then appears
    twice, at two indices)."""
    while True:
        leader = cluster.leader()
        if leader is None:
            await trio.sleep(0.05)
            continue
        proposal = leader.propose_nowait(command)
        try:
            position = await proposal.appended()
        except NotLeaderError:
            await trio.sleep(0.05)
            continue
        assert (position.index, position.term) == (proposal.index, proposal.term)
        try:
            applied_at = await proposal.result()
        except LeadershipLostError:
            return None
        except ProposalDroppedError:
            continue  # replaced by another leader's entry: definitely not applied
        assert applied_at == position.index
        return position.index, position.term


@pytest.mark.parametrize(
    ("seed", "positioned"), [(1, False), (2, False), (1, True)], ids=["1", "2", "1-restore_at"]
)
async def test_every_replica_applies_the_same_indexed_commands(
    autojump_clock: trio.testing.MockClock, seed: int, positioned: bool
) -> None:
    rng = random.Random(seed)
    restores: list[int] = []
    positions: list[tuple[int, int, int]] = []

    def factory() -> IndexRecorder:
        if positioned:
            return PositionedRecorder(restores, positions)
        return IndexRecorder(restores)

    with trio.fail_after(600):
        async with open_simulated_cluster(
            3, seed=seed, config=SMALL, state_machine_factory=factory
        ) as cluster:
            await cluster.wait_leader()
            placed: dict[str, tuple[int, int]] = {}
            lagging = None
            for i in range(160):
                if i % 15 == 7:  # a crash and a restart, the leader as often as not
                    await cluster.restart(rng.choice([n for n in cluster.node_ids if n != lagging]))
                if i == 40:  # one node misses ~80 commands: it catches up by a snapshot
                    lagging = rng.choice([n for n in cluster.node_ids if n in cluster.nodes])
                    await cluster.crash(lagging)
                if i == 120 and lagging is not None:
                    await cluster.start(lagging)
                    lagging = None
                command = f"c{i}"
                position = await _propose_until_applied(cluster, command)
                if position is not None:
                    placed[command] = position
            for nid in cluster.node_ids:
                if nid not in cluster.nodes:
                    await cluster.start(nid)
            await cluster.wait_converged()
            leader = cluster.leader()
            assert leader is not None

            records = {}
            for nid, sm in cluster.state_machines.items():
                assert isinstance(sm, IndexRecorder)
                assert sm.problems == [], (nid, sm.problems)
                indexes = [index for index, _, _ in sm.applied]
                assert indexes == sorted(set(indexes)), nid  # strictly increasing
                records[nid] = sm.applied
            first, *others = records.values()
            assert all(other == first for other in others), "replicas applied different entries"
            assert len(placed) >= 150  # few outcomes unknown
            by_index = {index: (term, command) for index, term, command in first}
            for command, (index, term) in placed.items():
                assert by_index[index] == (term, command), command
            # What the leader's log still holds agrees with what was applied: every committed
            # command entry applied at its own index and term, nothing else applied.
            log = leader.log
            assert log.compacted_index > 0  # snapshots were taken
            assert len(restores) >= 5  # by restarted nodes, and by InstallSnapshot
            for entry in log.entries(log.first_index, log.commit_index + 1):
                if entry.kind is EntryKind.COMMAND:
                    assert by_index[entry.index] == (entry.term, entry.command)
                else:
                    assert entry.index not in by_index
            if positioned:
                # Every restore was told where its snapshot ends: at or past the last command
                # in it, at a committed entry, one term per index, the log's where it has it.
                assert len(positions) == len(restores)
                terms: dict[int, int] = {}
                for index, term, last_command in positions:
                    assert last_command <= index <= log.commit_index
                    assert terms.setdefault(index, term) == term
                    if index >= log.first_index:
                        assert log.term_at(index) == term
                    if index in by_index:
                        assert by_index[index][0] == term
