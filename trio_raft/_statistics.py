"""``node.statistics()``: what a node has done since it started, for dashboards and alerts.

The node keeps plain counters (one thread, no locks) in a :class:`Counters` and hands out an
immutable :class:`NodeStatistics` snapshot on request, together with the live state of
:attr:`Node.status` and, when they have one, the transport's and the storage's own
``statistics()``. The Prometheus collector (:mod:`trio_raft.prometheus`) reads only this.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping
from typing import Final, final

import attrs

from ._status import Status
from ._types import Role, RoleChangeReason

DISK_WRITE_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds (seconds) of the disk-write latency histogram's buckets."""


@final
@attrs.frozen
class Histogram:
    """Counts of observations at or below each bound (not cumulative), and above the last."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    """``len(bounds) + 1`` counts: ``counts[i]`` is the number of observations in
    ``(bounds[i-1], bounds[i]]``; the last one counts those above ``bounds[-1]``."""
    total: float
    """The sum of the observations."""

    @property
    def count(self) -> int:
        """How many observations there were."""
        return sum(self.counts)


@final
@attrs.frozen
class NodeStatistics:
    """A snapshot returned by :meth:`Node.statistics`; counters run from the node's start."""

    status: Status
    """The node's state now (role, term, indexes, followers' progress)."""
    elections_started: int
    """Times this node became a candidate (raised its term to ask for votes)."""
    elections_won: int
    """Times it became leader."""
    role_changes: Mapping[RoleChangeReason, int]
    """Role or term changes, by reason."""
    proposals_accepted: int
    """Commands appended to the log as leader (through :meth:`Node.propose`)."""
    proposals_refused: Mapping[str, int]
    """Proposals refused before anything was appended, by error class name
    (``NotLeaderError``, ``TooManyUncommittedError``, ...)."""
    entries_applied: int
    """Command entries handed to the state machine."""
    apply_errors: int
    """Of those, the ones whose ``apply`` raised (the command's outcome)."""
    reads_confirmed: int
    """Linearizable reads whose leadership check passed."""
    reads_failed: int
    """Linearizable reads that failed because leadership was lost."""
    disk_writes: int
    """Batches made durable (one storage save and sync each)."""
    disk_write_seconds: Histogram
    """How long each of those took, save and sync together."""
    snapshots_taken: int
    """Snapshots of this node's state machine made durable."""
    snapshots_installed: int
    """Snapshots received from a leader and installed."""
    transport: object | None
    """The transport's ``statistics()`` (e.g. :class:`TransportStatistics`), if it has one."""
    storage: object | None
    """The storage's ``statistics()`` (e.g. :class:`FileStorageStatistics`), if it has one."""
    snapshots_sent: int = 0
    """Snapshots this node sent to a follower, as leader, that the follower installed."""
    snapshot_bytes: int = 0
    """The size of the latest snapshot this node took or installed (0: none yet)."""


class Counters:
    """The node's running counts; :meth:`snapshot` freezes them."""

    def __init__(self) -> None:
        self.role_changes: Counter[RoleChangeReason] = Counter()
        self.elections_started = 0
        self.elections_won = 0
        self.proposals_accepted = 0
        self.proposals_refused: Counter[str] = Counter()
        self.entries_applied = 0
        self.apply_errors = 0
        self.reads_confirmed = 0
        self.reads_failed = 0
        self.snapshots_taken = 0
        self.snapshots_installed = 0
        self.snapshots_sent = 0
        self.snapshot_bytes = 0
        self._disk_counts = [0] * (len(DISK_WRITE_BUCKETS) + 1)
        self._disk_total = 0.0

    def transition(self, role: Role, reason: RoleChangeReason) -> None:
        """The node changed role or term."""
        self.role_changes[reason] += 1
        if role is Role.CANDIDATE:
            self.elections_started += 1
        elif role is Role.LEADER:
            self.elections_won += 1

    def disk_write(self, seconds: float) -> None:
        """One batch was made durable in ``seconds``."""
        self._disk_counts[bisect.bisect_left(DISK_WRITE_BUCKETS, seconds)] += 1
        self._disk_total += seconds

    def snapshot(
        self, status: Status, transport: object | None, storage: object | None
    ) -> NodeStatistics:
        """The counters now, with the given live state."""
        return NodeStatistics(
            status=status,
            elections_started=self.elections_started,
            elections_won=self.elections_won,
            role_changes=dict(self.role_changes),
            proposals_accepted=self.proposals_accepted,
            proposals_refused=dict(self.proposals_refused),
            entries_applied=self.entries_applied,
            apply_errors=self.apply_errors,
            reads_confirmed=self.reads_confirmed,
            reads_failed=self.reads_failed,
            disk_writes=sum(self._disk_counts),
            disk_write_seconds=Histogram(
                DISK_WRITE_BUCKETS, tuple(self._disk_counts), self._disk_total
            ),
            snapshots_taken=self.snapshots_taken,
            snapshots_installed=self.snapshots_installed,
            transport=transport,
            storage=storage,
            snapshots_sent=self.snapshots_sent,
            snapshot_bytes=self.snapshot_bytes,
        )
