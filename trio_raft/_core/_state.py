"""The Raft state machine of one node: messages and timeouts in, decisions out.

:class:`RaftState` never awaits and never touches I/O. Each input method records its effects in
a :class:`Ready`, which the node drains with :meth:`RaftState.take_ready` and carries out in order:
persist (hard state, truncation, entries), then send messages, then apply. Terms are compared
once, in :meth:`RaftState.step`, before dispatching on the message type.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import attrs

from .._config import Config
from .._errors import (
    MembershipChangeInProgressError,
    NoSpaceError,
    NotLeaderError,
    TooManyUncommittedError,
)
from .._messages import (
    AppendRequest,
    AppendResponse,
    Message,
    SnapshotRequest,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from .._types import (
    MAX_TERM,
    Entry,
    EntryKind,
    HardState,
    Membership,
    NodeId,
    Role,
    RoleChangeReason,
    SnapshotMeta,
    StoredState,
)
from ._log import RaftLog
from ._membership import (
    LeaderFacts,
    MembershipLog,
    already_in_force,
    check_change,
    choose_successor,
    next_step,
)
from ._progress import Progress, ProgressState
from ._quorum import VoteResult, joint_committed_index, joint_vote_result
from ._reads import ReadQueue
from ._ready import Ready
from ._transfer import Transfer, pick_target

__all__ = ["RaftState", "Ready", "Transfer"]


RETIRE_ELECTION_TIMEOUTS = 4
"""A leader stops replicating to a removed peer that has not acknowledged its removal this
many maximum election timeouts after the removal committed (it is down, or cut off)."""


class RaftState:
    """One node's Raft state: term, vote, log, commit index, role and (as leader) progress."""

    def __init__(
        self,
        node_id: NodeId,
        bootstrap: Membership | Collection[NodeId] | None,
        config: Config,
        stored: StoredState,
    ) -> None:
        """``bootstrap`` is the configuration to use while the log and the snapshot hold none:
        a :class:`Membership` (not joint), a collection of voter ids, or ``None`` for a node
        joining an existing cluster (it never campaigns until it receives a configuration)."""
        if bootstrap is not None and not isinstance(bootstrap, Membership):
            bootstrap = Membership(bootstrap)
        if bootstrap is not None:
            if bootstrap.is_joint:
                raise ValueError(f"a bootstrap configuration cannot be joint: {bootstrap!r}")
            if node_id not in bootstrap.members:
                raise ValueError(
                    f"node {node_id!r} is not a member of the bootstrap configuration {bootstrap!r}"
                )
        self.id = node_id
        self.config = config
        self.term = stored.hard_state.term
        self.voted_for = stored.hard_state.voted_for
        self.log = RaftLog(
            stored.entries, start_index=stored.log_start_index, start_term=stored.log_start_term
        )
        self.commit = self.log.start_index  # only committed entries are ever compacted
        self._members = MembershipLog(
            bootstrap, stored.membership, stored.log_start_index, stored.entries
        )
        self._could_campaign = self.can_campaign
        self._retiring: dict[NodeId, int] = {}
        """Leader only: removed peers still replicated to until they learn of their removal,
        each with the index of the configuration entry that removed it."""
        self._retire_by: dict[NodeId, float] = {}
        self._retire_seq: dict[NodeId, int] = {}
        """Leader only: the heartbeat round whose answer proves a retiring peer has seen a
        commit index past its removal."""
        """Leader only: when each retiring peer is dropped at the latest."""
        self._now = float("-inf")
        """The time of the latest input that carried one."""
        self.successor: NodeId | None = None
        """The voter a leader that removed itself handed over to (when it stepped down)."""
        self.transfer: Transfer | None = None
        """The leadership transfer in progress (leader only)."""
        self.transfer_failure: str | None = None
        """Why the last transfer this node started was abandoned."""
        self._quorum_check_due = float("-inf")
        """Leader: when the next CheckQuorum round is due."""
        self.role = Role.FOLLOWER
        self.leader_id: NodeId | None = None
        self.leader_contact_at = float("-inf")
        self.progress: dict[NodeId, Progress] = {}
        self.votes: dict[NodeId, bool] = {}
        self.seq = 0
        self.no_space = False
        """The node's disk-space alarm: as leader, accept only ``frees_space`` proposals."""
        self._durable_index = self.log.last_index
        self._saved_index = self.log.last_index
        self._reads = ReadQueue()
        self._term_start_index = 0
        self._ready = Ready()

    # -- outputs ---------------------------------------------------------------------------

    def has_ready(self) -> bool:
        """Whether any effect is waiting in the current :class:`Ready`."""
        return bool(self._ready)

    def take_ready(self) -> Ready:
        """Return and reset the accumulated effects."""
        ready, self._ready = self._ready, Ready()
        self._saved_index = self.log.last_index
        return ready

    def on_persist_refused(self, entries: Sequence[Entry]) -> None:
        """The storage refused to append ``entries`` of the last :class:`Ready` (out of disk
        space) and wrote none of them; its hard state and truncation were saved. Keep the
        entries (they stay in the log) to be saved again with the next Ready, ahead of any
        newer ones. The Ready's successful AppendResponses that cover them must not be sent.
        """
        if not entries:
            return
        kept = list(entries)
        cut = self._ready.truncate_from
        if cut is not None:
            kept = [e for e in kept if e.index < cut]
        self._ready.entries[:0] = kept
        self._saved_index = min(self._saved_index, entries[0].index - 1)

    def on_persisted(self, index: int) -> None:
        """The node synced everything up to ``index``: a leader may now count its own copy."""
        self._durable_index = max(self._durable_index, min(index, self.log.last_index))
        if self.role is Role.LEADER:
            self._maybe_commit()

    def _send(self, message: Message) -> None:
        self._ready.messages.append(message)

    def _hard_state_changed(self) -> None:
        self._ready.hard_state = HardState(self.term, self.voted_for)

    def _append(self, entries: Sequence[Entry]) -> None:
        self.log.append(entries)
        self._ready.entries.extend(entries)
        if self._members.appended(entries):
            self._membership_changed()

    def _truncate(self, index: int) -> None:
        if index <= self.commit:
            raise AssertionError(f"{self.id}: truncating committed index {index} <= {self.commit}")
        if self.role is Role.LEADER:
            raise AssertionError(
                f"{self.id}: a leader never truncates its log (Leader Append-Only)"
            )
        self.log.truncate_from(index)
        if self._members.truncated(index):
            self._membership_changed()
        self._ready.entries = [e for e in self._ready.entries if e.index < index]
        if index <= self._saved_index:
            prev = self._ready.truncate_from
            self._ready.truncate_from = index if prev is None else min(prev, index)
            self._saved_index = index - 1
        self._durable_index = min(self._durable_index, index - 1)

    # -- membership ------------------------------------------------------------------------

    @property
    def membership(self) -> Membership | None:
        """The configuration in force: the last in the log, committed or not (thesis §4.1);
        ``None`` only for a joining node that has received none yet."""
        return self._members.current

    @property
    def membership_index(self) -> int:
        """The index of the entry the configuration in force came from (the snapshot's index
        for one from a snapshot, 0 for a bootstrap configuration written nowhere yet)."""
        return self._members.index

    @property
    def membership_committed(self) -> bool:
        """Whether the configuration in force is committed, as far as this node knows."""
        return self._members.index <= self.commit

    def membership_at(self, index: int) -> Membership | None:
        """The configuration in force at ``index`` (for a snapshot taken or sent there)."""
        return self._members.at(index)

    @property
    def can_campaign(self) -> bool:
        """Whether this node may start elections: it is a voter (incoming or outgoing) of the
        configuration in force. Learners, removed nodes and joining nodes never campaign."""
        m = self._members.current
        return m is not None and self.id in m.all_voters

    @property
    def replica_ids(self) -> frozenset[NodeId]:
        """Where a leader replicates: every member of the configuration in force but itself."""
        m = self._members.current
        members = frozenset() if m is None else m.members
        return (members | self._retiring.keys()) - {self.id}

    def _sole_voter(self) -> bool:
        m = self._members.current
        return m is not None and m.all_voters == {self.id}

    def _membership_changed(self) -> None:
        """The configuration in force changed: bring roles, progress and timers in line."""
        self._ready.membership_changed = True
        if self.can_campaign != self._could_campaign:
            self._could_campaign = self.can_campaign
            self._ready.reset_election_timer = (
                True  # a promoted node starts it, a removed one stops
            )
        if self.role is Role.LEADER:
            m = self._members.current
            members = frozenset() if m is None else m.members
            for peer in self.progress.keys() - members:
                # Removed: replicate on until it learns (next_append drops it then).
                self._retiring.setdefault(peer, self._members.index)
            for peer in members & self._retiring.keys():
                del self._retiring[peer]  # added back before it was dropped
                self._retire_by.pop(peer, None)
                self._retire_seq.pop(peer, None)
            # A new replica is sent the entry that added it first (then probed backwards).
            first = max(self._members.index, self.log.start_index + 1)
            for peer in self.replica_ids - self.progress.keys():
                self.progress[peer] = Progress(next=min(first, self.log.last_index + 1))
        elif self.role in (Role.PRE_CANDIDATE, Role.CANDIDATE) and not self.can_campaign:
            self._become_follower(self.term, None, RoleChangeReason.REMOVED)

    # -- roles -----------------------------------------------------------------------------

    def _become_follower(
        self, term: int, leader_id: NodeId | None, reason: RoleChangeReason
    ) -> None:
        was = (self.role, self.term)
        if term != self.term:
            self.term = term
            self.voted_for = None
            self._hard_state_changed()
        self.role = Role.FOLLOWER
        self.leader_id = leader_id
        self.progress = {}
        self._retiring = {}
        self._retire_by = {}
        self._retire_seq = {}
        self.transfer = None
        self.votes = {}
        self._fail_reads()
        self._ready.reset_election_timer = True
        if was != (self.role, self.term):
            self._role_changed(reason)

    def _role_changed(self, reason: RoleChangeReason) -> None:
        self._ready.role_changed = True
        self._ready.transitions.append((self.role, self.term, reason))

    def _become_pre_candidate(self) -> None:
        self.role = Role.PRE_CANDIDATE
        self.leader_id = None
        self.votes = {self.id: True}
        self._role_changed(RoleChangeReason.ELECTION_TIMEOUT)
        self._ready.reset_election_timer = True
        self._request_votes(pre_vote=True)

    def _campaign(self, reason: RoleChangeReason, *, transfer: bool = False) -> None:
        self.term += 1
        self.voted_for = self.id
        self._hard_state_changed()
        self.role = Role.CANDIDATE
        self.leader_id = None
        self.votes = {self.id: True}
        self._role_changed(reason)
        self._ready.reset_election_timer = True
        self._request_votes(pre_vote=False, transfer=transfer)

    def _request_votes(self, *, pre_vote: bool, transfer: bool = False) -> None:
        m = self._members.current
        assert m is not None  # only a node that can campaign gets here
        if joint_vote_result(m, self.votes) is VoteResult.WON:
            self._on_vote_won()
            return
        term = self.term + 1 if pre_vote else self.term
        for peer in sorted(m.all_voters - {self.id}):
            self._send(
                VoteRequest(
                    self.id, peer, term, self.log.last_index, self.log.last_term,
                    pre_vote=pre_vote, transfer=transfer,
                )
            )  # fmt: skip

    def _on_vote_won(self) -> None:
        if self.role is Role.PRE_CANDIDATE:
            self._campaign(RoleChangeReason.PRE_VOTE_WON)
        else:
            self._become_leader()

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        self.leader_id = self.id
        self.votes = {}
        self._role_changed(RoleChangeReason.ELECTION_WON)
        last = self.log.last_index
        self.progress = {p: Progress(next=last + 1) for p in sorted(self.replica_ids)}
        self.seq = 0
        self._term_start_index = last + 1
        self._ready.reset_election_timer = True  # now the CheckQuorum period
        self._quorum_check_due = self._now + self.config.election_timeout_s_min
        self.transfer_failure = None
        # Raft §8: an entry of the new term lets the leader commit (and learn the commit
        # index). A bootstrap configuration, in no log yet, is written into it instead of a
        # no-op: from then on the log is the source of truth (adopting changes no voter).
        m = self._members.current
        if self._members.index == 0 and m is not None:
            self._append([Entry(self.term, last + 1, m, EntryKind.CONFIG)])
        else:
            self._append([Entry(self.term, last + 1, None, EntryKind.NOOP)])
        self._maybe_commit()
        self._maybe_leave_joint()

    # -- inputs ----------------------------------------------------------------------------

    def in_lease(self, now: float) -> bool:
        """Whether this node heard from a live leader within the minimum election timeout
        (so it refuses to help depose it: thesis §4.2.3)."""
        if not self.config.check_quorum or self.leader_id is None:
            return False
        if self.role is Role.LEADER:
            return True
        return now - self.leader_contact_at < self.config.election_timeout_s_min

    @property
    def terms_exhausted(self) -> bool:
        """Whether the term has reached :data:`~trio_raft._types.MAX_TERM`, so this node can
        never start an election (no message can carry a higher term). Only a cluster fed
        terms near 2**62 gets here; the node layer logs it."""
        return self.term >= MAX_TERM

    def on_election_timeout(self, now: float) -> None:
        """The election timer fired. A leader runs its CheckQuorum round instead."""
        self._now = now
        self._ready.reset_election_timer = True
        if self.role is Role.LEADER:
            t = self.transfer
            if t is not None and now >= t.deadline:
                self.transfer = None
                self.transfer_failure = t.failure()
                if now < self._quorum_check_due:
                    return  # the timer fired for the transfer, before the CheckQuorum round
            self._quorum_check_due = now + self.config.election_timeout_s_min
            self._check_quorum()
            return
        if self.terms_exhausted or not self.can_campaign:
            return  # no higher term to campaign in, or not a voter: the node stays a follower
        if self.config.pre_vote:
            self._become_pre_candidate()
        else:
            self._campaign(RoleChangeReason.ELECTION_TIMEOUT)

    def step_down(self) -> None:
        """Stop leading (keeping the term): the node cannot do its job, e.g. its disk stalled."""
        if self.role is Role.LEADER:
            self._become_follower(self.term, None, RoleChangeReason.STEPPED_DOWN)

    def _check_quorum(self) -> None:
        if not self.config.check_quorum:
            return
        active = {peer: pr.recent_active for peer, pr in self.progress.items()}
        active[self.id] = True
        for p in self.progress.values():
            p.recent_active = False
        m = self._members.current
        if m is None or joint_vote_result(m, active) is not VoteResult.WON:
            self._become_follower(self.term, None, RoleChangeReason.CHECK_QUORUM)

    def step(self, m: Message, now: float) -> None:
        """Handle one message from a peer."""
        self._now = now
        if isinstance(m, VoteRequest) and self._ignores_vote_request(m):
            return
        if m.term > self.term:
            if isinstance(m, VoteRequest) and not m.transfer and self.in_lease(now):
                return  # a leader is alive: ignore the disruption, don't adopt the term
            if isinstance(m, VoteRequest) and m.pre_vote:
                pass  # a PreVote never changes our term
            elif isinstance(m, VoteResponse) and m.pre_vote and m.granted:
                pass  # a granted PreVote carries the term we asked about, not the voter's
            else:
                leader = (
                    m.src if isinstance(m, (AppendRequest, SnapshotRequest, TimeoutNow)) else None
                )
                self._become_follower(m.term, leader, RoleChangeReason.HIGHER_TERM)
        elif m.term < self.term:
            if isinstance(m, (AppendRequest, SnapshotRequest)):
                # Tell the stale leader our term so it steps down. rejected_index=0 means "not
                # a log mismatch" (prev_index 0 always matches), so no progress moves on it.
                self._send(AppendResponse(self.id, m.src, self.term, False, rejected_index=0))
            elif isinstance(m, VoteRequest):
                self._send(VoteResponse(self.id, m.src, self.term, False, pre_vote=m.pre_vote))
            return

        if isinstance(m, AppendRequest):
            self._handle_append(m, now)
        elif isinstance(m, AppendResponse):
            if self.role is Role.LEADER:
                self._handle_append_response(m, now)
        elif isinstance(m, SnapshotRequest):
            self._follow(m.src, now)  # the chunk itself is the node's business
        elif isinstance(m, SnapshotResponse):
            if self.role is Role.LEADER:
                self._handle_snapshot_response(m, now)
        elif isinstance(m, VoteRequest):
            self._handle_vote_request(m)
        elif isinstance(m, VoteResponse):
            self._handle_vote_response(m)
        elif isinstance(m, TimeoutNow) and self._obeys_timeout_now(m):
            # The leader of this term hands over: campaign at once, skipping PreVote; the
            # request's transfer flag gets it past the others' leases (etcd's campaignTransfer).
            self._campaign(RoleChangeReason.TRANSFER, transfer=True)

    def _obeys_timeout_now(self, m: TimeoutNow) -> bool:
        return (
            self.role is Role.FOLLOWER
            and m.src == self.leader_id
            and self.can_campaign
            and not self.terms_exhausted
        )

    def _ignores_vote_request(self, m: VoteRequest) -> bool:
        """A vote request from a node that is not a voter here and whose log is behind ours
        would be refused anyway: drop it without adopting its term, so a removed node that
        never learned of its removal cannot disrupt the cluster (see membership.rst, "Removed
        nodes"). A non-voter with a log at least as new as ours is answered normally: our own
        configuration may be the stale one."""
        m_conf = self._members.current
        if m_conf is not None and m.src in m_conf.all_voters:
            return False
        return not self.log.is_up_to_date(m.last_log_index, m.last_log_term)

    def _handle_vote_request(self, m: VoteRequest) -> None:
        can_vote = (
            self.voted_for == m.src
            or (self.voted_for is None and self.leader_id is None)
            or (m.pre_vote and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.last_log_index, m.last_log_term):
            self._send(VoteResponse(self.id, m.src, m.term, True, pre_vote=m.pre_vote))
            if not m.pre_vote:
                self.voted_for = m.src
                self._hard_state_changed()
                self._ready.reset_election_timer = True
        else:
            self._send(VoteResponse(self.id, m.src, self.term, False, pre_vote=m.pre_vote))

    def _handle_vote_response(self, m: VoteResponse) -> None:
        if self.role is Role.PRE_CANDIDATE and m.pre_vote:
            # Granted PreVotes echo the term asked about; refusals carry the voter's term (a
            # higher one already made us a follower in step()).
            current = m.term == (self.term + 1 if m.granted else self.term)
        else:
            current = self.role is Role.CANDIDATE and not m.pre_vote and m.term == self.term
        if not current:
            return  # stale, or for another round
        self.votes[m.src] = m.granted
        membership = self._members.current
        assert membership is not None  # a candidate can campaign
        result = joint_vote_result(membership, self.votes)
        if result is VoteResult.WON:
            self._on_vote_won()
        elif result is VoteResult.LOST:
            self._become_follower(self.term, None, RoleChangeReason.ELECTION_LOST)

    def _follow(self, leader: NodeId, now: float) -> None:
        """A message from the leader of our term arrived."""
        if self.role is not Role.FOLLOWER or self.leader_id != leader:
            self._become_follower(self.term, leader, RoleChangeReason.LEADER_FOUND)
        self.leader_contact_at = now
        self._ready.reset_election_timer = True

    def _handle_append(self, m: AppendRequest, now: float) -> None:
        self._follow(m.src, now)
        if m.prev_index < self.log.start_index:
            # The start of this request is compacted here: committed, hence matching. Skip it.
            m = attrs.evolve(
                m,
                prev_index=self.log.start_index,
                prev_term=self.log.start_term,
                entries=tuple(e for e in m.entries if e.index > self.log.start_index),
            )
        if self.log.match_term(m.prev_index, m.prev_term):
            conflict = self.log.find_conflict(m.entries)
            if conflict:
                if conflict <= self.log.last_index:
                    self._truncate(conflict)
                self._append(m.entries[conflict - m.entries[0].index :])
            last_new = m.prev_index + len(m.entries)
            if min(m.commit, last_new) > self.commit:
                self.commit = min(m.commit, last_new)
            self._send(
                AppendResponse(
                    self.id, m.src, self.term, True, match_index=last_new,
                    last_index=self.log.last_index, seq=m.seq,
                )
            )  # fmt: skip
            return
        # Fast back-up: tell the leader where our log stops agreeing, a whole term at a time.
        conflict_term, conflict_index = self.log.conflict_hint(m.prev_index, self.commit)
        self._send(
            AppendResponse(
                self.id, m.src, self.term, False, rejected_index=m.prev_index,
                conflict_term=conflict_term, conflict_index=conflict_index,
                last_index=self.log.last_index, seq=m.seq,
            )
        )  # fmt: skip

    def _handle_append_response(self, m: AppendResponse, now: float) -> None:
        pr = self.progress.get(m.src)
        if pr is None:
            return
        self._heard(pr, now)
        if m.seq > pr.acked_seq:
            pr.acked_seq = m.seq
            self._confirm_reads()
        if m.success:
            if pr.on_success(m.match_index, self.log.start_index):
                self._heard(pr, now)
                self._maybe_commit()
                self._maybe_send_timeout_now()
        elif m.rejected_index > 0:  # 0: refused for its term, not for a mismatch
            hint = m.conflict_index
            if m.conflict_term > 0:
                last_of_term = self.log.last_index_of_term(m.conflict_term)
                if last_of_term is not None:
                    hint = last_of_term + 1
            pr.on_reject(m.rejected_index, hint)

    def _heard(self, pr: Progress, now: float) -> None:
        pr.on_heard(now, self.log.last_index - pr.match, self.config.catch_up_entries)

    def _handle_snapshot_response(self, m: SnapshotResponse, now: float) -> None:
        pr = self.progress.get(m.src)
        if pr is None:
            return
        self._heard(pr, now)
        if m.done:
            if m.index > pr.match:
                pr.on_snapshot_installed(m.index)
                self._heard(pr, now)
                self._maybe_commit()
            elif pr.state is ProgressState.SNAPSHOT and m.index == pr.pending_snapshot:
                pr.become_probe()
        elif pr.state is ProgressState.SNAPSHOT and m.index == pr.pending_snapshot:
            pr.snapshot_offset = m.offset

    # -- snapshots -------------------------------------------------------------------------

    def compact(self, index: int) -> int | None:
        """Drop the log up to ``index`` (covered by a durable snapshot). Returns the term of the
        entry at ``index`` for the storage's compaction, or ``None`` if nothing changed."""
        if index <= self.log.start_index:
            return None
        if index > self.commit:
            raise AssertionError(f"{self.id}: compacting uncommitted index {index} > {self.commit}")
        term = self.log.term(index)
        assert term is not None
        self.log.compact(index)
        self._members.compacted(index)
        self._drop_unsaved_through(index)
        return term

    def _drop_unsaved_through(self, index: int) -> None:
        """A durable snapshot now covers the log through ``index``: entries up to it that are
        still waiting to be saved (kept after a refused append) are never saved now, and the
        storage's log continues after ``index``."""
        r = self._ready
        if r.entries and r.entries[0].index <= index:
            r.entries = [e for e in r.entries if e.index > index]
        if r.truncate_from is not None and r.truncate_from <= index:
            r.truncate_from = index + 1
        self._saved_index = max(self._saved_index, index)
        self._durable_index = max(self._durable_index, index)

    def install_snapshot(self, meta: SnapshotMeta) -> bool:
        """Adopt a durable snapshot received from the leader (Raft §7).

        Returns whether the log already held the snapshot's last entry (its suffix is then
        kept); otherwise the whole log was discarded and the caller must drop it from storage.
        """
        if meta.index <= self.commit:
            raise AssertionError(f"{self.id}: installing snapshot {meta.index} <= {self.commit}")
        matched = self.log.match_term(meta.index, meta.term)
        if matched:
            self.log.compact(meta.index)
            self._drop_unsaved_through(meta.index)
        else:
            self.log.reset(meta.index, meta.term)
            self._ready.entries = []
        if self._members.installed(meta.index, meta.membership, kept=matched):
            self._membership_changed()
        self.commit = meta.index
        self._saved_index = max(self._saved_index, meta.index) if matched else meta.index
        self._durable_index = max(self._durable_index, meta.index) if matched else meta.index
        return matched

    def _maybe_commit(self) -> None:
        m = self._members.current
        if m is None:
            return
        match = {p: pr.match for p, pr in self.progress.items()}
        match[self.id] = self._durable_index
        index = joint_committed_index(m, match)
        # Figure 8: only entries of the leader's own term are committed by counting replicas.
        if index > self.commit and self.log.term(index) == self.term:
            self.commit = index
            self._confirm_reads()
            self._maybe_leave_joint()
            self._maybe_hand_over()
            self._maybe_send_timeout_now()

    def _maybe_leave_joint(self) -> None:
        """Leave a committed joint configuration toward its new voters (thesis §4.3): every
        leader does, so no crash or leader change leaves a joint configuration behind."""
        m = self._members.current
        if (
            self.role is Role.LEADER
            and m is not None
            and m.is_joint
            and self._members.index <= self.commit
        ):
            last = self.log.last_index
            self._append([Entry(self.term, last + 1, m.leave(), EntryKind.CONFIG)])
            if self._sole_voter():
                self._maybe_commit()

    def _maybe_hand_over(self) -> None:
        """A leader that is not a voter of its committed configuration steps down (thesis
        §4.2.2), naming the most up-to-date live voter as its successor."""
        m = self._members.current
        if (
            self.role is not Role.LEADER
            or m is None
            or self.id in m.all_voters
            or self._members.index > self.commit
        ):
            return
        match = {p: pr.match for p, pr in self.progress.items()}
        self.successor = choose_successor(m, match, self._live_peers(), self.id)
        if self.successor is not None and match[self.successor] == self.log.last_index:
            self._send(TimeoutNow(self.id, self.successor, self.term))
        self._become_follower(self.term, None, RoleChangeReason.REMOVED)

    # -- leadership transfer ---------------------------------------------------------------

    def transfer_leadership(self, target: NodeId | None, now: float) -> NodeId:
        """Start handing leadership to ``target`` (``None``: the live voter with the most log).
        Returns the chosen target (this node's id: nothing to do). Until the transfer ends,
        :meth:`propose` raises :exc:`NotLeaderError` naming the target.

        Raises:
            NotLeaderError: not the leader.
            MembershipChangeInProgressError: a membership change or another transfer is in
                flight.
            InvalidMembershipError: ``target`` is not a voter (rule ``not_a_voter``), or there
                is no other voter (``no_other_voter``).
            LeadershipTransferError: ``target`` is None and no other voter is live.
        """
        self._now = now
        self._require_leader()
        m = self._members.current
        assert m is not None
        if target == self.id:
            return self.id
        if self.transfer is not None or m.is_joint or self._members.index > self.commit:
            raise MembershipChangeInProgressError(
                "a membership change or another leadership transfer is in flight; wait for it "
                "to finish and retry",
                None if self.transfer is not None else m,
                0 if self.transfer is not None else self._members.index,
            )
        match = {p: pr.match for p, pr in self.progress.items()}
        target = pick_target(
            m, target, self.id, match, self._live_peers(), self.config.election_timeout_s_min
        )
        lag = self.log.last_index - self.progress[target].match
        self.transfer = Transfer(target, now + self.config.election_timeout_s_max, lag)
        self.transfer_failure = None
        self._ready.reset_election_timer = True  # wake up at the transfer's deadline
        self._maybe_send_timeout_now()
        return target

    @property
    def leader_deadline(self) -> float:
        """Leader: when the timer must fire next (CheckQuorum round, or transfer deadline)."""
        t = self.transfer
        return self._quorum_check_due if t is None else min(self._quorum_check_due, t.deadline)

    def _maybe_send_timeout_now(self) -> None:
        """Send TimeoutNow once the target holds the whole log and all of it is committed (so
        no proposal of this leader is still pending when it steps down)."""
        t = self.transfer
        if t is None or t.sent or self.role is not Role.LEADER:
            return
        last = self.log.last_index
        pr = self.progress.get(t.target)
        if pr is not None and pr.match == last and self.commit == last:
            t.sent = True
            self._send(TimeoutNow(self.id, t.target, self.term))

    def _live_peers(self) -> set[NodeId]:
        """Peers heard from within the minimum election timeout (as of the latest input)."""
        horizon = self._now - self.config.election_timeout_s_min
        return {p for p, pr in self.progress.items() if pr.last_heard_at >= horizon}

    # -- leader API ------------------------------------------------------------------------

    def _require_leader(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.id, self.leader_id)
        m = self._members.current
        if m is not None and self.id not in m.all_voters:
            # Leaving: it steps down once its removal commits; nothing new is started here,
            # so nothing is left with an unknown outcome by that step-down.
            raise NotLeaderError(self.id, None)

    @property
    def leader_ready(self) -> bool:
        """Whether this leader has committed an entry of its own term (so it knows the
        configuration it inherited is committed, and may start a change)."""
        return self.role is Role.LEADER and self.commit >= self._term_start_index

    def caught_up_for(self, peer: NodeId, now: float) -> float:
        """How long ``peer`` has stayed within ``Config.catch_up_entries`` of this leader's
        log (0 if it is not caught up, or not a replica)."""
        pr = self.progress.get(peer)
        if pr is None or pr.caught_up_since is None:
            return 0.0
        return max(0.0, now - pr.caught_up_since)

    def lag(self, peer: NodeId) -> int | None:
        """How many entries ``peer`` is behind this leader's last index (None if unknown)."""
        pr = self.progress.get(peer)
        return None if pr is None else self.log.last_index - pr.match

    def propose_membership(self, target: Membership, now: float) -> Entry | None:
        """Start the change to ``target``: append the configuration that leads to it (the
        target itself when the voters do not change, else the joint configuration entering
        it). Returns ``None`` if nothing needs appending (the target is in force, or the joint
        configuration in force is already leaving toward it). Every check runs before
        anything is appended (see membership.rst, "The checks").

        Raises:
            NotLeaderError: not the leader (or a leader on its way out).
            InvalidMembershipError: ``target`` is not reachable from the configuration in
                force (see :func:`~trio_raft._core._membership.check_target`).
            MembershipChangeInProgressError: a change is in flight (joint, or its entry not
                committed yet) or this leader has not committed an entry of its term.
            LearnerNotCaughtUpError: a new voter has not kept up for an election timeout.
            QuorumUnavailableError: the current or the target voters lack a live majority.
        """
        self._now = now
        self._require_leader()
        current = self._members.current
        assert current is not None  # a leader has a configuration
        if already_in_force(current, target):
            return None
        facts = LeaderFacts(
            index=self._members.index,
            commit=self.commit,
            ready=self.leader_ready,
            transfer_target=None if self.transfer is None else self.transfer.target,
            caught_up={
                v: (self.caught_up_for(v, now), self.lag(v))
                for v in target.voters - current.all_voters
            },
            live=frozenset(self._live_peers() | {self.id}),
        )
        check_change(current, target, facts, self.config)
        entry = Entry(
            self.term, self.log.last_index + 1, next_step(current, target), EntryKind.CONFIG
        )
        self._append([entry])
        if self._sole_voter():
            self._maybe_commit()
        return entry

    def propose(self, commands: Sequence[object], *, frees_space: bool = False) -> list[Entry]:
        """Append commands as new entries of this leader's term.

        Raises:
            NotLeaderError: not the leader; nothing was appended.
            NoSpaceError: :attr:`no_space` is set and the commands were not marked
                ``frees_space``; nothing was appended.
            TooManyUncommittedError: the uncommitted backlog is full; nothing was appended.
        """
        self._require_leader()
        if self.transfer is not None:
            raise NotLeaderError(self.id, self.transfer.target)
        if self.no_space and not frees_space:
            raise NoSpaceError(
                f"node {self.id!r} (the leader) is low on disk space, so it accepts only "
                "commands that free space (proposed with frees_space=True); free space on its "
                "disk and retry"
            )
        if self.log.last_index - self.commit + len(commands) > self.config.max_uncommitted_entries:
            raise TooManyUncommittedError(
                f"{self.log.last_index - self.commit} entries are uncommitted (limit "
                f"max_uncommitted_entries={self.config.max_uncommitted_entries}); followers are "
                "slow or unreachable, retry later"
            )
        last = self.log.last_index
        entries = [Entry(self.term, last + 1 + i, c) for i, c in enumerate(commands)]
        self._append(entries)
        if self._sole_voter():
            self._maybe_commit()
        return entries

    def read_index(self) -> int:
        """Start a ReadIndex round; returns a read id confirmed later in
        :attr:`Ready.confirmed_reads` (or failed in :attr:`Ready.failed_reads`).

        Raises:
            NotLeaderError: not the leader.
        """
        self._require_leader()
        quorum_seq = self._quorum_seq()
        if quorum_seq is None or quorum_seq >= self.seq:
            self.seq += 1  # a new round, started now: its heartbeats leave after this read
            seq = self.seq
        elif not any(pr.sent_seq >= self.seq for pr in self.progress.values()):
            seq = self.seq  # the newest round has not left yet: it starts after this read too
        else:
            # A round is in flight, sent before this read arrived: it cannot confirm it. The
            # read waits for the next round, which starts (one for every read that arrived
            # meanwhile) once this one is confirmed (etcd's batching of ReadIndex rounds).
            seq = self.seq + 1
        read_id = self._reads.add(seq, max(self.commit, self._term_start_index))
        self._confirm_reads()
        return read_id

    def _quorum_seq(self) -> int | None:
        """The newest heartbeat round a quorum has acknowledged (``None`` without a
        configuration)."""
        m = self._members.current
        if m is None:
            return None
        acked = {p: pr.acked_seq for p, pr in self.progress.items()}
        acked[self.id] = self.seq
        return joint_committed_index(m, acked)

    def _confirm_reads(self) -> None:
        if not self._reads or self.log.term(self.commit) != self.term:
            return  # until our no-op commits we do not know the latest commit index
        quorum_seq = self._quorum_seq()
        if quorum_seq is None:
            return
        self._ready.confirmed_reads += self._reads.confirm(quorum_seq)
        if quorum_seq >= self.seq and self._reads.newest_seq > self.seq:
            # Reads that arrived while the last round was in flight: one new round for all.
            self.seq += 1

    def _fail_reads(self) -> None:
        self._ready.failed_reads += self._reads.fail_all()

    def next_append(self, peer: NodeId, now: float, heartbeat_due: bool) -> AppendRequest | None:
        """What the replicator for ``peer`` should send now, if anything; records it as sent.

        Entries go out while the flow-control window allows; otherwise a heartbeat goes out
        when one is due or a read is waiting for confirmation. ``None`` also when the follower
        needs the snapshot (its progress is then in ``SNAPSHOT``: the replicator streams it).

        Every transition (stall handling included) happens before the entries-or-snapshot
        decision, so a returned request always satisfies: ``prev_index >= log.start_index``,
        ``prev_term`` is the term there, and its entries are non-empty only if they run
        contiguously from ``prev_index + 1``.
        """
        self._now = now
        pr = self.progress[peer]
        cfg = self.config
        if peer in self._retiring and self._retired(peer, pr, now):
            return None
        if heartbeat_due and pr.stalled(now, 2 * cfg.heartbeat_s):
            pr.on_stall()  # the probe, or the in-flight window, got lost
        if pr.state is not ProgressState.SNAPSHOT and pr.next <= self.log.start_index:
            pr.become_snapshot()  # what it needs next is compacted away
        if pr.state is ProgressState.SNAPSHOT:
            return None  # the replicator is streaming a snapshot (its chunks keep the lease)
        if pr.next <= self.log.last_index and pr.can_send_entries(
            cfg.max_inflight_appends, cfg.max_inflight_bytes
        ):
            entries, size = self._batch(pr.next)
            # Coalesce: while an append is in flight, a partial batch waits for its answer (or
            # a heartbeat) and goes out then as one with whatever came meanwhile, so a busy
            # leader sends few large appends, not one per proposal. Full batches (a follower
            # catching up) pipeline up to the window.
            if not pr.inflight or self._full(entries, size):
                prev = pr.next - 1
                pr.sent_entries(entries[-1].index, size, now)
                pr.sent_seq = self.seq
                pr.sent_commit = max(pr.sent_commit, min(self.commit, entries[-1].index))
                return AppendRequest(
                    self.id, peer, self.term, prev, self._known_term(prev), tuple(entries),
                    self.commit, self.seq,
                )  # fmt: skip
        if heartbeat_due or pr.sent_seq < self.seq:
            return self._heartbeat(peer, pr)
        return None

    def _heartbeat(self, peer: NodeId, pr: Progress) -> AppendRequest:
        """An AppendRequest without entries for ``pr``'s follower (records it as sent)."""
        pr.sent_seq = self.seq
        # Where the logs are known to match; if that is compacted, the compaction point
        # (a follower without it rejects, and the rejection sends it a snapshot).
        prev = max(pr.match, self.log.start_index)
        pr.sent_commit = max(pr.sent_commit, min(self.commit, prev))
        return AppendRequest(
            self.id, peer, self.term, prev, self._known_term(prev), (),
            min(self.commit, prev), self.seq,
        )  # fmt: skip

    def _full(self, entries: list[Entry], size: int) -> bool:
        """Whether a batch is as large as one AppendRequest may be: it reaches a limit, or a
        limit cut it short of the log's end."""
        cfg = self.config
        return (
            entries[-1].index < self.log.last_index
            or len(entries) >= cfg.max_entries_per_append
            or size >= cfg.max_bytes_per_append
        )

    def can_send_inline(self, peer: NodeId) -> bool:
        """Whether :meth:`next_append` for ``peer`` only sends entries or a read's heartbeat
        (a follower replicating normally, not retiring): no transition, no snapshot, nothing
        but the messages and their progress; the actor may call it outside the replicator."""
        pr = self.progress.get(peer)
        return pr is not None and pr.state is ProgressState.REPLICATE and peer not in self._retiring

    def has_to_send(self, peer: NodeId) -> bool:
        """Whether :meth:`next_append` for ``peer`` may send before its next heartbeat is due
        (entries, a read's round, a probe, a snapshot, a retirement): wake its replicator."""
        pr = self.progress.get(peer)
        if pr is None or pr.state is not ProgressState.REPLICATE or peer in self._retiring:
            return True
        pending = self.log.last_index - pr.next + 1
        # Entries wait behind an append in flight until a full batch is pending (see
        # next_append; counted in entries only: a batch full by bytes goes with the answer).
        return pr.sent_seq < self.seq or (
            pending > 0 and (not pr.inflight or pending >= self.config.max_entries_per_append)
        )

    def _retired(self, peer: NodeId, pr: Progress, now: float) -> bool:
        """Drop a removed peer once it knows of its removal: its log holds the entry that
        removed it, committed, and it has answered a message sent after that, which carried a
        commit index past the entry (a message merely sent could still be lost, or dropped
        from the transport's queue by the very retirement); or
        :data:`RETIRE_ELECTION_TIMEOUTS` maximum election timeouts after that entry committed
        (a removed peer that is down), whichever is first."""
        removed_at = self._retiring[peer]
        if self.commit < removed_at:
            return False
        deadline = self._retire_by.setdefault(
            peer, now + RETIRE_ELECTION_TIMEOUTS * self.config.election_timeout_s_max
        )
        told_seq = self._retire_seq.get(peer)
        if told_seq is None and pr.match >= removed_at:
            # A new round: the next message to the peer carries it and a commit index past
            # its removal; its answer to that round (or a later one) proves it learned.
            self.seq += 1
            self._retire_seq[peer] = told_seq = self.seq
        told = told_seq is not None and pr.acked_seq >= told_seq
        if not told and now < deadline:
            return False
        del self._retiring[peer]
        self._retire_by.pop(peer, None)
        self._retire_seq.pop(peer, None)
        del self.progress[peer]
        self._ready.replicas_changed = True  # the node stops its replicator
        return True

    def _known_term(self, index: int) -> int:
        term = self.log.term(index)
        if term is None:
            raise AssertionError(
                f"{self.id}: no term for index {index} (log {self.log.start_index}.."
                f"{self.log.last_index}): an AppendEntries must start in the log"
            )
        return term

    def _batch(self, start: int) -> tuple[list[Entry], int]:
        """Entries from ``start`` within the per-message limits, and their estimated size."""
        cfg = self.config
        return self.log.batch(start, cfg.max_entries_per_append, cfg.max_bytes_per_append)
