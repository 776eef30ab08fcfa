"""In-memory :class:`~trio_raft.Storage`."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import final

import trio

from ._types import Entry, HardState, SnapshotMeta, StoredState


@final
class MemoryStorage:
    """Keeps the hard state, log and snapshot in memory; ``sync`` is free.

    Useful for tests and for nodes whose durability comes from elsewhere. Everything is lost
    when the process exits. For crash simulation, :mod:`trio_raft.testing` wraps it.
    """

    def __init__(self, state: StoredState | None = None) -> None:
        state = state or StoredState()
        self._hard_state = state.hard_state
        self._start = (state.log_start_index, state.log_start_term)
        self._entries: list[Entry] = list(state.entries)
        self._snapshot: tuple[SnapshotMeta, tuple[bytes, ...]] | None = None

    async def load(self) -> StoredState:
        await trio.lowlevel.checkpoint()
        return self.state()

    def state(self) -> StoredState:
        """What :meth:`load` returns, synchronously."""
        return StoredState(self._hard_state, tuple(self._entries), *self._start)

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
        """The synchronous body of `save` (used by wrappers that model crashes)."""
        if hard_state is not None:
            self._hard_state = hard_state
        start = self._start[0]
        if truncate_from is not None:
            if truncate_from <= start:
                raise ValueError(
                    f"MemoryStorage.save: cannot truncate from {truncate_from}, inside the "
                    f"compacted prefix (the log starts after {start})"
                )
            del self._entries[truncate_from - start - 1 :]
        for e in entries:
            if e.index != self.last_index() + 1:
                raise ValueError(
                    f"MemoryStorage.save: entry {e.index} does not follow the last saved entry "
                    f"{self.last_index()}; entries must be contiguous"
                )
            self._entries.append(e)

    async def sync(self) -> None:
        await trio.lowlevel.checkpoint()

    @property
    def hard_state(self) -> HardState:
        """The last saved hard state."""
        return self._hard_state

    def last_index(self) -> int:
        return self._start[0] + len(self._entries)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        base = self._start[0] + 1
        return self._entries[max(lo - base, 0) : max(hi - base, 0)]

    async def save_snapshot(self, meta: SnapshotMeta, chunks: AsyncIterable[bytes]) -> None:
        data = [bytes(chunk) async for chunk in chunks]
        self._snapshot = (meta, tuple(data))

    def set_snapshot(self, meta: SnapshotMeta, chunks: Sequence[bytes]) -> None:
        """Replace the snapshot synchronously (used by wrappers that model crashes)."""
        self._snapshot = (meta, tuple(chunks))

    @property
    def snapshot(self) -> tuple[SnapshotMeta, tuple[bytes, ...]] | None:
        """The current snapshot, if any."""
        return self._snapshot

    async def load_snapshot(self) -> tuple[SnapshotMeta, AsyncIterator[bytes]] | None:
        await trio.lowlevel.checkpoint()
        if self._snapshot is None:
            return None
        meta, data = self._snapshot
        return meta, _iterate(data)

    async def compact(self, index: int, term: int) -> None:
        await trio.lowlevel.checkpoint()
        self.apply_compact(index, term)

    def apply_compact(self, index: int, term: int) -> None:
        """The synchronous body of `compact`."""
        start = self._start[0]
        if index <= start:
            return
        del self._entries[: index - start]
        self._start = (index, term)


async def _iterate(chunks: Sequence[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        await trio.lowlevel.checkpoint()
        yield chunk
