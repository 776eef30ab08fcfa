"""The in-memory Raft log and its matching rules (Raft §5.3, §5.4, §7)."""

from __future__ import annotations

from collections.abc import Sequence

from .._codec import FrameError, command_bytes
from .._types import Entry


def entry_size(entry: Entry) -> int:
    """The size of an entry's command in bytes, CBOR-encoded (as in the WAL and on the wire):
    the measure for batching AppendEntries (``max_bytes_per_append``), flow control
    (``max_inflight_bytes``), the byte-based snapshot trigger and the backlog applied since the
    last snapshot. The encoding is made once per entry and cached in it (a proposal's, at
    ``propose``), so this costs a lookup. A command outside the wire's data model (only a
    storage used on its own can hold one) counts as the length of its ``repr``."""
    try:
        return len(command_bytes(entry))
    except FrameError:
        return len(repr(entry.command))


class RaftLog:
    """The log: a compacted prefix, summarised by ``(start_index, start_term)``, followed by a
    contiguous run of entries ``start_index + 1 .. last_index``.

    Invariants: ``self._entries[i].index == start_index + 1 + i``; terms never decrease along
    the log and never fall below ``start_term``. Entries at or below ``start_index`` live only
    in a snapshot; their terms are unknown except the last one's. Durability is the storage's
    business: this object is the node's authoritative view and the node mirrors every mutation
    into :class:`~trio_raft.Storage`.
    """

    __slots__ = ("_entries", "start_index", "start_term")

    def __init__(
        self, entries: Sequence[Entry] = (), *, start_index: int = 0, start_term: int = 0
    ) -> None:
        self._entries: list[Entry] = []
        self.start_index = start_index
        """Index of the last compacted entry (0 if none)."""
        self.start_term = start_term
        """Term of the last compacted entry (0 if none)."""
        self.append(entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def last_index(self) -> int:
        return self.start_index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.start_term

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; ``start_term`` at ``start_index`` (0 at index 0);
        ``None`` past the end or inside the compacted prefix."""
        if index == self.start_index:
            return self.start_term
        offset = index - self.start_index
        if 1 <= offset <= len(self._entries):
            return self._entries[offset - 1].term
        return None

    def match_term(self, index: int, term: int) -> bool:
        """Whether the log holds an entry at ``index`` with ``term`` (the consistency check)."""
        return self.term(index) == term

    def entry(self, index: int) -> Entry:
        """The entry at ``index``; it must be in ``start_index + 1 .. last_index``."""
        offset = index - self.start_index
        if not 1 <= offset <= len(self._entries):
            raise IndexError(
                f"entry {index} is outside the log ({self.start_index + 1}..{self.last_index})"
            )
        return self._entries[offset - 1]

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with ``lo <= index < hi``, clamped to the uncompacted log."""
        base = self.start_index + 1
        return self._entries[max(lo - base, 0) : max(hi - base, 0)]

    def batch(self, start: int, max_entries: int, max_bytes: int) -> tuple[list[Entry], int]:
        """Entries from ``start`` (inside the log), at most ``max_entries`` of them and at most
        ``max_bytes`` by `entry_size` (but always at least one), and their total size."""
        if not self.start_index < start <= self.last_index:
            raise AssertionError(
                f"batch from {start} outside the log ({self.start_index + 1}..{self.last_index})"
            )
        entries = self.slice(start, start + max_entries)
        size = 0
        for i, e in enumerate(entries):
            e_size = entry_size(e)
            if size + e_size > max_bytes and i > 0:
                return entries[:i], size
            size += e_size
        return entries, size

    def conflict_hint(self, prev_index: int, commit: int) -> tuple[int, int]:
        """For a refused AppendEntries at ``prev_index``: ``(conflict_term, conflict_index)``
        telling the leader where this log stops agreeing, a whole term at a time (fast
        back-up). ``conflict_term`` is 0 when the log has no entry at ``prev_index``; the
        index never falls to ``commit`` or below (committed entries always match)."""
        if prev_index > self.last_index or prev_index < 1:
            return 0, min(max(prev_index, 1), self.last_index + 1)
        return self.term(prev_index) or 0, max(
            self.first_index_of_term(prev_index), commit + 1, self.start_index + 1
        )

    def tail_start(self, end: int, max_entries: int, max_bytes: int) -> int:
        """The index to compact up to so that at most ``max_entries`` entries ending at ``end``
        remain before ``end + 1``, and at most ``max_bytes`` of them (by `entry_size`); never
        below ``start_index``."""
        index = end
        size = 0
        lowest = max(self.start_index, end - max_entries)
        while index > lowest:
            size += entry_size(self.entry(index))
            if size > max_bytes:
                break
            index -= 1
        return index

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a log ending at ``(last_index, last_term)`` is at least as up-to-date as this one
        (Raft §5.4.1): a later last term wins; equal terms compare length."""
        return (last_term, last_index) >= (self.last_term, self.last_index)

    def first_index_of_term(self, index: int) -> int:
        """The first index (not below ``start_index``) of the run of entries sharing the term of
        the entry at ``index``."""
        term = self.term(index)
        while index > self.start_index and self.term(index - 1) == term:
            index -= 1
        return index

    def last_index_of_term(self, term: int) -> int | None:
        """The last index holding ``term``, or ``None`` if the log has no entry of that term."""
        # Terms are non-decreasing, so bisect on term.
        lo, hi = 0, len(self._entries)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._entries[mid].term <= term:
                lo = mid + 1
            else:
                hi = mid
        if lo >= 1 and self._entries[lo - 1].term == term:
            return self.start_index + lo
        if lo == 0 and term == self.start_term and self.start_index > 0:
            return self.start_index
        return None

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first of ``entries`` that is missing or disagrees with the log; 0 if all
        are already present (so a duplicate or reordered AppendEntries is a no-op). Entries in
        the compacted prefix are committed, hence present."""
        for e in entries:
            if e.index > self.start_index and not self.match_term(e.index, e.term):
                return e.index
        return 0

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries that continue the log exactly."""
        for e in entries:
            if e.index != self.last_index + 1:
                raise AssertionError(
                    f"append of index {e.index} to a log ending at {self.last_index}"
                )
            if e.term < self.last_term:
                raise AssertionError(f"entry {e.index} has term {e.term} below its predecessor's")
            self._entries.append(e)

    def truncate_from(self, index: int) -> None:
        """Drop every entry at ``index`` or later (never the compacted prefix)."""
        if index <= self.start_index:
            raise AssertionError(f"truncating at {index}, inside the compacted prefix")
        del self._entries[index - self.start_index - 1 :]

    def compact(self, index: int) -> None:
        """Discard every entry up to and including ``index`` (which must be in the log)."""
        if index <= self.start_index:
            return
        term = self.term(index)
        if term is None:
            raise AssertionError(f"compacting at {index}, past the end {self.last_index}")
        del self._entries[: index - self.start_index]
        self.start_index, self.start_term = index, term

    def reset(self, index: int, term: int) -> None:
        """Replace the whole log with a snapshot's summary ``(index, term)`` (an install)."""
        self._entries.clear()
        self.start_index, self.start_term = index, term
