"""Snapshots inside a node: taking them, streaming them to followers, receiving and installing.

Three flows, all in the node's nursery and all serialized by one lock on the storage's
snapshot slot (so an older snapshot never replaces a newer one):

* **take** (applier → background task): after ``Config.snapshot_entries`` applied entries (or
  ``Config.snapshot_bytes`` of applied commands) the applier captures
  ``state_machine.snapshot()`` between two applies; a task streams it into
  ``storage.save_snapshot``; then the dispatcher compacts the log (memory and storage).
* **send** (a leader's replicator): when a follower needs compacted entries, the replicator
  streams the stored snapshot in chunks of ``Config.snapshot_chunk_bytes``, one chunk in flight
  at a time (stop-and-wait flow control), re-sending a chunk that goes unacknowledged for two
  heartbeat periods and restarting if the follower lost its place.
* **receive** (a follower's dispatcher): chunks for the current leader's snapshot are fed, in
  order, to a task writing them to storage; once the last one is durable the dispatcher
  restores the state machine, adopts the snapshot in the Raft log and acknowledges.
  A download holds the snapshot lock, so one the leader abandons half-way must not live on:
  it is dropped when a newer stream starts, when the follower's log moves past the snapshot
  (:func:`drop_stale_download`), and when no chunk has come for `abandon_after_s`.

Every chunk carries the configuration in force at the snapshot's index
(``SnapshotRequest.membership``), so each one describes the snapshot whole. The follower keeps
the one of the stream's first chunk and installs the snapshot with it. A later chunk with
another membership (which a correct leader never sends: the configuration at a committed index
is fixed) counts as a different stream: it restarts the download from its first chunk, so the
membership installed is always the one every chunk of the data carried.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import aclosing
from typing import TYPE_CHECKING

import attrs
import trio

from ._core._progress import ProgressState
from ._messages import SnapshotRequest, SnapshotResponse
from ._types import Membership, NodeId, Role, SnapshotMeta
from ._wal._errors import StorageFullError

if TYPE_CHECKING:
    from ._node import Node

RECEIVE_QUEUE = 4
"""Chunks a follower buffers between the dispatcher and its snapshot writer task."""

SNAPSHOT_RETRY_S = 10.0
"""After a snapshot did not fit on the disk, the node waits this long before taking another."""

ABANDON_ELECTION_TIMEOUTS = 4
"""A follower drops a snapshot download after this many (maximum) election timeouts without a
chunk: a live leader resends an unacknowledged chunk every two heartbeats, so that long a
silence means the leader gave the stream up (or lost leadership without our noticing)."""


def abandon_after_s(node: Node) -> float:
    """How long a follower's snapshot download may go without a chunk before it is dropped."""
    return ABANDON_ELECTION_TIMEOUTS * node._state.config.election_timeout_s_max


@attrs.frozen
class SnapshotSaved:
    """Dispatcher event: a snapshot this node took is durable; compact the log."""

    meta: SnapshotMeta


@attrs.frozen
class SnapshotReceived:
    """Dispatcher event: a snapshot from the leader is durable; install it (``meta`` has the
    membership the stream carried)."""

    meta: SnapshotMeta
    data: list[bytes]
    started_at: float = 0.0
    """When its first chunk came."""


@attrs.define
class Receiver:
    """A follower's snapshot download in progress."""

    key: tuple[int, int, int]
    """(snapshot index, snapshot term, leader term)."""
    membership: Membership
    """The configuration at the snapshot's index, from the stream's first chunk."""
    send: trio.MemorySendChannel[bytes]
    scope: trio.CancelScope
    received: int = 0
    started_at: float = attrs.field(factory=trio.current_time)
    """When its first chunk came."""


async def aiter_chunks(chunks: Iterable[bytes]) -> AsyncGenerator[bytes, None]:
    """Feed a state machine's chunks to storage, yielding to other tasks between chunks."""
    for chunk in chunks:
        await trio.lowlevel.checkpoint()
        yield bytes(chunk)


async def rechunk(chunks: AsyncIterator[bytes], size: int) -> AsyncGenerator[bytes, None]:
    """Split chunks larger than ``size`` (never merges: chunk boundaries are free)."""
    close = getattr(chunks, "aclose", None)
    try:
        async for chunk in chunks:
            for start in range(0, len(chunk), size):
                yield chunk[start : start + size]
    finally:
        if close is not None:
            await close()


# -- take ------------------------------------------------------------------------------------


def maybe_take(node: Node) -> None:
    """Called by the applier after applying (and by the space watch after a snapshot did not
    fit on the disk): start a snapshot if one is due, or if :meth:`Node.snapshot` asked for
    one (``node._snapshot_forced``: then at once, whatever the thresholds and the pause after
    a snapshot that did not fit, so that its caller hears of a refusal)."""
    take = getattr(node._sm, "snapshot", None)
    if take is None or node._snapshotting or node._nursery is None:
        return
    index = node._last_applied
    cfg = node._state.config
    forced = node._snapshot_forced
    if forced and index <= node._snapshot_index:
        node._snapshot_forced = False  # a snapshot already covers what was asked for
        return
    if not forced and trio.current_time() < node._snapshot_not_before:
        return  # the last one did not fit on the disk
    if (
        not forced
        and index - node._snapshot_index < cfg.snapshot_entries
        and node._applied_bytes < cfg.snapshot_bytes
    ):
        return
    term = node._state.log.term(index)
    if term is None:
        return
    node._snapshot_forced = False  # this one covers every applied index asked for so far
    node._snapshotting = True
    node._applied_bytes = 0
    chunks: Iterable[bytes] = take()
    meta = SnapshotMeta(index, term, node._state.membership_at(index))
    node._spawn(node._nursery, "snapshot taker", _save_taken, node, meta, chunks)


async def _save_taken(node: Node, meta: SnapshotMeta, chunks: Iterable[bytes]) -> None:
    size = 0

    def counted(chunks: Iterable[bytes]) -> Iterable[bytes]:
        nonlocal size
        for chunk in chunks:
            size += len(chunk)
            yield chunk

    try:
        async with node._snapshot_lock:
            if meta.index <= node._snapshot_index:
                return
            started = trio.current_time()
            try:
                async with aclosing(aiter_chunks(counted(chunks))) as stream:
                    await node._storage.save_snapshot(meta, stream)
            except StorageFullError as exc:
                node._snapshot_not_before = trio.current_time() + SNAPSHOT_RETRY_S
                node._on_snapshot_refused(exc)
                return
            node._snapshot_index = meta.index
        node._counters.snapshots_taken += 1
        node._counters.snapshot_bytes = size
        node._oplog.snapshot_taken(meta, size, trio.current_time() - started)
        node._notify("snapshot", meta)
        await node._inbox_send.send(SnapshotSaved(meta))
    finally:
        node._snapshotting = False
        if node._snapshot_forced:
            node._apply_signal.set()  # Node.snapshot() asked for a newer one meanwhile


async def compact_after(node: Node, meta: SnapshotMeta) -> None:
    """Dispatcher: a local snapshot is durable; drop the log before it, keeping a tail."""
    st = node._state
    cfg = st.config
    end = min(meta.index, st.commit)
    index = st.log.tail_start(end, cfg.snapshot_keep_entries, cfg.snapshot_bytes)
    async with node._writer.lock:  # no leader write may land between the two compactions
        term = st.compact(index) if index > 0 else None
        if term is not None:
            await node._storage.compact(index, term)


# -- send ------------------------------------------------------------------------------------


async def send(node: Node, peer: NodeId, term: int) -> None:
    """Replicator: stream the stored snapshot to ``peer`` until installed or superseded."""
    st = node._state
    cfg = st.config
    signal = node._replication.signals[peer]
    loaded = await node._storage.load_snapshot()
    if loaded is None:
        raise AssertionError(f"{node.id}: log compacted but storage holds no snapshot")
    meta, chunks = loaded
    # A snapshot an older release wrote has no membership: it is the one at its index then.
    membership = meta.membership if meta.membership is not None else st.membership_at(meta.index)
    if membership is None:  # a leader always has a configuration (it campaigned in one)
        raise AssertionError(f"{node.id}: leading without a configuration")

    def request(offset: int, data: bytes, done: bool) -> SnapshotRequest:
        return SnapshotRequest(
            node.id, peer, term, meta.index, meta.term, offset, data, done, membership
        )

    def current() -> bool:
        pr = st.progress.get(peer)
        return (
            st.role is Role.LEADER
            and st.term == term
            and pr is not None
            and pr.state is ProgressState.SNAPSHOT
            and pr.pending_snapshot == meta.index
            # A newer snapshot supersedes one the follower has not started receiving.
            and not (pr.snapshot_offset == 0 and node._snapshot_index > meta.index)
        )

    st.progress[peer].pending_snapshot = meta.index
    st.progress[peer].snapshot_offset = 0
    offset = 0
    started = trio.current_time()

    async def deliver(data: bytes, done: bool) -> bool:
        """Send one chunk until acknowledged; False if the stream must stop or restart."""
        target = offset + len(data)
        while current():
            node._transport.send(request(offset, data, done))
            with trio.move_on_after(2 * cfg.heartbeat_s):
                while current() and st.progress[peer].snapshot_offset < target:
                    await signal.wait()
            if not current():
                return False
            acked = st.progress[peer].snapshot_offset
            if acked >= target:
                return True
            if acked < offset:
                return False  # the follower lost its place: restart from the beginning
        return False

    async with aclosing(rechunk(chunks, cfg.snapshot_chunk_bytes)) as pieces:
        async for piece in pieces:
            if not await deliver(piece, False):
                return
            offset += len(piece)
    # The empty last chunk: acknowledged (done) once the follower installed it durably.
    while current():
        node._transport.send(request(offset, b"", True))
        with trio.move_on_after(4 * cfg.heartbeat_s):
            while current() and st.progress[peer].snapshot_offset >= offset:
                await signal.wait()
        if current() and st.progress[peer].snapshot_offset < offset:
            return  # the follower lost the download (say, it restarted): start over
    pr = st.progress.get(peer)
    if st.role is Role.LEADER and st.term == term and pr is not None and pr.match >= meta.index:
        node._counters.snapshots_sent += 1
        node._oplog.snapshot_sent(peer, meta, offset, trio.current_time() - started)


# -- receive ---------------------------------------------------------------------------------


def on_chunk(node: Node, m: SnapshotRequest) -> None:
    """Dispatcher (sync), after the Raft rules saw ``m``: take the chunk if it is the next one."""
    st = node._state
    if m.term != st.term or st.leader_id != m.src:
        return  # stale (the rules already answered a lower term)

    def reply(offset: int, done: bool = False) -> None:
        node._transport.send(SnapshotResponse(node.id, m.src, st.term, m.index, offset, done))

    if m.index <= st.commit:
        reply(0, done=True)  # our log already holds everything it covers
        return
    rx = node._receiver
    key = (m.index, m.snapshot_term, m.term)
    # Another membership for the same snapshot is another stream (see the module docstring).
    if rx is None or rx.key != key or rx.membership != m.membership:
        if m.offset != 0:
            reply(0)  # start over: we have no download of that snapshot
            return
        if rx is not None:
            rx.scope.cancel()
        send_channel, receive_channel = trio.open_memory_channel[bytes](RECEIVE_QUEUE)
        rx = node._receiver = Receiver(key, m.membership, send_channel, trio.CancelScope())
        assert node._nursery is not None
        node._spawn(
            node._nursery, "snapshot receiver", _write_received, node,
            SnapshotMeta(m.index, m.snapshot_term, m.membership), receive_channel, rx,
        )  # fmt: skip
    if m.offset != rx.received:
        reply(rx.received)
        return
    if m.data:
        try:
            rx.send.send_nowait(m.data)
        except trio.WouldBlock:
            reply(rx.received)  # the writer is behind: the leader will resend
            return
        rx.received += len(m.data)
    if m.done:
        rx.send.close()
    else:
        reply(rx.received)


async def _write_received(
    node: Node, meta: SnapshotMeta, chunks: trio.MemoryReceiveChannel[bytes], rx: Receiver
) -> None:
    data: list[bytes] = []
    patience_s = abandon_after_s(node)

    async def tee() -> AsyncGenerator[bytes, None]:
        while True:
            chunk: bytes | None = None
            with trio.move_on_after(patience_s):
                try:
                    chunk = await chunks.receive()
                except trio.EndOfChannel:
                    return
            if chunk is None:
                # The leader went quiet: drop the download (and the snapshot lock with it).
                node._notify("snapshot-abandoned", meta)
                node._oplog.snapshot_abandoned(meta, rx.received, "leader_silent")
                rx.scope.cancel()
                await trio.lowlevel.checkpoint()  # raises Cancelled
            else:
                data.append(chunk)
                yield chunk

    try:
        with rx.scope:
            async with node._snapshot_lock:
                if meta.index <= node._snapshot_index:
                    return
                try:
                    async with aclosing(tee()) as stream:
                        await node._storage.save_snapshot(meta, stream)
                except StorageFullError as exc:
                    node._on_snapshot_refused(exc)  # the leader sends it again later
                    return
                node._snapshot_index = meta.index
            await node._inbox_send.send(SnapshotReceived(meta, data, rx.started_at))
    finally:
        chunks.close()
        if node._receiver is rx:
            node._receiver = None


def drop_stale_download(node: Node) -> None:
    """Dispatcher: drop a download the follower no longer needs because its log already
    reaches the snapshot's index (the leader abandoned the stream and caught it up from the
    log instead). Without this, the download would hold the snapshot lock, and the follower
    would never snapshot or compact again."""
    rx = node._receiver
    if rx is not None and node._state.commit >= rx.key[0]:
        meta = SnapshotMeta(rx.key[0], rx.key[1], rx.membership)
        node._notify("snapshot-abandoned", meta)
        node._oplog.snapshot_abandoned(meta, rx.received, "log_caught_up")
        rx.scope.cancel()
        node._receiver = None


async def install(node: Node, event: SnapshotReceived) -> None:
    """Dispatcher: a received snapshot is durable; adopt it and acknowledge."""
    st = node._state
    meta = event.meta
    if meta.index > st.commit:
        old_start = st.log.start_index
        if node._restore_at is not None:
            node._restore_at(event.data, meta.index, meta.term)
        else:
            node._sm.restore(event.data)  # type: ignore[attr-defined]
        node._last_applied = meta.index
        node._applied_bytes = 0
        node._counters.snapshots_installed += 1
        node._notify("restore", meta)
        if not st.install_snapshot(meta):
            await node._storage.save(truncate_from=old_start + 1)
            await node._storage.sync()
        await node._storage.compact(meta.index, meta.term)
        size = sum(len(chunk) for chunk in event.data)
        node._counters.snapshot_bytes = size
        seconds = trio.current_time() - event.started_at
        node._oplog.snapshot_installed(st.leader_id, meta, size, seconds)
    if st.leader_id is not None and st.role is Role.FOLLOWER:
        node._transport.send(
            SnapshotResponse(node.id, st.leader_id, st.term, meta.index, 0, done=True)
        )
