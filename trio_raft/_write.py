"""The node's disk writes: the leader's write path (thesis §10.2.1) and the disk watchdogs.

::

    dispatcher ── Ready with hard state / truncation ──▶ Writer.persist ─┐
         │                                                              ├─ WriteLock ─▶ storage
         └── a leader's new entries ──▶ Writer.hand_over ──▶ writer task ┘    save + sync
                                         (the replicators send them meanwhile)

One :class:`Writer` per node. Every write of the log and hard state happens under its
:class:`~trio_raft._sync.WriteLock`, one at a time and in the order the Readys were taken: a
leader's new entries are handed to the *writer* task, which saves and syncs them while the
replicators send them, and then lets the leader count its own copy; any other Ready the
dispatcher persists itself, after the entries handed over before it (so they are never
reordered, and a truncation among them drops them from the write instead).

The writer also owns the disk-space alarm (an append the storage refused, a poll of its free
space) and the disk watchdog (a leader whose write stalls steps down).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import attrs
import trio

from . import _snapshot
from ._core._state import Ready
from ._logging import RAFT_FIELDS
from ._sync import Signal, WriteLock
from ._types import Entry, Role, RoleChangeReason
from ._wal._errors import StorageFullError

if TYPE_CHECKING:
    from ._node import Node

logger: Final = logging.getLogger("trio_raft.node")

SPACE_POLL_S = 1.0
"""How often a node whose storage can run out of space asks it whether space is low (and,
while an append is refused, retries it)."""


class Retry:
    """An inbox event: process the Ready again (an append refused for disk space is due for a
    retry, or the writer made the leader's state produce one)."""


RETRY: Final = Retry()


class Writer:
    """The disk writes of one node (private to it; see the module docstring)."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self.lock = WriteLock()
        """Held around every write of the log and hard state (by the dispatcher or the
        writer), and around a compaction: one at a time, the writes in the order their Readys
        were taken."""
        self.pending: list[Entry] = []
        """A leader's new entries handed to the writer and not yet being saved."""
        self._pending_term = 0
        """The term of the leader that handed them over."""
        self._signal = Signal()
        self._disk_busy_since = math.inf
        self._disk_idle = trio.Event()
        self._stall_scope: trio.CancelScope | None = None
        """The disk watchdog's scope: its deadline is the current write's stall limit."""
        self._space_low = False
        """Free space is below the storage's reserve: it refused an append, or the last poll
        said so. Only a poll that finds space again clears it."""
        self._refused = False
        """An append was refused for disk space and waits in the Ready to be retried."""
        self.space_aware = False
        """The storage has ``space_low`` (and so takes ``use_reserve``)."""
        self._save_syncs = "sync" in inspect.signature(node._storage.save).parameters
        """The storage's ``save`` takes ``sync`` (:class:`~trio_raft.FileStorage`): the save
        and its fsync in one hand-off to its worker thread."""

    def hand_over(self, entries: list[Entry], term: int) -> None:
        """Dispatcher: a leader of ``term`` appended ``entries``; the writer saves them."""
        self.pending += entries
        self._pending_term = term
        self._signal.set()

    def kick(self) -> None:
        """Dispatcher: after a Ready was processed, retry entries the storage refused."""
        if self.pending:
            self._signal.set()

    def _take_pending(self) -> list[Entry]:
        entries, self.pending = self.pending, []
        return entries

    async def persist(self, ready: Ready) -> int | None:
        """Make ``ready``'s writes durable, after the leader's writes handed to the writer
        (they were taken first). Returns ``None``, or the first index of the entries the
        storage refused for disk space: the hard state and truncation are durable, the entries
        wait in the state's next Ready, and no message acknowledging them may be sent."""
        st = self._node._state
        async with self.lock:
            if self.pending:
                ready = after_leader_writes(self._take_pending(), ready)
            last = st.log.last_index  # nothing else changes the log while we await
            refused = await self._write(ready)
        if refused is not None:
            st.on_persist_refused(ready.entries)
            self._on_append_refused(refused)
            return ready.entries[0].index
        st.on_persisted(last)
        return None

    async def run(self) -> None:
        """The writer task: save and sync a leader's new entries while the dispatcher goes on
        (and its replicators send them); then let the leader count its own copy."""
        node = self._node
        st = node._state
        while True:
            await self._signal.wait()
            async with self.lock:
                if not self.pending:
                    continue  # the dispatcher wrote them with a Ready of its own
                term = self._pending_term
                entries = self._take_pending()
                refused = await self._write(Ready(entries=entries))
                if refused is not None:
                    # Back to the core, with those handed over since (in log order): it owns
                    # every unsaved entry, so a compaction drops the ones a snapshot covers
                    # (a copy kept here could be written below the storage's compaction
                    # point), and its next Ready hands them out again.
                    st.on_persist_refused(entries + self._take_pending())
                    self._on_append_refused(refused)
                    continue  # retried with the next event, as a refused Ready of its own is
            if st.role is Role.LEADER and st.term == term:
                # Otherwise the next Ready persisted by the dispatcher (the step-down's hard
                # state) counts them: it is written after these.
                commit = st.commit
                st.on_persisted(entries[-1].index)
                if st.has_ready():
                    # A full inbox wakes the dispatcher anyway; a closed one: shutting down.
                    with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                        node._inbox_send.send_nowait(RETRY)
                elif st.commit != commit:
                    node._wake()

    async def _write(self, ready: Ready) -> StorageFullError | None:
        """Save and sync ``ready``'s writes (under :attr:`lock`). Returns the storage's
        refusal if it refused the entries for disk space (the hard state and the truncation
        are then durable, no entry is written)."""
        node = self._node
        st = node._state
        storage = node._storage
        self._disk_busy_since = trio.current_time()
        self._disk_idle = trio.Event()
        if self._stall_scope is not None:
            self._stall_scope.deadline = self._disk_busy_since + st.config.disk_stall_s
        try:
            # Followers take what the leader accepted (it is the one that gates proposals); a
            # leader in the alarm accepted only space-freeing commands. Only a storage with
            # ``space_low`` knows the keyword.
            options: dict[str, bool] = {}
            if self.space_aware:
                options["use_reserve"] = st.role is not Role.LEADER or st.no_space
            if self._save_syncs:
                options["sync"] = True
            try:
                await storage.save(
                    hard_state=ready.hard_state,
                    truncate_from=ready.truncate_from,
                    entries=ready.entries,
                    **options,
                )
            except StorageFullError as exc:
                if ready.hard_state is not None or ready.truncate_from is not None:
                    await storage.save(
                        hard_state=ready.hard_state, truncate_from=ready.truncate_from
                    )
                    await storage.sync()
                return exc
            if not self._save_syncs:
                await storage.sync()
        finally:
            seconds = trio.current_time() - self._disk_busy_since
            node._counters.disk_write(seconds)  # counted, and logged if slow
            node._oplog.disk_write(seconds, trio.current_time())
            self._disk_busy_since = math.inf
            self._disk_idle.set()
            if self._stall_scope is not None:
                self._stall_scope.deadline = math.inf
        if self._refused:
            self._refused = False
            self._update_space_alarm()
        node._notify("persisted", ready)
        return None

    def _on_append_refused(self, exc: StorageFullError) -> None:
        self._refused = True
        if self.space_aware:
            self._space_low = True  # until a poll finds space again
        self._update_space_alarm(f"{exc}; the refused entries are retried every {SPACE_POLL_S} s")

    def _update_space_alarm(self, cause: str = "free space is below the storage's reserve") -> None:
        """Raise or clear the disk-space alarm from ``_space_low`` and ``_refused``; ``cause``
        goes into the warning if this raises it."""
        node = self._node
        st = node._state
        alarm = self._space_low or self._refused
        if alarm != st.no_space:
            st.no_space = alarm
            node._notify("no-space", alarm)
            facts = {"node": node._id, "event": "no_space_raised" if alarm else "no_space_cleared"}
            if alarm:
                logger.warning(
                    "node %r: disk-space alarm: %s. As leader it accepts only commands that "
                    "free space",
                    node._id, cause, extra={RAFT_FIELDS: {**facts, "cause": cause}},
                )  # fmt: skip
            else:
                logger.info(
                    "node %r: disk-space alarm cleared", node._id, extra={RAFT_FIELDS: facts}
                )
            node._changed.notify()

    async def watch_space(self, space_low: Callable[[], Awaitable[bool]]) -> None:
        """Poll the storage's free space every :data:`SPACE_POLL_S`: raise or clear the
        disk-space alarm, and retry an append or a snapshot the storage refused."""
        node = self._node
        while True:
            low = await space_low()
            if low != self._space_low:
                self._space_low = low
                self._update_space_alarm()
            if self._refused:
                await node._inbox_send.send(RETRY)
            if node._snapshot_not_before != -math.inf:
                # A snapshot did not fit. Retry it at once when space is back, and in any case
                # from here: nothing else does if no entry is applied.
                if not low:
                    node._snapshot_not_before = -math.inf
                _snapshot.maybe_take(node)
            await trio.sleep(SPACE_POLL_S)

    async def watch_disk(self) -> None:
        """A leader whose disk stalls must not hold the cluster hostage: its replicators would
        keep heartbeating while nothing commits. Past ``Config.disk_stall_s`` it steps down
        (its followers then elect a healthy leader); a stalled follower simply stops answering,
        since its dispatcher is the one waiting."""
        node = self._node
        stall_s = node._state.config.disk_stall_s
        while True:
            # Writes move the deadline (no wake-up per write): a timer, as the election's.
            with trio.CancelScope(deadline=self._disk_busy_since + stall_s) as scope:
                self._stall_scope = scope
                await trio.sleep_forever()
            self._stall_scope = None
            if self._disk_busy_since == math.inf:
                continue  # the write returned just in time
            idle = self._disk_idle
            st = node._state
            if st.role is Role.LEADER:
                node._notify("disk-stall", trio.current_time() - self._disk_busy_since)
                st.step_down()
                node._on_role_changed(RoleChangeReason.STEPPED_DOWN)
                node._changed.notify()
            await idle.wait()


def after_leader_writes(queued: list[Entry], ready: Ready) -> Ready:
    """``ready`` with the leader's writes ``queued`` before it (taken earlier, not yet saved;
    the storage's log ends just before them). A truncation in ``ready`` that falls among
    them drops them from the write instead of truncating the storage."""
    cut = ready.truncate_from
    if cut is None:
        return attrs.evolve(ready, entries=[*queued, *ready.entries])
    kept = [e for e in queued if e.index < cut]
    truncate_from = cut if cut < queued[0].index else None
    return attrs.evolve(ready, truncate_from=truncate_from, entries=[*kept, *ready.entries])
