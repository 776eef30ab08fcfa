"""A node's operational log lines besides its role and leader changes: snapshots taken, sent
and installed; a lagging follower's catch-up, seen from the leader; a follower that lost its
log; slow disk writes.

Every line goes to the ``trio_raft.node`` logger with its facts in
``extra={"raft": {...}}`` (see :mod:`trio_raft._logging`). Lines that could repeat without end
(a follower that stays behind, a disk that stays slow, a follower that stays broken) are
spaced out or rate-limited; none is logged per entry.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import attrs

from ._core._progress import ProgressState
from ._logging import RAFT_FIELDS, RateLimiter, log_limited
from ._types import NodeId, Role, SnapshotMeta

if TYPE_CHECKING:
    from ._core._state import RaftState
    from ._messages import AppendResponse

logger: Final = logging.getLogger("trio_raft.node")

CATCH_UP_MIN_ENTRIES: Final = 100
"""A follower counts as lagging when it is more than ``Config.catch_up_entries`` entries behind
the leader's last index, and at least this many; it has caught up once it is within half that
again (and the leader streams entries to it, not probes)."""
CATCH_UP_ANNOUNCE_S: Final = 1.0
"""A follower lagging this long is announced (a burst of proposals puts healthy followers
briefly behind too: those are not); one that needs a snapshot is announced at once."""
CATCH_UP_REPORT_S: Final = 5.0
"""A lagging follower's progress is reported at most this often while its match index moves."""
CATCH_UP_STUCK_REPORT_S: Final = 60.0
"""... and this often while it does not move (a follower that is down)."""
SLOW_DISK_WRITE_S: Final = 1.0
"""A disk write (save and sync of one batch) slower than this is logged."""
SLOW_DISK_REPORT_S: Final = 10.0
"""At most one slow-write line this often (with the count of those not logged)."""
LOST_LOG_REPORT_S: Final = 60.0
"""At most one lost-log warning per follower this often."""


@attrs.define
class _Lagging:
    term: int
    since: float
    announced: bool
    """Whether this episode was logged (and so its end will be)."""
    match: int
    """The follower's match index at the last report."""
    reported_at: float
    snapshot: bool
    """Whether the follower's need of a snapshot was logged."""


class NodeLog:
    """The log lines of one node that need memory (episodes, rate limits)."""

    def __init__(self, node_id: NodeId) -> None:
        self._id = node_id
        self._lagging: dict[NodeId, _Lagging] = {}
        self._lost_since: dict[NodeId, tuple[int, float]] = {}
        self._limiter = RateLimiter(SLOW_DISK_REPORT_S)
        self._lost_limiter = RateLimiter(LOST_LOG_REPORT_S)

    def _info(self, message: str, *args: object, **facts: object) -> None:
        logger.info(message, *args, extra={RAFT_FIELDS: {"node": self._id, **facts}})

    # -- a leader's followers ------------------------------------------------------------------

    def follower(self, st: RaftState, peer: NodeId, now: float) -> None:
        """Called by ``peer``'s replicator between sends (at least once per heartbeat): log
        when the follower falls behind or needs a snapshot, its progress while it catches up,
        and when it has caught up."""
        pr = st.progress.get(peer)
        if pr is None:
            return
        last = st.log.last_index
        lag = last - pr.match
        snapshot = pr.state is ProgressState.SNAPSHOT
        threshold = max(st.config.catch_up_entries, CATCH_UP_MIN_ENTRIES)
        episode = self._lagging.get(peer)
        if episode is not None and episode.term != st.term:
            del self._lagging[peer]  # another term: start over
            episode = None
        if episode is None:
            if lag <= threshold and not snapshot:
                return  # the common case, once per idle replicator: nothing built
            episode = self._lagging[peer] = _Lagging(
                st.term, now, announced=False, match=pr.match, reported_at=now, snapshot=False
            )
        facts = {"peer": peer, "term": st.term, "match": pr.match, "lag": lag, "last_index": last}
        if snapshot and not episode.snapshot:
            episode.snapshot = episode.announced = True
            self._info(
                "node %r: follower %r needs a snapshot: its match index is %d and the leader's "
                "log starts after %d",
                self._id, peer, pr.match, st.log.start_index,
                event="follower_needs_snapshot", log_start=st.log.start_index, **facts,
            )  # fmt: skip
            return
        if not snapshot and pr.state is ProgressState.REPLICATE and lag <= threshold // 2:
            del self._lagging[peer]
            if episode.announced:
                self._info(
                    "node %r: follower %r caught up (%d entries behind) after %.1f s",
                    self._id, peer, lag, now - episode.since,
                    event="follower_caught_up", seconds=round(now - episode.since, 3), **facts,
                )  # fmt: skip
            return
        if not episode.announced:
            if now - episode.since >= CATCH_UP_ANNOUNCE_S:
                episode.announced, episode.match, episode.reported_at = True, pr.match, now
                self._info(
                    "node %r: follower %r is %d entries behind (match index %d, the leader's "
                    "last index %d); catching it up",
                    self._id, peer, lag, pr.match, last, event="follower_behind", **facts,
                )  # fmt: skip
            return
        moved = pr.match > episode.match
        interval = CATCH_UP_REPORT_S if moved else CATCH_UP_STUCK_REPORT_S
        elapsed = now - episode.reported_at
        if elapsed < interval:
            return
        rate = (pr.match - episode.match) / elapsed
        episode.match, episode.reported_at = pr.match, now
        doing = "is catching up" if moved else "makes no progress (is it down or unreachable?)"
        self._info(
            "node %r: follower %r %s: match index %d, %d entries behind, %.0f entries/s",
            self._id, peer, doing, pr.match, lag, rate,
            event="follower_progress", rate=round(rate, 1), **facts,
        )  # fmt: skip

    def append_response(self, st: RaftState, m: AppendResponse, now: float) -> None:
        """Called by the dispatcher before the rules see ``m``: warn when a follower keeps
        refusing entries below the index it acknowledged in this term (its log is gone, say a
        node with memory storage restarted under its old id). The rules ignore such a
        refusal as stale (Raft cannot repair a log a follower lost: the entries it
        acknowledged may have been committed by its vote), so the follower would never catch
        up and nobody would know why."""
        if st.role is not Role.LEADER or m.term != st.term:
            return
        pr = st.progress.get(m.src)
        if pr is None:
            return
        if m.success or m.rejected_index == 0 or m.last_index >= pr.match:
            self._lost_since.pop(m.src, None)
            return
        # One refusal may be a stale answer overtaken by a later success; a lost log refuses
        # on every heartbeat. Warn once it has lasted an election timeout.
        term, since = self._lost_since.setdefault(m.src, (st.term, now))
        if term != st.term:
            self._lost_since[m.src] = (st.term, now)
            return
        if now - since < st.config.election_timeout_s_max:
            return
        log_limited(
            logger, self._lost_limiter, m.src, now,
            f"node {self._id!r}: follower {m.src!r} lost its log: its log ends at {m.last_index} "
            f"but it acknowledged entries up to {pr.match} in term {st.term} (a node restarted "
            "without its data, e.g. with memory storage, under its old id). Raft cannot repair "
            "this, and the follower gets no more entries from this leader: remove it from the "
            "cluster and add it back under a new id with an empty data directory; give nodes "
            "file storage so that a restart keeps their log",
            {"node": self._id, "event": "follower_lost_log", "peer": m.src, "term": st.term,
             "match": pr.match, "last_index": m.last_index},
        )  # fmt: skip

    # -- disk and snapshots ----------------------------------------------------------------------

    def disk_write(self, seconds: float, now: float) -> None:
        """One batch was made durable in ``seconds``: log it (rate-limited) if that is slow."""
        if seconds < SLOW_DISK_WRITE_S:
            return
        log_limited(
            logger, self._limiter, "slow-write", now,
            f"node {self._id!r}: a disk write (save and sync) took {seconds:.2f} s, over "
            f"{SLOW_DISK_WRITE_S:g} s: the disk is slow or overloaded (a leader steps down "
            "past Config.disk_stall_s)",
            {"node": self._id, "event": "slow_disk_write", "seconds": round(seconds, 4),
             "threshold_s": SLOW_DISK_WRITE_S},
        )  # fmt: skip

    def snapshot_taken(self, meta: SnapshotMeta, size: int, seconds: float) -> None:
        """A snapshot of this node's state machine is durable."""
        self._info(
            "node %r: snapshot taken at index %d (term %d): %d bytes in %.2f s",
            self._id, meta.index, meta.term, size, seconds,
            event="snapshot_taken", index=meta.index, term=meta.term, bytes=size,
            seconds=round(seconds, 4),
        )  # fmt: skip

    def snapshot_sent(self, peer: NodeId, meta: SnapshotMeta, size: int, seconds: float) -> None:
        """A leader finished streaming a snapshot to ``peer`` (it installed it)."""
        self._info(
            "node %r: snapshot at index %d (term %d) sent to %r: %d bytes in %.2f s",
            self._id, meta.index, meta.term, peer, size, seconds,
            event="snapshot_sent", peer=peer, index=meta.index, term=meta.term, bytes=size,
            seconds=round(seconds, 4),
        )  # fmt: skip

    def snapshot_abandoned(self, meta: SnapshotMeta, received: int, reason: str) -> None:
        """A follower dropped a snapshot download after ``received`` bytes: the leader went
        quiet (``leader_silent``), or the follower's log reached the snapshot's index from
        the leader's entries (``log_caught_up``)."""
        why = {
            "leader_silent": "no chunk came for a while (the leader gave the stream up)",
            "log_caught_up": "its log reached the snapshot's index from the leader's entries",
        }[reason]
        self._info(
            "node %r: dropped the download of the snapshot at index %d (term %d) after %d "
            "bytes: %s",
            self._id, meta.index, meta.term, received, why,
            event="snapshot_abandoned", index=meta.index, term=meta.term, bytes=received,
            reason=reason,
        )  # fmt: skip

    def snapshot_installed(
        self, leader: NodeId | None, meta: SnapshotMeta, size: int, seconds: float
    ) -> None:
        """A follower installed a snapshot it received (``seconds`` from its first chunk)."""
        self._info(
            "node %r: installed the snapshot at index %d (term %d) from %r: %d bytes in %.2f s",
            self._id, meta.index, meta.term, leader, size, seconds,
            event="snapshot_installed", leader=leader, index=meta.index, term=meta.term,
            bytes=size, seconds=round(seconds, 4),
        )  # fmt: skip
