""":class:`FileStorage`: the durable :class:`~trio_raft.Storage`, and :func:`open_file_storage`."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar, final

import attrs
import trio

from .._types import MAX_TERM, Entry, HardState, SnapshotMeta, StoredState
from ._errors import StorageError, StorageFullError
from ._fs import FileLock, FileSystem, OsFileSystem
from ._identity import validate_identity
from ._recovery import Opened, open_wal
from ._segments import FRAME, encode_append
from ._snapshot_file import (
    SNAPSHOT_FILE,
    SNAPSHOT_TMP,
    SnapshotReader,
    SnapshotWriter,
    encode_snapshot_header,
    verify_snapshot,
)
from ._wal import Wal, join_path

DEFAULT_SEGMENT_BYTES = 64 << 20
"""A new segment is started rather than grow one past this size."""
DEFAULT_MAX_RECORD_BYTES = 16 << 20
"""Largest encoded entry accepted; on open, a length field above it is corruption."""
DEFAULT_RESERVE_BYTES = 64 << 20
"""Free space appends leave on the file system, for votes, snapshots and compaction."""
_MIN_SEGMENT_BYTES = 256
_MAX_RECORD_BYTES_LIMIT = (1 << 31) - 1
_SNAPSHOT_WRITE_BYTES = 1 << 20  # hand snapshot chunks to a worker thread in batches this big

T = TypeVar("T")


@attrs.frozen
class FileStorageStatistics:
    """Work a :class:`FileStorage` has done since it was opened (recovery included)."""

    syncs: int
    """Completed :meth:`FileStorage.sync` calls that had something to make durable."""
    fsyncs: int
    """File fsyncs (segments and the state file)."""
    directory_fsyncs: int
    """Directory fsyncs (after a segment or state file was created, renamed or removed)."""
    bytes_written: int
    """Bytes handed to the operating system."""
    segments: int
    """Segment files in the directory now."""


@final
class FileStorage:
    """A :class:`~trio_raft.Storage` that keeps a node's term, vote and log in a directory.

    Create one with :func:`open_file_storage`. The log lives in a segmented write-ahead log,
    term and vote in a small state file replaced atomically; :doc:`storage` describes the
    format and how to operate the directory.

    Durability: :meth:`save` hands the appends to the operating system, which may lose them in
    a power cut; :meth:`sync` returns only once everything saved before it is on disk. A new
    hard state is written durably by :meth:`save` itself, after the appends saved before it.
    So a crash leaves the state after some prefix of the saves, and never less than what the
    last completed :meth:`sync` covered.

    All entries are also kept in memory (the node keeps its log in memory too), so
    :meth:`entries` and :meth:`last_index` are instant; :meth:`compact` releases them.
    Commands come back from a restart as CBOR decodes them (a tuple comes back as a list;
    a configuration entry's :class:`~trio_raft.Membership` as an equal one); the entries in
    memory are the objects that were saved.

    Disk work runs in worker threads, so the trio thread never waits for a fsync, and the
    threads touch the files one at a time. :meth:`save`, :meth:`sync` and :meth:`compact` are
    serialized by a lock (the node never overlaps them anyway); a snapshot may stream in through
    :meth:`save_snapshot` meanwhile. Once a disk call began it is shielded from cancellation (it
    finishes, and cancellation takes effect afterwards), so the memory and the disk never
    disagree.
    """

    def __init__(self, opened: Opened, *, path: str, max_record_bytes: int) -> None:
        wal = opened.wal
        self._wal = wal
        self._state = wal.state  # trio's copy: the worker's changes while a call runs
        self._file_lock: FileLock = opened.lock
        self._entries = opened.entries
        self._snapshot_meta = opened.snapshot  # the current (durable) snapshot
        self._path = path
        self._max_record_bytes = max_record_bytes
        self._lock = trio.StrictFIFOLock()  # serializes save, sync and compact
        self._snapshot_lock = trio.StrictFIFOLock()  # serializes snapshot writes
        self._io_lock = trio.StrictFIFOLock()  # one worker thread at a time on the files
        self._failure: BaseException | None = None
        self._closed = False

    # -- reading -------------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The data directory."""
        return self._path

    @property
    def hard_state(self) -> HardState:
        """The last saved hard state (durable: see :meth:`save`)."""
        return self._state.hard_state

    @property
    def log_start_index(self) -> int:
        """Index of the last entry discarded by :meth:`compact` (0 if none was)."""
        return self._state.log_start_index

    @property
    def log_start_term(self) -> int:
        """Term of the entry at :attr:`log_start_index` (0 if none)."""
        return self._state.log_start_term

    def last_index(self) -> int:
        """Index of the last saved entry, synced or not (:attr:`log_start_index` if none)."""
        return self.log_start_index + len(self._entries)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Saved entries with ``lo <= index < hi``, synced or not; none from the compacted
        prefix (at or below :attr:`log_start_index`) and none past :meth:`last_index`."""
        base = self.log_start_index + 1
        return self._entries[max(lo - base, 0) : max(hi - base, 0)]

    async def load(self) -> StoredState:
        """The state to restart from: right after :func:`open_file_storage`, exactly what was
        durable on disk (a torn tail already cut off); later, everything saved so far."""
        await trio.lowlevel.checkpoint()
        return StoredState(
            self.hard_state, tuple(self._entries), self.log_start_index, self.log_start_term
        )

    def statistics(self) -> FileStorageStatistics:
        """Counters of the work done so far."""
        counters = self._wal.counters
        return FileStorageStatistics(
            syncs=counters.syncs,
            fsyncs=counters.fsyncs,
            directory_fsyncs=counters.directory_fsyncs,
            bytes_written=counters.bytes_written,
            segments=len(self._wal.segments),
        )

    # -- writing -------------------------------------------------------------------------------

    async def save(
        self,
        *,
        hard_state: HardState | None = None,
        truncate_from: int | None = None,
        entries: Sequence[Entry] = (),
        use_reserve: bool = False,
        sync: bool = False,
    ) -> None:
        """Buffer, in this order: a new hard state; dropping every entry at index >=
        ``truncate_from``; appending ``entries``.

        ``use_reserve`` lets ``entries`` use half of the disk-space reserve: the node
        sets it for entries that must get through while its disk is low (a new leader's no-op,
        commands proposed with ``frees_space``, entries a leader already accepted).

        ``sync`` makes everything saved so far durable before returning, as :meth:`sync`
        would, in the same hand-off to the worker thread as the writes (one thread round trip
        instead of two; a node uses it for every save it syncs). If the save is refused
        (the exceptions below), nothing is synced either.

        Everything is validated before anything is written: a call that raises
        :exc:`ValueError`, :exc:`TypeError` or :exc:`StorageFullError` changed nothing. A
        changed ``hard_state`` is durable when this returns; the truncation and the appends only
        after :meth:`sync`.

        Raises:
            ValueError: ``entries`` do not follow on contiguously from the last kept entry;
                ``truncate_from`` is below 1 or reaches into the compacted prefix; an entry
                encodes to more than ``max_record_bytes``; a term is above ``MAX_TERM``.
            TypeError: a command is not CBOR-encodable.
            StorageFullError: ``entries`` were given and writing them would leave less free
                disk space than the reserve (half of it with ``use_reserve``). Nothing
                was written (not even ``hard_state``); the storage stays usable. Saves without
                entries are never refused for space.
            StorageError: the disk failed (now or earlier); close and reopen.
            trio.ClosedResourceError: the storage was closed.
        """
        start = self.log_start_index
        last = self.last_index()
        if truncate_from is not None:
            if type(truncate_from) is not int or truncate_from < 1:
                raise ValueError(
                    f"FileStorage.save: truncate_from must be >= 1, got {truncate_from!r}"
                )
            if truncate_from <= start:
                raise ValueError(
                    f"FileStorage.save: cannot truncate from {truncate_from}: entries up to "
                    f"{start} were compacted"
                )
            if truncate_from > last:
                truncate_from = None  # nothing to drop (as MemoryStorage)
        expected = truncate_from or last + 1
        payloads = []
        for offset, entry in enumerate(entries):
            if not isinstance(entry, Entry):
                raise TypeError(f"FileStorage.save: entries must be Entry objects, got {entry!r}")
            if entry.term > MAX_TERM:
                raise ValueError(
                    f"FileStorage.save: entry {entry.index} has term {entry.term}, above the "
                    f"largest term {MAX_TERM}"
                )
            if entry.index != expected + offset:
                raise ValueError(
                    f"FileStorage.save: entry {entry.index} does not follow the last saved "
                    f"entry {expected + offset - 1}; entries must be contiguous"
                )
            payload = encode_append(entry)
            if len(payload) > self._max_record_bytes:
                raise ValueError(
                    f"FileStorage.save: entry {entry.index} encodes to {len(payload)} bytes, "
                    f"above max_record_bytes={self._max_record_bytes}; split the command or "
                    "open the storage with a larger max_record_bytes"
                )
            payloads.append(payload)
        if hard_state is not None and not isinstance(hard_state, HardState):
            raise TypeError(f"FileStorage.save: hard_state must be a HardState, got {hard_state!r}")
        if hard_state is not None and hard_state.term > MAX_TERM:
            raise ValueError(
                f"FileStorage.save: term {hard_state.term} is above the largest term {MAX_TERM}"
            )
        if hard_state == self.hard_state:
            hard_state = None
        async with self._lock:
            if hard_state is None and truncate_from is None and not payloads:
                if sync and self._wal.needs_sync:
                    await self._run(self._wal.sync)
                    return
                self._check_usable()
                await trio.lowlevel.checkpoint()
                return
            truncate = None
            if truncate_from is not None:  # with the term of the entry kept before it
                kept = truncate_from - start - 1
                before = self._entries[kept - 1].term if kept else self.log_start_term
                truncate = (truncate_from, before)
            appends = [(e.term, payload) for e, payload in zip(entries, payloads, strict=True)]
            wal = self._wal
            if sync:
                await self._run(_save_and_sync, wal, hard_state, truncate, appends, use_reserve)
            else:
                await self._run(wal.save, hard_state, truncate, appends, use_reserve)
            self._state = self._wal.state
            if truncate_from is not None:
                del self._entries[truncate_from - start - 1 :]
            self._entries.extend(entries)
            assert self._wal.next_index == self.last_index() + 1  # pair: disk and memory agree

    async def space_low(self) -> bool:
        """Whether the data directory's file system has less free space than the reserve
        (``reserve_bytes`` of :func:`open_file_storage`), so that ordinary appends are about to
        be refused. A node polls this to raise and clear its disk-space alarm. False when the
        free space cannot be known (no ``statvfs``, or it failed).
        """
        self._check_usable()
        try:
            return await trio.to_thread.run_sync(self._wal.space_low)
        except OSError:
            return False

    async def sync(self) -> None:
        """Return once everything saved so far is durable (one fsync of the active segment,
        plus a directory fsync if a segment was created or deleted).

        Raises:
            StorageError: the disk failed (now or earlier): nothing saved since the last
                completed sync is known to be durable. Close and reopen.
            trio.ClosedResourceError: the storage was closed.
        """
        async with self._lock:
            if not self._wal.needs_sync:
                self._check_usable()
                await trio.lowlevel.checkpoint()
                return
            await self._run(self._wal.sync)

    async def compact(self, index: int, term: int) -> None:
        """Discard every entry at or below ``index``, durably, and delete the segment files
        that then hold no live entry. ``term`` is the term of entry ``index``.

        Call it once a snapshot covering ``index`` is durable. ``index`` may lie beyond the
        last entry (a snapshot received from the leader): then the whole log is discarded and
        the next entry saved must be ``index + 1``. An ``index`` at or below
        :attr:`log_start_index` does nothing. Pending saves are made durable first.

        Raises:
            ValueError: ``index`` is in the log but its entry's term is not ``term``, or
                ``index``/``term`` are negative, or no snapshot saved with
                :meth:`save_snapshot` covers ``index`` (the directory would then hold a log
                that starts after state nothing holds, and opening it would be refused).
            StorageError: the disk failed; close and reopen.
            trio.ClosedResourceError: the storage was closed.
        """
        if index < 0 or term < 0 or (index > 0 and term < 1):
            raise ValueError(f"FileStorage.compact: bad index/term {index}/{term}")
        async with self._lock:
            start = self.log_start_index
            if index <= start:
                self._check_usable()
                await trio.lowlevel.checkpoint()
                return
            snapshot = self._snapshot_meta
            if (
                snapshot is None
                or snapshot.index < index
                or (snapshot.index == index and snapshot.term != term)
            ):
                raise ValueError(
                    f"FileStorage.compact: no snapshot covers index {index} in term {term} "
                    f"(the current one is {snapshot}); save a snapshot of the state machine "
                    "at or after that index first"
                )
            if index <= self.last_index() and self._entries[index - start - 1].term != term:
                raise ValueError(
                    f"FileStorage.compact: entry {index} has term "
                    f"{self._entries[index - start - 1].term}, not {term}"
                )
            await self._run(self._wal.compact, index, term)
            self._state = self._wal.state
            del self._entries[: index - start]

    # -- snapshots -----------------------------------------------------------------------------

    async def save_snapshot(self, meta: SnapshotMeta, chunks: AsyncIterable[bytes]) -> None:
        """Store a snapshot, replacing the previous one, durably before returning.

        The chunks are written to a temporary file as they arrive (in a worker thread, without
        holding up :meth:`save` and :meth:`sync`, which may run meanwhile), then the file is
        fsynced and renamed over the previous snapshot. If the iteration fails or is
        cancelled, or the process dies, the previous snapshot stays the current one.

        The whole ``meta`` is stored (its membership included, in the file's header), and
        :meth:`load_snapshot` returns it unchanged.

        Raises:
            TypeError: ``meta`` is not a :class:`SnapshotMeta`; nothing was written.
            ValueError: its header (with the membership) encodes to more than
                ``max_record_bytes``; nothing was written.
            StorageFullError: the disk filled up before the snapshot was in place
                (``operation == "snapshot"``); it was discarded, the previous one stays, and
                the storage stays usable.
            StorageError: the disk failed; close and reopen.
            trio.ClosedResourceError: the storage was closed.
        """
        if not isinstance(meta, SnapshotMeta):
            raise TypeError(f"FileStorage.save_snapshot: expected a SnapshotMeta, got {meta!r}")
        header = encode_snapshot_header(meta)
        if len(header) > self._max_record_bytes:
            raise ValueError(
                f"FileStorage.save_snapshot: the snapshot header (with its membership) encodes "
                f"to {len(header)} bytes, above max_record_bytes={self._max_record_bytes}; "
                "open the storage with a larger max_record_bytes"
            )
        directory = self._path
        writer = SnapshotWriter(
            self._wal.fs, join_path(directory, SNAPSHOT_TMP), join_path(directory, SNAPSHOT_FILE),
            directory, self._max_record_bytes,
        )  # fmt: skip
        async with self._snapshot_lock:
            try:
                await self._run(self._snapshot_io, writer, 0, writer.start, header)
                batch: list[bytes] = []
                size = 0
                async for chunk in chunks:
                    batch.append(bytes(chunk))
                    size += len(chunk)
                    if size >= _SNAPSHOT_WRITE_BYTES:
                        await self._run(self._snapshot_io, writer, size, writer.write, batch)
                        batch, size = [], 0
                await self._run(self._snapshot_io, writer, size, writer.write, batch)
                await self._run(self._snapshot_io, writer, 0, writer.commit)
                self._snapshot_meta = meta
            except BaseException:
                with trio.CancelScope(shield=True):
                    async with self._io_lock:
                        await trio.to_thread.run_sync(writer.abort)
                raise
            finally:
                self._wal.counters.bytes_written += writer.bytes_written

    def _snapshot_io(
        self, writer: SnapshotWriter, size: int, fn: Callable[..., None], *args: object
    ) -> None:
        """Run one step of writing a snapshot (in the worker thread) that writes ``size`` bytes
        of chunks, as a refusal rather than a disk failure when the disk is full: the temporary
        file is then thrown away and the WAL was not touched, so nothing is in doubt and the
        storage stays usable.

        Raises:
            StorageFullError: (``operation == "snapshot"``) no room (see
                :meth:`_snapshot_room`), or ENOSPC/EDQUOT before the new snapshot was renamed
                into place.
        """
        if size:
            self._snapshot_room(writer, size)
        try:
            fn(*args)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or writer.renamed:
                raise
            free = self._wal.fs.free_bytes(self._path)
            raise StorageFullError(
                self._path, free_bytes=free or 0, reserve_bytes=self._wal.reserve_bytes,
                needed_bytes=writer.bytes_written, operation="snapshot",
            ) from exc  # fmt: skip

    def _snapshot_room(self, writer: SnapshotWriter, size: int) -> None:
        """Refuse to write ``size`` more snapshot bytes into the last quarter of the reserve,
        which is kept for the state file and compaction (so a large snapshot never leaves the
        node unable to record a vote). Between half and a quarter of the reserve only
        snapshots may write: after deletes, the snapshot that lets the log be compacted always
        has that room, however many ``use_reserve`` appends came before it."""
        free = self._wal.fs.free_bytes(self._path)
        reserve = self._wal.reserve_bytes
        if free is not None and free - size < reserve // 4:
            raise StorageFullError(
                self._path, free_bytes=free, reserve_bytes=reserve,
                needed_bytes=writer.bytes_written + size, operation="snapshot",
            )  # fmt: skip

    async def load_snapshot(self) -> tuple[SnapshotMeta, AsyncIterator[bytes]] | None:
        """The current snapshot's metadata (as saved, membership included; ``membership`` is
        ``None`` for a snapshot an older release wrote) and an iterator over its bytes, or
        ``None``.

        The whole file is verified before this returns, and each chunk again as it is read.
        The iterator keeps reading the snapshot that was current when this was called, even
        if a new one is saved meanwhile.

        Raises:
            StorageCorruptError: the snapshot file is damaged.
            StorageError: the disk failed.
        """
        path = join_path(self._path, SNAPSHOT_FILE)
        async with self._snapshot_lock:  # no replacement between verifying and opening
            meta = await self._run(verify_snapshot, self._wal.fs, path, self._max_record_bytes)
            if meta is None:
                return None
            reader = await self._run(SnapshotReader, self._wal.fs, path, self._max_record_bytes)
        assert reader.meta == meta  # pair: what was verified is what will be read
        return meta, self._read_snapshot(reader)

    async def _read_snapshot(self, reader: SnapshotReader) -> AsyncIterator[bytes]:
        try:
            while (chunk := await self._run(reader.next_chunk)) is not None:
                yield chunk
        finally:
            reader.close()

    # -- plumbing ------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"FileStorage({self._path!r}) was closed")
        if self._failure is not None:
            raise StorageError(
                f"FileStorage({self._path!r}) failed earlier ({self._failure!r}) and cannot "
                "know what reached the disk; close it and open the directory again"
            ) from self._failure

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        self._check_usable()
        async with self._io_lock:
            with trio.CancelScope(shield=True):
                try:
                    result = await trio.to_thread.run_sync(fn, *args)
                except StorageFullError:
                    raise  # refused before anything was written: the storage stays usable
                except OSError as exc:
                    self._failure = exc
                    raise StorageError(
                        f"{self._path}: {exc}. Nothing saved since the last completed sync is "
                        "known to be durable; close the storage and open the directory again"
                    ) from exc
                except BaseException as exc:
                    self._failure = exc
                    raise
        return result

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._wal.close()
        finally:
            self._file_lock.release()


def _validate_sizes(segment_bytes: int, max_record_bytes: int) -> None:
    if segment_bytes < _MIN_SEGMENT_BYTES:
        raise ValueError(f"segment_bytes must be >= {_MIN_SEGMENT_BYTES}, got {segment_bytes}")
    if not FRAME.size <= max_record_bytes <= _MAX_RECORD_BYTES_LIMIT:
        raise ValueError(
            f"max_record_bytes must be in {FRAME.size}..{_MAX_RECORD_BYTES_LIMIT}, "
            f"got {max_record_bytes}"
        )


@asynccontextmanager
async def open_file_storage(
    path: str | os.PathLike[str],
    *,
    cluster_id: str | None = None,
    node_id: str | None = None,
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    fs: FileSystem | None = None,
) -> AsyncIterator[FileStorage]:
    """Open the data directory ``path`` (created if missing) for the ``async with`` block.

    Opening locks the directory, checks its identity, verifies every record's length and
    checksum, and replays the log. A torn record at the end of the newest segment (a crash in
    the middle of an append) is cut off; nothing that a :meth:`FileStorage.sync` covered is in
    it. Leaving the block releases the lock and closes the files; it does not sync.

    Args:
        path: The data directory, one per node. Put nothing else in it.
        cluster_id: The cluster this node belongs to; pass it together with ``node_id``.
            A directory created or opened with an identity records it (in its ``IDENTITY``
            file) and from then on refuses to open as any other one. A directory without an
            identity (opened without one so far, or written by an older release) adopts the
            one given. Without an identity nothing is checked.
        node_id: This node's id; pass it together with ``cluster_id``.
        segment_bytes: Start a new segment file rather than grow one past this many bytes.
        max_record_bytes: Largest encoded entry :meth:`FileStorage.save` accepts. Reopen a
            directory with a value at least as large as it was written with: a longer record
            on disk is reported as corruption.
        reserve_bytes: Free space to keep on the file system: a :meth:`FileStorage.save`
            with entries that would leave less raises :exc:`StorageFullError` (and writes
            nothing), so that votes, snapshots and compaction still have room; below it
            :meth:`FileStorage.space_low` is true and a node raises its disk-space alarm.
            Appends marked ``use_reserve`` may go down to half of it, snapshots to a quarter
            (so a snapshot must fit in a quarter of the reserve to be taken on a full disk).
            0 disables the
            check.
        fs: The file system, for tests (``trio_raft._wal._simfs.SimulatedFileSystem`` crashes
            on demand); the real one if ``None``.

    Raises:
        StorageLockedError: another FileStorage, in this or another process, has ``path``
            open: stop it first.
        StorageIdentityError: the directory belongs to another node or another cluster; the
            message says which, and what to check. Nothing in it was changed.
        StorageCorruptError: the directory is damaged beyond a torn tail; the message names
            the file (and byte offset) and what to do.
        StorageError: the operating system failed (``__cause__`` says how).
        ValueError: a size argument is out of range, or only one of ``cluster_id`` and
            ``node_id`` was given.
    """
    _validate_sizes(segment_bytes, max_record_bytes)
    if type(reserve_bytes) is not int or reserve_bytes < 0:
        raise ValueError(f"reserve_bytes must be an int >= 0, got {reserve_bytes!r}")
    identity = validate_identity(cluster_id, node_id)
    directory = os.fspath(path)
    real = fs is None
    fs_: FileSystem = OsFileSystem() if fs is None else fs

    def open_sync() -> tuple[Opened, str]:
        absolute = os.path.abspath(directory) if real else directory
        opened = open_wal(
            fs_, absolute, segment_bytes=segment_bytes, max_record_bytes=max_record_bytes,
            identity=identity, reserve_bytes=reserve_bytes,
        )  # fmt: skip
        return opened, absolute

    try:
        with trio.CancelScope(shield=True):  # the lock must not leak with an abandoned open
            opened, directory = await trio.to_thread.run_sync(open_sync)
    except OSError as exc:
        raise StorageError(f"cannot open data directory {directory}: {exc}") from exc
    storage = FileStorage(opened, path=directory, max_record_bytes=max_record_bytes)
    try:
        await trio.lowlevel.checkpoint()
        yield storage
    finally:
        storage._close()


def _save_and_sync(
    wal: Wal,
    hard_state: HardState | None,
    truncate: tuple[int, int] | None,
    appends: list[tuple[int, bytes]],
    use_reserve: bool,
) -> None:
    """:meth:`FileStorage.save` with ``sync``, in the worker thread: the writes, then the
    fsync (only if the writes succeeded)."""
    wal.save(hard_state, truncate, appends, use_reserve)
    wal.sync()
