"""What a leader knows about one follower, and every transition of that knowledge.

A follower is in one of two states (etcd's terminology):

* ``PROBE``: the leader does not know where the logs match. It sends one AppendEntries at a time
  and waits for the answer, backing ``next`` up by whole terms on each rejection.
* ``REPLICATE``: the logs are known to match up to ``match``; the leader streams entries
  optimistically, up to a window of in-flight messages and bytes.
* ``SNAPSHOT``: the follower needs entries the leader has compacted away; the leader's
  replicator streams its snapshot instead, and probes again once it is installed.

Invariant: ``0 <= match < next``.

Every transition lives here; :meth:`RaftState.next_append` applies the time-driven ones
(:meth:`Progress.on_stall`) *before* deciding between entries and a snapshot, so that an
AppendEntries is only ever built when ``next`` is past the leader's compacted prefix (see
:doc:`design`, "Replication after compaction").
"""

from __future__ import annotations

import collections
import enum

import attrs


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@attrs.frozen(slots=True)
class _Inflight:
    last_index: int
    size: int
    sent_at: float


@attrs.define(slots=True)
class Progress:
    """Replication state of one follower, owned by the leader."""

    match: int = 0
    """Highest index known to be replicated (and durable) on the follower."""
    next: int = 1
    """Index of the next entry to send."""
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    """In PROBE: an AppendEntries is outstanding and we are waiting for its answer."""
    inflight: collections.deque[_Inflight] = attrs.field(factory=collections.deque)
    inflight_bytes: int = 0
    recent_active: bool = True
    """Heard from since the last CheckQuorum round."""
    acked_seq: int = 0
    """Highest heartbeat sequence the follower has answered in this term (ReadIndex)."""
    sent_seq: int = 0
    """Highest heartbeat sequence sent to the follower."""
    probe_sent_at: float = float("-inf")
    pending_snapshot: int = 0
    """In SNAPSHOT: the last index of the snapshot being sent (0 until the stream starts)."""
    snapshot_offset: int = 0
    """In SNAPSHOT: bytes of it the follower has acknowledged."""
    sent_commit: int = 0
    """The highest commit index the follower can have learned from what was sent to it."""
    last_heard_at: float = float("-inf")
    """When the follower last answered (anything) in this term."""
    caught_up_since: float | None = None
    """Since when the follower has stayed within ``Config.catch_up_entries`` of the leader's
    last index (``None`` while it is further behind): a learner may become a voter once this
    is an election timeout old (thesis §4.2.1)."""

    def on_heard(self, now: float, lag: int, catch_up_entries: int) -> None:
        """The follower answered at ``now`` and is ``lag`` entries behind the leader's log."""
        self.last_heard_at = now
        self.recent_active = True
        if lag > catch_up_entries:
            self.caught_up_since = None
        elif self.caught_up_since is None:
            self.caught_up_since = now

    def become_probe(self) -> None:
        self.state = ProgressState.PROBE
        self.next = self.match + 1
        self.probe_sent = False
        self._clear_inflight()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self._clear_inflight()

    def become_snapshot(self) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = 0
        self.snapshot_offset = 0
        self._clear_inflight()

    def on_snapshot_installed(self, index: int) -> None:
        """The follower installed a snapshot up to ``index``: probe from there."""
        self.match = max(self.match, index)
        self.become_probe()

    def _clear_inflight(self) -> None:
        self.inflight.clear()
        self.inflight_bytes = 0

    def can_send_entries(self, max_inflight: int, max_inflight_bytes: int) -> bool:
        if self.state is ProgressState.PROBE:
            return not self.probe_sent
        if self.state is ProgressState.SNAPSHOT:
            return False
        return len(self.inflight) < max_inflight and self.inflight_bytes < max_inflight_bytes

    def sent_entries(self, last_index: int, size: int, now: float) -> None:
        """Record an AppendEntries carrying entries up to ``last_index``."""
        if self.state is ProgressState.PROBE:
            self.probe_sent = True
            self.probe_sent_at = now
        else:
            self.next = last_index + 1
            self.inflight.append(_Inflight(last_index, size, now))
            self.inflight_bytes += size

    def on_stall(self) -> None:
        """Nothing came back for two heartbeat periods: resend the probe, or fall back to
        probing from ``match + 1`` if a replicate window got lost (``next`` may then lie in the
        compacted prefix: the caller checks that before building a message)."""
        if self.state is ProgressState.PROBE:
            self.probe_sent = False
        elif self.state is ProgressState.REPLICATE:
            self.become_probe()

    def on_success(self, match_index: int, log_start: int) -> bool:
        """A follower confirmed it matches up to ``match_index``. Returns whether ``match`` grew.

        ``log_start`` is the leader's ``log.start_index``. A follower being sent a snapshot
        leaves ``SNAPSHOT`` on a late AppendEntries success only if the log can serve it from
        there (``match >= log_start``); otherwise the snapshot stream carries on, so the
        follower is never left with a ``next`` inside the compacted prefix.
        """
        if match_index <= self.match:
            return False  # a duplicate or stale answer
        self.match = match_index
        if self.state is ProgressState.SNAPSHOT:
            if self.match >= log_start:
                self.become_replicate()  # its download is abandoned; it drops it itself
            else:
                self.next = max(self.next, self.match + 1)
        elif self.state is ProgressState.PROBE:
            self.become_replicate()
        else:
            self.next = max(self.next, match_index + 1)
            while self.inflight and self.inflight[0].last_index <= match_index:
                self.inflight_bytes -= self.inflight.popleft().size
        return True

    def on_reject(self, rejected_index: int, hint: int) -> bool:
        """A follower rejected an AppendEntries with ``prev_index == rejected_index``; ``hint`` is
        where it suggests to try next. Returns whether the rejection was current (not stale)."""
        if rejected_index <= self.match:
            return False  # stale: we already know they match there
        if self.state is ProgressState.SNAPSHOT:
            return False  # an answer from before the snapshot stream
        if self.state is ProgressState.PROBE and rejected_index != self.next - 1:
            return False  # answers an older probe
        next_index = max(self.match + 1, min(hint, rejected_index))
        self.become_probe()
        self.next = next_index
        return True

    def stalled(self, now: float, timeout_s: float) -> bool:
        """Whether the oldest in-flight message has gone unanswered for ``timeout_s``."""
        if self.state is ProgressState.SNAPSHOT:
            return False  # the replicator resends snapshot chunks itself
        if self.state is ProgressState.PROBE:
            return self.probe_sent and now - self.probe_sent_at >= timeout_s
        return bool(self.inflight) and now - self.inflight[0].sent_at >= timeout_s
