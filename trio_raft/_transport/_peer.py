"""One peer's outbound side: a bounded send queue and the connection that drains it.

A :class:`PeerLink` dials its peer, proves membership (:func:`client_handshake`), then writes
the queued frames in order until the connection breaks, and starts again after an exponential,
jittered backoff. ``offer`` is sync and never blocks: it queues a frame only while the
connection is up and the queue has room, and counts every frame it refuses.

A link lives exactly as long as its peer is a member: :meth:`PeerLink.run` runs inside
:attr:`PeerLink.scope`, which the link owns, and :meth:`PeerLink.stop` (the peer left the
configuration) cancels it together with the peer's inbound connections.
"""

from __future__ import annotations

import logging
import random
import ssl
from typing import Final, final
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
)

from .._logging import RAFT_FIELDS, RateLimiter, log_limited
from .._types import NodeId
from .._util import unwrap_single_exception_group
from .._ws import wrap_client_stream_fast
from ._auth import (
    BATCH_SUBPROTOCOL,
    HANDSHAKE_MAX_BYTES,
    SUBPROTOCOL,
    PeerRejectedError,
    client_handshake,
    describe_failure,
    is_refusal,
)
from ._batch import MAX_BATCH_FRAMES, encode_batch
from ._stats import (
    BATCH_BYTES,
    DISCONNECT_TIMEOUT_S,
    Limits,
    PeerCounters,
    PeerStatistics,
    Totals,
)

logger: Final = logging.getLogger("trio_raft.transport")

_NETWORK_ERRORS: Final = (
    ConnectionClosed,
    HandshakeError,
    OSError,
    trio.BrokenResourceError,
    trio.TooSlowError,
)


@final
class PeerLink:
    """The outbound connection to one peer, and its send queue."""

    def __init__(
        self,
        peer_id: NodeId,
        url: str | None,
        *,
        node_id: NodeId,
        cluster_id: str,
        secret: bytes,
        ssl_context: ssl.SSLContext | None,
        limits: Limits,
        totals: Totals,
        rng: random.Random,
    ) -> None:
        self.id = peer_id
        self.url = url
        self.counters = PeerCounters()
        self._refusals = RateLimiter(60.0)
        """Rate limit of the warnings about this peer refusing our handshake."""
        self.connected = False
        """Whether the connection is authenticated and open: ``offer`` queues only then."""
        self.inbound: list[trio.CancelScope] = []
        """The server's authenticated connections from this peer (the oldest first)."""
        self.scope = trio.CancelScope()
        """Everything :meth:`run` does happens inside it; :meth:`stop` cancels it."""
        self.stopped = False
        """Whether :meth:`stop` was called: the peer is no longer a member."""
        self._node_id = node_id
        self._cluster_id = cluster_id
        self._secret = secret
        self._ssl_context = ssl_context
        self._limits = limits
        self._totals = totals
        self._rng = rng
        self._queue_send, self._queue = trio.open_memory_channel[bytes](limits.send_queue_size)
        self._queued_bytes = 0
        self._url_set = trio.Event()
        self._attempt: trio.CancelScope | None = None

    def offer(self, frame: bytes) -> None:
        """Queue ``frame`` if the peer is connected and the queue has room; else count a drop."""
        if not self.connected:
            self.counters.dropped_not_connected += 1
        elif self._queued_bytes + len(frame) > self._limits.send_queue_bytes:
            self.counters.dropped_queue_full += 1
        else:
            try:
                self._queue_send.send_nowait(frame)
            except trio.WouldBlock:
                self.counters.dropped_queue_full += 1
            except trio.ClosedResourceError:  # stopped: the transport no longer offers to it
                self.counters.dropped_not_connected += 1
            else:
                self._queued_bytes += len(frame)

    def set_url(self, url: str | None) -> None:
        """Dial ``url`` from now on (``None``: stop dialling); if it changed, drop the
        connection and retry at once."""
        if url == self.url:
            return
        self.url = url
        self._url_set.set()
        if self._attempt is not None:
            self._attempt.cancel()

    def statistics(self) -> PeerStatistics:
        """A frozen snapshot of this link's counters and state."""
        return self.counters.freeze(
            url=self.url,
            connected=self.connected,
            inbound_connections=len(self.inbound),
            queued_frames=self._queue_send.statistics().current_buffer_used,
            queued_bytes=self._queued_bytes,
        )

    def stop(self) -> None:
        """The peer is no longer a member: cancel :attr:`scope` (the dial task ends, its
        connection closes), close the send queue and cancel the peer's inbound connections.
        Sync and idempotent; the tasks concerned finish on their own, at once."""
        if self.stopped:
            return
        self.stopped = True
        self.connected = False
        self.scope.cancel(reason=f"{self.id!r} is no longer a member")
        for scope in self.inbound:
            scope.cancel(reason=f"{self.id!r} is no longer a member")
        self._queue_send.close()
        self._url_set.set()  # wakes nothing that matters: the scope is cancelled

    async def run(self) -> None:
        """Keep a connection to the peer open until cancelled, or until :meth:`stop` (then it
        returns). Start it once, in the transport's nursery."""
        with self.scope:
            failures = 0
            while True:
                if self.url is None:
                    self._url_set = trio.Event()
                    await self._url_set.wait()
                    continue  # stop() also sets the event: check again
                url = self.url
                with trio.CancelScope() as self._attempt:  # set_url cancels it
                    connected = await self._connect_once(url)
                    failures = 0 if connected else failures + 1
                    await trio.sleep(self._backoff_s(failures))
                if self._attempt.cancelled_caught:
                    failures = 0

    def _backoff_s(self, failures: int) -> float:
        """Exponential in consecutive failures, capped, times a jitter factor in [0.5, 1)."""
        limits = self._limits
        delay = min(limits.backoff_s_max, limits.backoff_s_min * 2.0 ** min(failures, 60))
        return delay * (0.5 + 0.5 * self._rng.random())

    async def _connect_once(self, url: str) -> bool:
        """One connection: returns whether the handshake succeeded (the connection has ended
        either way); every network failure is counted and logged, not raised.

        It uses trio-websocket's bottom tier (``wrap_client_stream``) so that it owns the
        stream: ``open_websocket_url`` leaves the socket open when the server closes first."""
        stream: trio.abc.Stream | None = None
        authenticated = False
        try:
            deadline = trio.current_time() + self._limits.connect_timeout_s
            with trio.move_on_at(deadline):  # outside the nursery: errors keep their cause
                stream = await _open_stream(url, self._ssl_context)
            with unwrap_single_exception_group():
                async with trio.open_nursery() as nursery:
                    ws = None
                    with trio.move_on_at(deadline):
                        if stream is not None:
                            ws = await wrap_client_stream_fast(
                                nursery,
                                stream,
                                _host_header(url),
                                _resource(url),
                                subprotocols=[BATCH_SUBPROTOCOL, SUBPROTOCOL],
                                message_queue_size=1,
                                max_message_size=HANDSHAKE_MAX_BYTES,
                            )
                    if ws is None:
                        self._connect_failed(trio.TooSlowError("connect timed out"))
                    elif await self._authenticate(ws):
                        authenticated = True
                        await self._write_frames(ws)
                        self._lost("the connection was closed")
                        await close(ws, 1000, "")
                    nursery.cancel_scope.cancel()
        except (ConnectionRejected, ConnectionClosed, trio.TooSlowError) as exc:
            if authenticated:
                self._lost(str(exc))
            elif isinstance(exc, ConnectionRejected | trio.TooSlowError) or is_refusal(exc):
                self._handshake_failed(describe_failure(exc))
            else:
                self._connect_failed(exc)
        except _NETWORK_ERRORS as exc:
            if authenticated:
                self._lost(repr(exc))
            else:
                self._connect_failed(exc)
        except Exception:  # the barrier: a bug in one dial must not take the node down
            logger.exception("%s: connection to %s failed unexpectedly", self._node_id, self.id)
        finally:
            if stream is not None:
                await trio.aclose_forcefully(stream)
        return authenticated

    async def _authenticate(self, ws: WebSocketConnection) -> bool:
        """Run the handshake; on refusal count it, close with 1008 and return False."""
        try:
            with trio.fail_after(self._limits.handshake_timeout_s):
                if ws.subprotocol not in (BATCH_SUBPROTOCOL, SUBPROTOCOL):
                    raise PeerRejectedError(f"subprotocol {ws.subprotocol!r}")
                await client_handshake(
                    ws,
                    secret=self._secret,
                    cluster_id=self._cluster_id,
                    client_id=self._node_id,
                    server_id=self.id,
                )
        except PeerRejectedError as exc:
            self._handshake_failed(exc.reason)
            await close(ws, 1008, exc.reason)
            return False
        self.counters.connects += 1
        logger.info(
            "%s: connected to %s at %s", self._node_id, self.id, self.url,
            extra={RAFT_FIELDS: {
                "node": self._node_id, "event": "peer_connected", "peer": self.id, "url": self.url,
            }},
        )  # fmt: skip
        return True

    def _lost(self, error: str) -> None:
        logger.info(
            "%s: lost the connection to %s: %s", self._node_id, self.id, error,
            extra={RAFT_FIELDS: {
                "node": self._node_id, "event": "peer_disconnected", "peer": self.id,
                "error": error,
            }},
        )  # fmt: skip

    def _handshake_failed(self, reason: str) -> None:
        description = f"outbound handshake to {self.id}: {reason}"
        self._totals.handshake_failed(self.counters, description)
        log_limited(
            logger, self._refusals, reason, trio.current_time(),
            f"{self._node_id}: {description}",
            {"node": self._node_id, "event": "handshake_refused", "peer": self.id,
             "url": self.url, "reason": reason},
        )  # fmt: skip

    def _connect_failed(self, exc: BaseException) -> None:
        self.counters.connect_failures += 1
        cause = f" ({exc.__cause__!r})" if exc.__cause__ is not None else ""
        self.counters.last_failure = f"cannot connect: {exc!r}{cause}"
        self._totals.changed.notify()
        logger.debug("%s: cannot connect to %s: %r", self._node_id, self.id, exc)

    async def _write_frames(self, ws: WebSocketConnection) -> None:
        """Send the queue in order until the connection fails or closes. If the listener
        reads batches, frames already queued when one is taken go with it, in one message of
        at most ``BATCH_BYTES`` (no waiting for more: a lone frame goes at once)."""
        counters, changed = self.counters, self._totals.changed
        batching = ws.subprotocol == BATCH_SUBPROTOCOL
        cap = min(BATCH_BYTES, self._limits.max_message_bytes)
        carry: bytes | None = None  # taken from the queue, too big for the batch before it
        self.connected = True
        changed.notify()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_for_close, ws, nursery.cancel_scope)
                while True:
                    if carry is None:
                        frame = await self._queue.receive()
                        self._queued_bytes -= len(frame)
                    else:
                        frame, carry = carry, None
                    frames = [frame]
                    size = _BATCH_HEAD + len(frame)
                    while batching and len(frames) < MAX_BATCH_FRAMES and size < cap:
                        try:
                            frame = self._queue.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):  # EndOfChannel: stopped
                            break
                        self._queued_bytes -= len(frame)
                        if size + _ITEM_HEAD + len(frame) > cap:
                            carry = frame
                            break
                        frames.append(frame)
                        size += _ITEM_HEAD + len(frame)
                    data = frames[0] if len(frames) == 1 else encode_batch(frames)
                    with trio.fail_after(self._limits.send_timeout_s):
                        await ws.send_message(data)
                    counters.frames_sent += len(frames)
                    counters.bytes_sent += sum(map(len, frames))
                    counters.messages_sent += 1
                    changed.notify()
        finally:
            self.connected = False
            if carry is not None:
                counters.dropped_not_connected += 1
            while True:  # frames queued for a connection that is gone: Raft will resend
                try:
                    self._queue.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):  # EndOfChannel: stopped
                    break
                counters.dropped_not_connected += 1
            self._queued_bytes = 0
            changed.notify()


_BATCH_HEAD: Final = 3  # the most a batch's array head takes (up to MAX_BATCH_FRAMES items)
_ITEM_HEAD: Final = 5  # the most a frame's byte-string head takes (frames under 4 GiB)


async def close(ws: WebSocketConnection, code: int, reason: str) -> None:
    """Close ``ws`` with ``code`` and ``reason``, waiting at most ``DISCONNECT_TIMEOUT_S``."""
    data = reason.encode("utf-8")[:123]  # the limit of a close frame's reason
    with trio.move_on_after(DISCONNECT_TIMEOUT_S):
        await ws.aclose(code, data.decode("utf-8", "ignore"))


async def _open_stream(url: str, ssl_context: ssl.SSLContext | None) -> trio.abc.Stream:
    """TCP (and TLS, handshake done, so certificate errors surface here) to ``url``'s host."""
    parts = urlsplit(url)
    host, secure = parts.hostname, parts.scheme == "wss"
    assert host is not None
    port = parts.port or (443 if secure else 80)
    if not secure:
        return await trio.open_tcp_stream(host, port)
    context = ssl_context or ssl.create_default_context()
    stream = await trio.open_ssl_over_tcp_stream(
        host, port, ssl_context=context, https_compatible=True
    )
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


def _host_header(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"[{host}]:{parts.port}" if ":" in host else f"{host}:{parts.port}"


def _resource(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


async def _watch_for_close(ws: WebSocketConnection, scope: trio.CancelScope) -> None:
    """The server never sends after the handshake: any message, or the close, ends the
    connection (a quiet connection would otherwise notice only at its next send)."""
    try:
        await ws.get_message()
        logger.warning("unexpected message from the server after the handshake; closing")
    except ConnectionClosed:
        pass
    scope.cancel()
