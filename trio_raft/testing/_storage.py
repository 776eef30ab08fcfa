"""Storage for simulated nodes: writes are volatile until ``sync`` and a crash loses them."""

from __future__ import annotations

import random
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import Literal, final

import trio

from .._core._log import entry_size
from .._storage import MemoryStorage
from .._types import Entry, HardState, SnapshotMeta, StoredState
from .._wal._errors import StorageFullError

_Write = tuple[HardState | None, int | None, tuple[Entry, ...]]

DiskSpace = Literal["ok", "low", "full"]
"""Modelled free space of a :class:`SimulatedStorage` (see its ``set_disk_space``)."""


@final
class SimulatedStorage:
    """A :class:`~trio_raft.Storage` with a disk's failure model, for the simulator.

    ``save`` changes only the volatile view; ``sync`` takes a random virtual time in
    ``[0, sync_s_max]`` and then makes every write saved before it durable at once.
    ``save_snapshot`` and ``compact`` are durable when they return. :meth:`crash` throws away
    what was not yet synced, as a power cut would.
    """

    def __init__(
        self, rng: random.Random, *, sync_s_max: float = 0.001, initial: StoredState | None = None
    ) -> None:
        self._rng = rng
        self._sync_s_max = sync_s_max
        self._durable = MemoryStorage(initial)
        self._volatile = MemoryStorage(initial)
        self._unsynced: list[_Write] = []
        self._unstalled = trio.Event()
        self._unstalled.set()
        self._writes_stall = True
        self.syncs = 0
        """How many syncs completed (a statistic for tests)."""
        self.on_durable: Callable[[HardState | None, int | None, tuple[Entry, ...]], None] | None
        self.on_durable = None
        """Called with every write ``(hard_state, truncate_from, entries)`` as a sync makes it
        durable (the simulator feeds its :class:`InvariantChecker` with it)."""
        self._disk_space: DiskSpace = "ok"

    async def load(self) -> StoredState:
        return await self._durable.load()

    async def save(
        self,
        *,
        hard_state: HardState | None = None,
        truncate_from: int | None = None,
        entries: Sequence[Entry] = (),
        use_reserve: bool = False,
    ) -> None:
        if self._writes_stall:
            await self._unstalled.wait()
        else:
            await trio.lowlevel.checkpoint()
        if entries and (
            self._disk_space == "full" or (self._disk_space == "low" and not use_reserve)
        ):
            await trio.lowlevel.checkpoint()
            raise StorageFullError(
                f"simulated disk ({self._disk_space})",
                free_bytes=0,
                reserve_bytes=0,
                needed_bytes=sum(entry_size(e) for e in entries),
            )
        self._volatile.apply_write(hard_state, truncate_from, entries)
        self._unsynced.append((hard_state, truncate_from, tuple(entries)))

    async def _disk_latency(self) -> None:
        await trio.sleep(self._rng.uniform(0, self._sync_s_max))

    def stall(self, *, writes: bool = True) -> None:
        """Make every write and sync hang until :meth:`unstall` (a disk that stopped answering);
        with ``writes=False`` only syncs hang (writes reach the volatile view, and a crash
        loses them)."""
        if self._unstalled.is_set():
            self._unstalled = trio.Event()
        self._writes_stall = writes

    def set_disk_space(self, level: DiskSpace) -> None:
        """Model the disk's free space: ``"ok"``; ``"low"`` (below the reserve:
        :meth:`space_low` is true and appends without ``use_reserve`` raise
        :exc:`~trio_raft.StorageFullError`); ``"full"`` (every append raises it, and so does
        a snapshot, at its first chunk). Hard state, truncations and compaction always
        succeed, as they may use the reserve."""
        if level not in ("ok", "low", "full"):
            raise ValueError(f"level must be 'ok', 'low' or 'full', got {level!r}")
        self._disk_space = level

    async def space_low(self) -> bool:
        """Whether the modelled disk is below its reserve (see :meth:`set_disk_space`)."""
        await trio.lowlevel.checkpoint()
        return self._disk_space != "ok"

    def unstall(self) -> None:
        """Let stalled writes and syncs complete."""
        self._unstalled.set()

    async def sync(self) -> None:
        await self._unstalled.wait()
        pending = len(self._unsynced)
        await self._disk_latency()
        for write in self._unsynced[:pending]:
            self._durable.apply_write(*write)
            if self.on_durable is not None:
                self.on_durable(*write)
        del self._unsynced[:pending]
        self.syncs += 1

    def last_index(self) -> int:
        return self._volatile.last_index()

    def entries(self, lo: int, hi: int) -> list[Entry]:
        return self._volatile.entries(lo, hi)

    async def save_snapshot(self, meta: SnapshotMeta, chunks: AsyncIterable[bytes]) -> None:
        data: list[bytes] = []
        async for chunk in chunks:
            data.append(bytes(chunk))
            if self._disk_space == "full":
                raise StorageFullError(
                    "simulated disk (full)", free_bytes=0, reserve_bytes=0,
                    needed_bytes=len(chunk), operation="snapshot",
                )  # fmt: skip
        await self._disk_latency()
        self._durable.set_snapshot(meta, data)
        self._volatile.set_snapshot(meta, data)

    async def load_snapshot(self) -> tuple[SnapshotMeta, AsyncIterator[bytes]] | None:
        return await self._durable.load_snapshot()

    async def compact(self, index: int, term: int) -> None:
        # A compaction first makes earlier writes durable (as a real WAL's would).
        await self.sync()
        self._durable.apply_compact(index, term)
        self._volatile.apply_compact(index, term)

    def crash(self) -> None:
        """Lose every write not yet synced."""
        self._unsynced.clear()
        self._volatile = MemoryStorage(self._durable.state())
        if self._durable.snapshot is not None:
            self._volatile.set_snapshot(*self._durable.snapshot)

    def durable_state(self) -> StoredState:
        """What a restart would load."""
        return self._durable.state()
