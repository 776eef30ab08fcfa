"""In-memory :class:`~trio_raft.Storage`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import final

import trio

from ._types import Entry, HardState, StoredState


@final
class MemoryStorage:
    """Keeps the hard state and log in memory; ``sync`` is free.

    Useful for tests and for nodes whose durability comes from elsewhere. Everything is lost
    when the process exits. For crash simulation, :mod:`trio_raft.testing` wraps it.
    """

    def __init__(self, state: StoredState | None = None) -> None:
        state = state or StoredState()
        self._hard_state = state.hard_state
        self._entries: list[Entry] = list(state.entries)

    async def load(self) -> StoredState:
        await trio.lowlevel.checkpoint()
        return StoredState(self._hard_state, tuple(self._entries))

    async def save(
        self,
        *,
        hard_state: HardState | None = None,
        truncate_from: int | None = None,
        entries: Sequence[Entry] = (),
    ) -> None:
        await trio.lowlevel.checkpoint()
        self.apply_write(hard_state, truncate_from, entries)

    def apply_write(
        self, hard_state: HardState | None, truncate_from: int | None, entries: Sequence[Entry]
    ) -> None:
        """The synchronous body of :meth:`save` (used by wrappers that model crashes)."""
        if hard_state is not None:
            self._hard_state = hard_state
        if truncate_from is not None:
            del self._entries[truncate_from - 1 :]
        for e in entries:
            if e.index != len(self._entries) + 1:
                raise ValueError(
                    f"MemoryStorage.save: entry {e.index} does not follow the last saved entry "
                    f"{len(self._entries)}; entries must be contiguous"
                )
            self._entries.append(e)

    async def sync(self) -> None:
        await trio.lowlevel.checkpoint()

    @property
    def hard_state(self) -> HardState:
        """The last saved hard state."""
        return self._hard_state

    def last_index(self) -> int:
        return len(self._entries)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        return self._entries[max(lo, 1) - 1 : max(hi, 1) - 1]
