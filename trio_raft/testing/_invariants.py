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
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

import trio

from .._errors import RaftError
from .._messages import MESSAGE_TYPES
from .._types import Entry, NodeId, Role, SnapshotMeta

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


class InvariantChecker:
    """Observes every node of one simulated cluster and checks the five safety properties."""

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

    def node_started(self, node_id: NodeId) -> None:
        """A node (re)started with an empty state machine: it will apply from index 1 again."""
        self._last_applied[node_id] = 0
        self._commit_seen[node_id] = 0
        self.record(node_id, "start")

    def observe(self, node: Node, event: str, data: object) -> None:
        st = node._state
        nid = node.id
        if event == "role":
            role, term = cast("tuple[Role, int]", data)
            self.record(nid, "role", f"{role.value}@{term}")
            if role is Role.LEADER:
                self._on_leader(node)
        elif event == "persisted":
            ready: Ready = data  # type: ignore[assignment]
            self.record(
                nid, "persist", (ready.truncate_from, len(ready.entries), st.log.last_index)
            )
            for e in ready.entries:
                self._check_log_matching(nid, e, st.log.term(e.index - 1) or 0)
        elif event == "commit":
            self.record(nid, "commit", st.commit)
            self._on_commit(node)
        elif event == "restore":
            meta = cast("SnapshotMeta", data)
            self.record(nid, "restore", (meta.index, meta.term))
            self._on_restore(nid, meta)
        elif event in ("snapshot", "snapshot-abandoned"):
            meta = cast("SnapshotMeta", data)
            self.record(nid, event, (meta.index, meta.term))
        elif event == "apply":
            entry, result = cast("tuple[Entry, object]", data)
            self.record(nid, "apply", (entry.index, entry.term, entry.command, result))
            self._on_apply(nid, entry, result)
        if st.role is Role.LEADER:
            self._check_append_only(node)

    def _on_leader(self, node: Node) -> None:
        st = node._state
        other = self._leaders.setdefault(st.term, node.id)
        if other != node.id:
            raise self.fail(
                "Election Safety", f"{node.id} and {other} were both leader in term {st.term}"
            )
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
        for index in range(start, st.commit + 1):
            entry = st.log.entry(index)
            known = self._committed.setdefault(index, entry)
            if known != entry:
                raise self.fail(
                    "State Machine Safety",
                    f"{node.id} committed {entry} at {index}, but {known} was committed there",
                )
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
