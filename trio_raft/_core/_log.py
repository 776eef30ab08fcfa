"""The in-memory Raft log and its matching rules (Raft §5.3, §5.4)."""

from __future__ import annotations

from collections.abc import Sequence

from .._types import Entry


class RaftLog:
    """The log as a contiguous run of entries starting at index 1.

    Invariants: ``self._entries[i].index == i + 1``; terms never decrease along the log.
    Durability is the storage's business: this object is the node's authoritative view and the
    node mirrors every mutation into :class:`~trio_raft.Storage`.
    """

    __slots__ = ("_entries",)

    def __init__(self, entries: Sequence[Entry] = ()) -> None:
        self._entries: list[Entry] = []
        self.append(entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def last_index(self) -> int:
        return len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else 0

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; 0 for index 0; ``None`` past the end."""
        if index == 0:
            return 0
        if 1 <= index <= len(self._entries):
            return self._entries[index - 1].term
        return None

    def match_term(self, index: int, term: int) -> bool:
        """Whether the log holds an entry at ``index`` with ``term`` (the consistency check)."""
        return self.term(index) == term

    def entry(self, index: int) -> Entry:
        return self._entries[index - 1]

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with ``lo <= index < hi`` (clamped to the log)."""
        return self._entries[max(lo, 1) - 1 : max(hi, 1) - 1]

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a log ending at ``(last_index, last_term)`` is at least as up-to-date as this one
        (Raft §5.4.1): a later last term wins; equal terms compare length."""
        return (last_term, last_index) >= (self.last_term, self.last_index)

    def first_index_of_term(self, index: int) -> int:
        """The first index of the run of entries sharing the term of the entry at ``index``."""
        term = self._entries[index - 1].term
        while index > 1 and self._entries[index - 2].term == term:
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
            return lo
        return None

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first of ``entries`` that is missing or disagrees with the log; 0 if all
        are already present (so a duplicate or reordered AppendEntries is a no-op)."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries that continue the log exactly."""
        for e in entries:
            if e.index != len(self._entries) + 1:
                raise AssertionError(
                    f"append of index {e.index} to a log ending at {self.last_index}"
                )
            if self._entries and e.term < self._entries[-1].term:
                raise AssertionError(f"entry {e.index} has term {e.term} below its predecessor's")
            self._entries.append(e)

    def truncate_from(self, index: int) -> None:
        """Drop every entry at ``index`` or later."""
        del self._entries[max(index, 1) - 1 :]
