"""Raft's safety properties (Figure 3 of the paper), checked live as a simulation runs.

The checker sees every state change of every node (through a private observer hook of the
node) and raises :class:`InvariantViolation` at the first event that breaks:

* **Election Safety**: at most one leader per term.
* **Leader Append-Only**: a leader never overwrites or deletes its entries.
* **Log Matching**: two entries with the same index and term hold the same command and follow
  the same history (checked inductively: same ``(index, term)`` implies same command and same
  previous term, for every entry any node persists).
* **Leader Completeness**: a new leader's log holds every entry committed before its term.
* **State Machine Safety**: every node applies the same entry, with the same result, at each
  index; each node applies indexes in order, each once.

And the properties of membership changes (Raft thesis §4.3; see :doc:`membership`), where a
node's *configuration in force* is the one its state reports (the last ``CONFIG`` entry of its
log, else its snapshot's or bootstrap configuration; the checker verifies at every
``"membership"`` event that it is exactly that), and majorities are counted by the checker's own
code, not the library's:

* **Configuration in force**: what a node reports as its configuration is the last
  configuration entry of its log (or its base when the log holds none).
* **Only voters lead**: a node becomes leader only if it is a voter (incoming or outgoing) of
  its configuration in force.
* **Vote quorum**: the nodes whose *durable* vote in the new leader's term is for it (and the
  leader itself) form a majority of each voter set of its configuration in force.
* **Commit quorum**: when a leader's commit index passes ``i``, entry ``i`` is of the leader's
  own term (Figure 8), and the nodes that durably hold it (persisted, or covered by a snapshot)
  form a majority of each voter set of its configuration in force.
* **One change at a time**: in every node's log, each configuration entry is a *simple*
  (same voters, neither joint), *enter* (into a joint configuration leaving the previous
  voters) or *leave* (from a joint configuration to its incoming voters) step from the
  configuration before it; and a leader appends one only when the previous configuration in
  its log is committed.
* **Configuration agreement**: the configuration in force at every committed index is the
  same on every node that has one there (snapshots included).
* **Role change reason**: every role change is reported with the role and term the node then
  has and a :class:`~trio_raft.RoleChangeReason` that can lead to that role (a leader only by
  winning an election; a follower never by an election timeout); logs and events rely on it.

"In force at that moment" accepts every configuration the node had in force since its last
role change or (as leader) commit: a node that counts a quorum and appends a configuration entry
in the same batch of work reports both at once, after both.

One liveness property is checked on demand, once a cluster is healed and settled
(:meth:`SimulatedCluster.wait_logs_bounded`, part of every chaos run), with
:func:`unbounded_logs`:

* **Bounded log**: a node whose state machine takes snapshots keeps at most
  ``snapshot_entries + snapshot_keep_entries`` entries beyond those it has not applied yet (a
  node that stops snapshotting, say because an abandoned download holds its snapshot slot,
  grows without bound and breaks no safety property).
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, cast

import trio

from .._errors import RaftError
from .._messages import MESSAGE_TYPES
from .._types import (
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

if TYPE_CHECKING:
    from .._core._state import Ready
    from .._node import Node


def _describe(data: object) -> str:
    """A message in one line (type, link, term, entry range); anything else as its repr."""
    if isinstance(data, MESSAGE_TYPES):
        entries = getattr(data, "entries", None)
        extra = f" [{entries[0].index}..{entries[-1].index}]" if entries else ""
        return f"'{type(data).__name__} {data.src}->{data.dst} t{data.term}{extra}'"
    return repr(data)


def _majority(voters: frozenset[NodeId], ayes: Iterable[NodeId]) -> bool:
    """Whether ``ayes`` holds more than half of ``voters`` (an empty set is always won)."""
    if not voters:
        return True
    return 2 * len(voters & frozenset(ayes)) > len(voters)


def joint_majority(membership: Membership, ayes: Iterable[NodeId]) -> bool:
    """Whether ``ayes`` holds a majority of ``membership.voters`` and one of its ``outgoing``
    voters (the checker's own count, independent of the library's quorum code)."""
    ayes = frozenset(ayes)
    return _majority(membership.voters, ayes) and _majority(membership.outgoing, ayes)


def config_step(previous: Membership, following: Membership) -> str | None:
    """How configuration ``following`` may follow ``previous`` in a log: ``"simple"`` (same
    voters, neither joint), ``"enter"`` (into a joint configuration whose outgoing voters are
    ``previous``'s voters), ``"leave"`` (from a joint configuration to its incoming voters,
    nothing else changed: ``previous.leave()``), or ``None`` if it may not (more than one
    change at a time)."""
    if previous.outgoing:
        return "leave" if following == previous.leave() else None
    if not following.outgoing:
        return "simple" if following.voters == previous.voters else None
    return "enter" if following.outgoing == previous.voters else None


def _describe_config(m: Membership | None) -> str:
    if m is None:
        return "no configuration"
    text = "voters {" + ", ".join(sorted(m.voters)) + "}"
    if m.outgoing:
        text += " joint with outgoing {" + ", ".join(sorted(m.outgoing)) + "}"
    if m.learners:
        text += " learners {" + ", ".join(sorted(m.learners)) + "}"
    return text


def log_bound(node: Node) -> int | None:
    """The most entries ``node``'s un-compacted log may hold once settled, or ``None`` if its
    state machine takes no snapshots (its log grows by design).

    ``snapshot_entries + snapshot_keep_entries``, plus the entries it has not applied yet (a
    snapshot covers only applied entries).
    """
    if getattr(node.state_machine, "snapshot", None) is None:
        return None
    cfg = node._state.config
    unapplied = node._state.log.last_index - node.status.last_applied
    return cfg.snapshot_entries + cfg.snapshot_keep_entries + unapplied


def unbounded_logs(nodes: Iterable[Node]) -> list[str]:
    """Describe every node whose un-compacted log exceeds :func:`log_bound` (empty if none)."""
    problems = []
    for node in nodes:
        bound = log_bound(node)
        log = node._state.log
        if bound is not None and len(log) > bound:
            problems.append(
                f"{node.id} holds {len(log)} entries ({log.start_index + 1}..{log.last_index}), "
                f"over the bound {bound}; its snapshot is at {node._snapshot_index}, applied "
                f"{node.status.last_applied}, a download in progress: "
                f"{node._receiver is not None}, taking a snapshot: {node._snapshotting}"
            )
    return problems


class InvariantViolation(RaftError):
    """A safety property of Raft broke during a simulation.

    The message names the property, the seed that reproduces the run, and the last events.
    """


_REASONS: Final[Mapping[Role, frozenset[RoleChangeReason]]] = {
    Role.LEADER: frozenset({RoleChangeReason.ELECTION_WON}),
    Role.CANDIDATE: frozenset(
        {
            RoleChangeReason.ELECTION_TIMEOUT, RoleChangeReason.PRE_VOTE_WON,
            RoleChangeReason.TRANSFER,
        }
    ),
    Role.PRE_CANDIDATE: frozenset({RoleChangeReason.ELECTION_TIMEOUT}),
    Role.FOLLOWER: frozenset(
        {
            RoleChangeReason.HIGHER_TERM, RoleChangeReason.LEADER_FOUND,
            RoleChangeReason.ELECTION_LOST, RoleChangeReason.CHECK_QUORUM,
            RoleChangeReason.REMOVED, RoleChangeReason.STEPPED_DOWN,
        }
    ),
}  # fmt: skip
"""The reasons that can lead to each role."""


class InvariantChecker:
    """Observes every node of one simulated cluster and checks Raft's safety properties and
    those of membership changes (see the module's documentation)."""

    def __init__(self, seed: int, *, trace_size: int = 400) -> None:
        self.seed = seed
        """The seed of the run (printed in every violation)."""
        self.trace: collections.deque[tuple[float, str, str, object]] = collections.deque(
            maxlen=trace_size
        )
        """The most recent events as ``(time, who, event, data)``; bounded by ``trace_size``."""
        self._digest = hashlib.sha256()
        self.events = 0
        """How many events were recorded."""
        self._leaders: dict[int, NodeId] = {}
        self._entries: dict[tuple[int, int], tuple[object, int]] = {}
        self._committed: dict[int, Entry] = {}
        self._applied: dict[int, tuple[Entry, object]] = {}
        self._last_applied: dict[NodeId, int] = {}
        self._commit_seen: dict[NodeId, int] = {}
        self._leader_log: dict[tuple[NodeId, int], tuple[int, Entry | None]] = {}
        # Durable state of each node, from its "persisted" and "restore" events: the votes it
        # ever cast (by term), its log entries (index -> term) and its snapshot (index, term).
        self._votes: dict[tuple[NodeId, int], NodeId] = {}
        self._durable: dict[NodeId, dict[int, int]] = {}
        self._durable_snapshot: dict[NodeId, tuple[int, int]] = {}
        # The configurations each node had in force since its last role change or (leader)
        # commit: a quorum counted then was counted with one of them.
        self._recent_configs: dict[NodeId, list[Membership]] = {}
        # The commit index a leader last checked a quorum for: (node, term) -> index.
        self._leader_commit: dict[tuple[NodeId, int], int] = {}
        # The last index of a leader's log whose configuration entries were checked.
        self._configs_checked: dict[tuple[NodeId, int], int] = {}
        # The configuration in force at each committed index, and the node that first had it.
        self._committed_config: dict[int, tuple[Membership, NodeId]] = {}

    # -- recording ---------------------------------------------------------------------------

    def record(self, who: str, event: str, data: object = None) -> None:
        """Add an event to the trace (and to the run's digest)."""
        now = trio.current_time()
        self.trace.append((now, who, event, data))
        self.events += 1
        self._digest.update(f"{now!r} {who} {event} {data!r}\n".encode())

    @property
    def digest(self) -> str:
        """A hash of every event so far: equal digests mean identical runs."""
        return self._digest.hexdigest()

    def format_trace(self) -> str:
        """The last events, one per line, oldest first."""
        return "\n".join(
            f"{t:10.4f}  {who:<8} {event:<10} {_describe(data)}"
            for t, who, event, data in self.trace
        )

    def fail(self, prop: str, detail: str) -> InvariantViolation:
        """Build the error for a broken property (raise it)."""
        return InvariantViolation(
            f"{prop} violated: {detail}\n"
            f"reproduce with seed={self.seed}\n"
            f"last {len(self.trace)} events:\n{self.format_trace()}"
        )

    # -- the observer --------------------------------------------------------------------------

    def node_started(self, node_id: NodeId, *, stored: StoredState | None = None) -> None:
        """A node (re)started with an empty state machine: it will apply from index 1 again.

        Args:
            node_id: The node.
            stored: What its storage holds durably as it starts (its votes and log count for
                the vote and commit quorums); if omitted, the checker keeps what it learnt from
                the node's earlier events.
        """
        self._last_applied[node_id] = 0
        self._commit_seen[node_id] = 0
        self._recent_configs.pop(node_id, None)
        if stored is not None:
            hs = stored.hard_state
            if hs.voted_for is not None:
                self._votes[(node_id, hs.term)] = hs.voted_for
            self._durable[node_id] = {e.index: e.term for e in stored.entries}
            self._durable_snapshot[node_id] = (stored.log_start_index, stored.log_start_term)
        self.record(node_id, "start")

    def durable_write(
        self,
        node_id: NodeId,
        hard_state: HardState | None,
        truncate_from: int | None,
        entries: Sequence[Entry],
    ) -> None:
        """A write of ``node_id`` became durable: its vote and entries now count for the vote
        and commit quorums. The checker also learns them from ``"persisted"`` events; a storage
        that reports its syncs (:attr:`SimulatedStorage.on_durable`) covers the writes that
        have none (a vote saved while the disk refused the entries with it, an install's
        truncation)."""
        if hard_state is not None and hard_state.voted_for is not None:
            self._votes[(node_id, hard_state.term)] = hard_state.voted_for
        durable = self._durable.setdefault(node_id, {})
        if truncate_from is not None:
            for index in [i for i in durable if i >= truncate_from]:
                del durable[index]
        for e in entries:
            durable[e.index] = e.term

    def node_removed(self, node_id: NodeId) -> None:
        """``node_id`` and its storage are gone for good (its id may be reused by a fresh node
        with empty storage): forget its votes and durable log. Facts about the cluster (leaders
        per term, committed entries and configurations) stay."""
        self._durable.pop(node_id, None)
        self._durable_snapshot.pop(node_id, None)
        self._recent_configs.pop(node_id, None)
        for key in [k for k in self._votes if k[0] == node_id]:
            del self._votes[key]
        self.record(node_id, "removed")

    def observe(self, node: Node, event: str, data: object) -> None:
        st = node._state
        nid = node.id
        if event == "role":
            role, term, reason = cast("tuple[Role, int, RoleChangeReason]", data)
            self.record(nid, "role", f"{role.value}@{term} ({reason.value})")
            self._check_reason(nid, role, term, reason, st.role, st.term)
            if role is Role.LEADER:
                self._on_leader(node)
            self._recent_configs[nid] = []
        elif event == "persisted":
            ready: Ready = data  # type: ignore[assignment]
            self.record(
                nid, "persist", (ready.truncate_from, len(ready.entries), st.log.last_index)
            )
            for e in ready.entries:
                self._check_log_matching(nid, e, st.log.term(e.index - 1) or 0)
            self._on_persisted(node, ready)
        elif event == "commit":
            self.record(nid, "commit", st.commit)
            self._on_commit(node)
            if st.role is Role.LEADER:
                self._check_commit_quorum(node)
                self._recent_configs[nid] = []
        elif event == "restore":
            meta = cast("SnapshotMeta", data)
            self.record(nid, "restore", (meta.index, meta.term))
            self._on_restore(nid, meta)
            self._on_restore_durable(node, meta)
        elif event == "membership":
            index, membership = cast("tuple[int, Membership | None]", data)
            self.record(nid, "membership", (index, _describe_config(membership)))
            self._check_config_in_force(node, index, membership)
        elif event in ("snapshot", "snapshot-abandoned"):
            meta = cast("SnapshotMeta", data)
            self.record(nid, event, (meta.index, meta.term))
            if event == "snapshot":
                self._snapshot_durable(nid, meta)
        elif event == "apply":
            entry, result = cast("tuple[Entry, object]", data)
            self.record(nid, "apply", (entry.index, entry.term, entry.command, result))
            self._on_apply(nid, entry, result)
        if st.role is Role.LEADER:
            self._check_append_only(node)
            self._check_new_configs(node)
        m = st.membership
        recent = self._recent_configs.setdefault(nid, [])
        if m is not None and (not recent or (recent[-1] is not m and recent[-1] != m)):
            recent.append(m)

    def _configs_in_force(self, node: Node) -> list[Membership]:
        """The node's configuration in force now and those it had since its last role change
        or (as leader) commit: a quorum counted and a configuration appended in one batch of
        the node's work are reported together, after both."""
        configs = list(self._recent_configs.get(node.id, ()))
        m = node._state.membership
        if m is not None and m not in configs:
            configs.append(m)
        return configs

    def _check_reason(
        self,
        nid: NodeId,
        role: Role,
        term: int,
        reason: RoleChangeReason,
        now_role: Role,
        now_term: int,
    ) -> None:
        """A role change is reported with the role the node now has, and a reason that can
        lead to that role (logs and events rely on both)."""
        if (role, term) != (now_role, now_term):
            raise self.fail(
                "Role change reported",
                f"{nid} reported {role.value}@{term} but is {now_role.value}@{now_term}",
            )
        if reason not in _REASONS[role]:
            raise self.fail(
                "Role change reason",
                f"{nid} became {role.value} in term {term} for reason {reason.value!r}",
            )

    def _on_leader(self, node: Node) -> None:
        st = node._state
        other = self._leaders.setdefault(st.term, node.id)
        if other != node.id:
            raise self.fail(
                "Election Safety", f"{node.id} and {other} were both leader in term {st.term}"
            )
        m = st.membership
        if m is None or node.id not in m.voters | m.outgoing:
            raise self.fail(
                "Only voters lead",
                f"{node.id} became leader of term {st.term} but is not a voter of its "
                f"configuration in force at {st.membership_index}: {_describe_config(m)}",
            )
        ayes = {n for (n, term), vote in self._votes.items() if term == st.term and vote == node.id}
        ayes.add(node.id)
        configs = self._configs_in_force(node)
        if not any(joint_majority(c, ayes) for c in configs):
            raise self.fail(
                "Vote quorum",
                f"{node.id} became leader of term {st.term} with durable votes from "
                f"{{{', '.join(sorted(ayes))}}} only, not a majority of each voter set of its "
                f"configuration in force: " + " or ".join(_describe_config(c) for c in configs),
            )
        self._leader_commit[(node.id, st.term)] = st.commit
        for index, entry in self._committed.items():
            if index < st.log.start_index:
                continue  # compacted into a snapshot; its last entry is checked below
            if st.log.term(index) != entry.term:
                raise self.fail(
                    "Leader Completeness",
                    f"{node.id} leads term {st.term} without committed entry {index} "
                    f"(term {entry.term}); its log has term {st.log.term(index)} there",
                )
        self._leader_log[(node.id, st.term)] = (0, None)

    def _check_append_only(self, node: Node) -> None:
        st = node._state
        key = (node.id, st.term)
        length, last = self._leader_log.get(key, (0, None))
        if st.log.last_index < length or (
            last is not None and length > st.log.start_index and st.log.entry(length) is not last
        ):
            raise self.fail(
                "Leader Append-Only",
                f"leader {node.id} of term {st.term} lost or replaced entry {length}",
            )
        if st.log.last_index > length:
            self._leader_log[key] = (st.log.last_index, st.log.entry(st.log.last_index))

    def _check_log_matching(self, nid: NodeId, entry: Entry, prev_term: int) -> None:
        key = (entry.index, entry.term)
        seen = self._entries.setdefault(key, (entry.command, prev_term))
        if seen != (entry.command, prev_term):
            raise self.fail(
                "Log Matching",
                f"{nid} holds entry {entry.index} of term {entry.term} with command "
                f"{entry.command!r} after term {prev_term}, another node has {seen[0]!r} after "
                f"term {seen[1]}",
            )

    def _on_commit(self, node: Node) -> None:
        st = node._state
        start = max(self._commit_seen.get(node.id, 0), st.log.start_index) + 1
        config = st.membership_at(start - 1) if start <= st.commit else None
        for index in range(start, st.commit + 1):
            entry = st.log.entry(index)
            known = self._committed.setdefault(index, entry)
            if known != entry:
                raise self.fail(
                    "State Machine Safety",
                    f"{node.id} committed {entry} at {index}, but {known} was committed there",
                )
            if entry.kind is EntryKind.CONFIG:
                config = cast("Membership", entry.command)
            if config is not None:
                self._agree_config(node.id, index, config, "log")
        self._commit_seen[node.id] = max(st.commit, start - 1)

    def _on_restore(self, nid: NodeId, meta: SnapshotMeta) -> None:
        committed = self._committed.get(meta.index)
        if committed is not None and committed.term != meta.term:
            raise self.fail(
                "State Machine Safety",
                f"{nid} restored a snapshot of ({meta.index}, term {meta.term}) but entry "
                f"{meta.index} committed with term {committed.term}",
            )
        if meta.index < self._last_applied.get(nid, 0):
            raise self.fail(
                "State Machine Safety",
                f"{nid} restored snapshot {meta.index} behind its applied index "
                f"{self._last_applied[nid]}",
            )
        self._last_applied[nid] = meta.index

    def _on_apply(self, nid: NodeId, entry: Entry, result: object) -> None:
        expected = self._last_applied.get(nid, 0) + 1
        if entry.index != expected:
            raise self.fail(
                "State Machine Safety", f"{nid} applied index {entry.index}, expected {expected}"
            )
        self._last_applied[nid] = entry.index
        known = self._applied.setdefault(entry.index, (entry, result))
        if known != (entry, result):
            raise self.fail(
                "State Machine Safety",
                f"{nid} applied {entry} -> {result!r} at {entry.index}, another node applied "
                f"{known[0]} -> {known[1]!r}",
            )

    # -- membership ----------------------------------------------------------------------------

    def _on_persisted(self, node: Node, ready: Ready) -> None:
        st = node._state
        nid = node.id
        self.durable_write(nid, ready.hard_state, ready.truncate_from, ready.entries)
        for e in ready.entries:
            if e.kind is not EntryKind.CONFIG:
                continue
            previous = st.membership_at(e.index - 1)
            following = cast("Membership", e.command)
            # A bootstrap configuration was never in a log: the first one written may differ
            # from it (a node started with the current configuration, or from a snapshot
            # without one).
            bootstrap = getattr(getattr(st, "_members", None), "bootstrap", None)
            if previous is bootstrap:
                continue
            if previous is not None and config_step(previous, following) is None:
                raise self.fail(
                    "One change at a time",
                    f"{nid} holds configuration entry {e.index} (term {e.term}) "
                    f"{_describe_config(following)} after {_describe_config(previous)}, which "
                    "is neither a simple, an enter nor a leave step",
                )

    def _snapshot_durable(self, nid: NodeId, meta: SnapshotMeta) -> None:
        """A snapshot of ``nid`` is durable: it covers every entry up to its index (the
        checker forgets those, keeping its per-node record as short as the log)."""
        index, _ = self._durable_snapshot.get(nid, (0, 0))
        if meta.index >= index:
            self._durable_snapshot[nid] = (meta.index, meta.term)
            durable = self._durable.get(nid, {})
            for i in [i for i in durable if i <= meta.index]:
                del durable[i]

    def _on_restore_durable(self, node: Node, meta: SnapshotMeta) -> None:
        nid = node.id
        self._snapshot_durable(nid, meta)
        if not node._state.log.match_term(meta.index, meta.term):
            # An install that does not match the log discards it (from storage too).
            durable = self._durable.get(nid, {})
            for i in [i for i in durable if i > meta.index]:
                del durable[i]
        if meta.membership is not None:
            self._agree_config(nid, meta.index, meta.membership, "snapshot")

    def _agree_config(self, nid: NodeId, index: int, membership: Membership, what: str) -> None:
        known, who = self._committed_config.setdefault(index, (membership, nid))
        if known is not membership and known != membership:
            raise self.fail(
                "Configuration agreement",
                f"{nid} has {_describe_config(membership)} in force at committed index {index} "
                f"(its {what}), but {who} has {_describe_config(known)} there",
            )

    def _durably_holds(self, nid: NodeId, index: int, term: int) -> bool:
        if self._durable.get(nid, {}).get(index) == term:
            return True
        snap_index, snap_term = self._durable_snapshot.get(nid, (0, 0))
        return snap_index > index or (snap_index == index and snap_term == term)

    def _check_commit_quorum(self, node: Node) -> None:
        st = node._state
        key = (node.id, st.term)
        if st.commit <= self._leader_commit.get(key, st.commit):
            return
        self._leader_commit[key] = st.commit
        index = st.commit
        term = st.log.term(index)
        if term != st.term:
            raise self.fail(
                "Commit quorum",
                f"leader {node.id} of term {st.term} advanced its commit index to {index}, an "
                f"entry of term {term}: a leader commits by counting only its own term's entries",
            )
        configs = self._configs_in_force(node)
        voters = frozenset().union(*(c.voters | c.outgoing for c in configs))
        holders = {n for n in voters if self._durably_holds(n, index, term)}
        if not any(joint_majority(c, holders) for c in configs):
            raise self.fail(
                "Commit quorum",
                f"leader {node.id} of term {st.term} committed index {index} held durably by "
                f"{{{', '.join(sorted(holders))}}} only, not a majority of each voter set of "
                "its configuration in force: " + " or ".join(_describe_config(c) for c in configs),
            )

    def _check_config_in_force(self, node: Node, index: int, membership: Membership | None) -> None:
        st = node._state
        log = st.log
        for i in range(log.last_index, max(index, log.start_index), -1):
            e = log.entry(i)
            if e.kind is EntryKind.CONFIG:
                raise self.fail(
                    "Configuration in force",
                    f"{node.id} reports {_describe_config(membership)} from index {index} in "
                    f"force, but its log holds configuration entry {i} (term {e.term}) "
                    f"{_describe_config(cast('Membership', e.command))} after it",
                )
        if index > log.start_index and index <= log.last_index:
            e = log.entry(index)
            if e.kind is not EntryKind.CONFIG or e.command != membership:
                raise self.fail(
                    "Configuration in force",
                    f"{node.id} reports {_describe_config(membership)} from index {index} in "
                    f"force, but its entry {index} (term {e.term}) is {e.command!r}",
                )
        elif index > log.last_index:
            raise self.fail(
                "Configuration in force",
                f"{node.id} reports {_describe_config(membership)} from index {index} in force, "
                f"beyond its last entry {log.last_index}",
            )

    def _check_new_configs(self, node: Node) -> None:
        """A leader appends a configuration entry only when the previous one is committed."""
        st = node._state
        log = st.log
        key = (node.id, st.term)
        checked = self._configs_checked.get(key)
        if checked is None:
            checked = log.last_index
            while checked > log.start_index and log.term(checked) == st.term:
                checked -= 1
        for i in range(checked + 1, log.last_index + 1):
            e = log.entry(i)
            if e.kind is not EntryKind.CONFIG:
                continue
            previous = next(
                (j for j in range(i - 1, log.start_index, -1)
                 if log.entry(j).kind is EntryKind.CONFIG),
                0,
            )  # fmt: skip
            if previous > st.commit:
                raise self.fail(
                    "One change at a time",
                    f"leader {node.id} of term {st.term} appended configuration entry {i} "
                    f"{_describe_config(cast('Membership', e.command))} while the previous one, "
                    f"entry {previous} {_describe_config(st.membership_at(previous))}, was not "
                    f"committed (commit index {st.commit})",
                )
        self._configs_checked[key] = log.last_index
