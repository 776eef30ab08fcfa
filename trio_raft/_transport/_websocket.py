"""A :class:`~trio_raft.Transport` over WebSockets (trio-websocket), with authenticated peers.

::

    open_websocket_transport ─ nursery
      ├── server        listeners on host:port; one task per inbound connection: TLS, HTTP
      │                 upgrade on /raft, handshake (at most max_connections at once, at most
      │                 MAX_HANDSHAKES_PER_ADDRESS per address: a newcomer evicts the oldest),
      │                 then read frames ──▶ decode ──▶ receive channel
      └── dialer → peer one per peer: connect, handshake, then write that peer's queue, in order;
                        reconnect with exponential backoff and jitter

Each node dials every peer and carries only its own messages on that connection; inbound
connections are read-only. So each direction of a pair of nodes has its own ordered stream, and
a slow reader never blocks anyone's ``send``: that is sync, encodes the frame and puts it on the
peer's bounded queue, or drops it (counted) when the queue is full or the peer is not connected.
Raft retries whatever is lost.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Callable, Mapping
from typing import Final, final
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection

from .._codec import FrameError, decode, encode
from .._inbound import Admission, Barrier, Ticket, remote_host
from .._messages import Message
from .._types import NodeId
from .._ws import wrap_server_stream_fast
from ._auth import RAFT_PATH, PeerRejectedError, accept_request, describe_failure, server_handshake
from ._peer import PeerLink, close
from ._stats import (
    MAX_HANDSHAKES_PER_ADDRESS,
    MAX_INBOUND_PER_PEER,
    Limits,
    Totals,
    TransportStatistics,
)

logger: Final = logging.getLogger("trio_raft.transport")

_HANDSHAKE_ERRORS: Final = (
    PeerRejectedError,
    trio.TooSlowError,
    ConnectionClosed,
    HandshakeError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


@final
class WebSocketTransport:
    """One node's endpoint of a WebSocket cluster network; implements
    :class:`trio_raft.Transport`. Create it with :func:`open_websocket_transport`.

    It is valid until that context exits; ``send`` then drops everything and the receive
    channel reports :exc:`trio.EndOfChannel`.
    """

    def __init__(
        self,
        node_id: NodeId,
        peers: Mapping[NodeId, str | None],
        *,
        cluster_id: str,
        secret: bytes,
        peer_ssl_context: ssl.SSLContext | None,
        limits: Limits,
        rng: random.Random,
    ) -> None:
        self._id = node_id
        self._cluster_id = cluster_id
        self._secret = secret
        self._limits = limits
        self._totals = Totals()
        self._links = {
            peer_id: PeerLink(
                peer_id,
                url,
                node_id=node_id,
                cluster_id=cluster_id,
                secret=secret,
                ssl_context=peer_ssl_context,
                limits=limits,
                totals=self._totals,
                rng=rng,
            )
            for peer_id, url in peers.items()
        }
        self._inbound_send, self._inbound_receive = trio.open_memory_channel[Message](
            limits.receive_queue_size
        )
        self._admission = Admission(
            max_pending=limits.max_connections,
            max_pending_per_address=MAX_HANDSHAKES_PER_ADDRESS,
        )
        self._barrier = Barrier(logger, f"{node_id}: an inbound peer connection")
        self._closed = False
        self._url = ""
        self._ports: tuple[int, ...] = ()

    # -- public API --------------------------------------------------------------------------

    @property
    def node_id(self) -> NodeId:
        """The node this transport belongs to."""
        return self._id

    @property
    def port(self) -> int:
        """The TCP port the server is bound to (the kernel's choice if ``port=0`` was given).

        Raises:
            RuntimeError: the host resolved to several listeners with different ports.
        """
        if len(set(self._ports)) != 1:
            raise RuntimeError(f"listening on several ports {self._ports}; pass a fixed port")
        return self._ports[0]

    @property
    def url(self) -> str:
        """``ws://host:port/raft`` (``wss://`` with TLS) built from the ``host`` argument and
        the bound port: what peers on this machine can dial."""
        return self._url

    @property
    def receive_channel(self) -> trio.MemoryReceiveChannel[Message]:
        """Validated messages from authenticated peers to this node, in arrival order per
        connection; bounded by ``receive_queue_size`` (a full channel pauses reading)."""
        return self._inbound_receive

    def send(self, message: Message) -> None:
        """Queue ``message`` for ``message.dst``; never blocks, never raises for network trouble.

        The message is dropped (and counted in :meth:`statistics`) if the destination is not a
        known peer, not connected, its queue is full (``send_queue_size`` frames or
        ``send_queue_bytes`` bytes), the frame exceeds ``max_message_bytes``, or a command cannot
        be encoded (a command outside the wire's data model, see :doc:`wire`; logged as an error).

        Raises:
            ValueError: ``message.src`` is not this node (a transport never forges).
        """
        if message.src != self._id:
            raise ValueError(
                f"transport of {self._id!r} cannot send a message from {message.src!r}"
            )
        link = self._links.get(message.dst)
        if link is None or self._closed:
            self._totals.dropped_unknown_peer += 1
            return
        if not link.connected:  # checked first: no point in encoding
            link.counters.dropped_not_connected += 1
            return
        try:
            frame = encode(message, cluster_id=self._cluster_id)
        except FrameError as exc:
            link.counters.dropped_unencodable += 1
            logger.error("%s: cannot send to %s: %s", self._id, link.id, exc)
            return
        if len(frame) > self._limits.max_message_bytes:
            link.counters.dropped_too_large += 1
            logger.error(
                "%s: dropped a %d-byte %s to %s: above max_message_bytes",
                self._id,
                len(frame),
                type(message).__name__,
                link.id,
            )
            return
        link.offer(frame)

    def set_peer_url(self, peer: NodeId, url: str) -> None:
        """Dial ``peer`` at ``url`` from now on. If that changes its URL, an open connection to
        it is closed and the new address is tried at once (no backoff); otherwise nothing
        happens.

        Raises:
            KeyError: ``peer`` was not in ``peers``.
            ValueError: ``url`` is not a ``ws://`` or ``wss://`` URL with a host.
        """
        self._links[peer].set_url(check_url(url))

    def statistics(self) -> TransportStatistics:
        """A frozen snapshot of this transport's counters since it was opened."""
        totals = self._totals
        return TransportStatistics(
            node_id=self._id,
            peers={peer_id: link.statistics() for peer_id, link in self._links.items()},
            open_connections=totals.open_connections,
            refused_connections=totals.refused_connections,
            evicted_connections=self._admission.evicted,
            failed_connections=self._barrier.count,
            handshake_failures=totals.handshake_failures,
            decode_failures=totals.decode_failures,
            dropped_unknown_peer=totals.dropped_unknown_peer,
        )

    async def wait_statistics(
        self, predicate: Callable[[TransportStatistics], bool]
    ) -> TransportStatistics:
        """Block until ``predicate(self.statistics())`` holds and return those statistics.

        The predicate is re-evaluated whenever a connection opens or closes, a frame is sent or
        received, or a failure is counted (not on drops in ``send``, which never block). Bound
        the wait with :func:`trio.fail_after`.
        """
        while True:
            stats = self.statistics()
            if predicate(stats):
                return stats
            await self._totals.changed.wait()

    def __repr__(self) -> str:
        return f"<WebSocketTransport {self._id!r} at {self._url or 'unbound'}>"

    # -- serving ---------------------------------------------------------------------------

    async def _handle_stream(self, stream: trio.abc.Stream) -> None:
        """One inbound connection, from TCP accept to close; nothing it raises ends the node.

        Until it has proved membership it is pending (see :class:`~trio_raft._inbound.Admission`):
        a newer connection evicts the oldest pending one when ``max_connections`` or
        :data:`MAX_HANDSHAKES_PER_ADDRESS` of them are open, so strangers holding connections
        open cannot keep a member out. Authenticated connections do not count against that
        pool (at most :data:`MAX_INBOUND_PER_PEER` per peer, the newest kept)."""
        totals = self._totals
        ticket = self._admission.admit(remote_host(stream))
        assert ticket is not None, "no max_total: admission always makes room"
        totals.open_connections += 1
        totals.changed.notify()
        try:
            with ticket.scope:  # eviction cancels it
                async with trio.open_nursery() as nursery:
                    await self._serve_connection(nursery, stream, ticket)
                    nursery.cancel_scope.cancel()
        except* Exception as group:  # the barrier: Cancelled and KeyboardInterrupt pass
            self._barrier.caught(group)
        finally:
            self._admission.release(ticket)
            totals.open_connections -= 1
            totals.changed.notify()
            await trio.aclose_forcefully(stream)

    async def _serve_connection(
        self, nursery: trio.Nursery, stream: trio.abc.Stream, ticket: Ticket
    ) -> None:
        limits = self._limits
        remote = _remote(stream)
        ws: WebSocketConnection | None = None
        try:
            with trio.fail_after(limits.handshake_timeout_s):  # TLS, HTTP upgrade, proof
                if isinstance(stream, trio.SSLStream):
                    await stream.do_handshake()  # fails here, clearly, not in the reader task
                request = await wrap_server_stream_fast(
                    nursery,
                    stream,
                    message_queue_size=1,
                    max_message_size=limits.max_message_bytes,
                )
                ws = await accept_request(request)
                peer_id = await server_handshake(
                    ws,
                    secret=self._secret,
                    cluster_id=self._cluster_id,
                    server_id=self._id,
                    peers=self._links,
                )
        except _HANDSHAKE_ERRORS as exc:
            reason = describe_failure(exc)
            claimed = exc.peer if isinstance(exc, PeerRejectedError) else None
            description = f"inbound handshake from {remote} (claiming {claimed!r}): {reason}"
            link = self._links.get(claimed) if claimed is not None else None
            self._totals.handshake_failed(link.counters if link else None, description)
            logger.warning("%s: %s", self._id, description)
            if ws is not None:
                await close(ws, 1008, reason)
            return
        self._admission.establish(ticket)
        link = self._links[peer_id]
        with trio.CancelScope() as scope:
            link.inbound.append(scope)
            self._totals.changed.notify()
            if len(link.inbound) > MAX_INBOUND_PER_PEER:
                link.inbound[0].cancel()  # the oldest is most likely dead
            logger.info("%s: accepted a connection from %s", self._id, peer_id)
            try:
                code, reason = await self._read_frames(ws, link)
            finally:
                link.inbound.remove(scope)
                self._totals.changed.notify()
        if scope.cancelled_caught:
            code, reason = 1000, "replaced by a newer connection"
        await close(ws, code, reason)

    async def _read_frames(self, ws: WebSocketConnection, peer: PeerLink) -> tuple[int, str]:
        """Deliver ``peer``'s frames until the connection ends; return the close code and
        reason to answer with."""
        limits = self._limits
        counters = peer.counters
        while True:
            try:
                data = await ws.get_message()
            except ConnectionClosed as exc:
                if exc.reason is not None and exc.reason.code == 1009:  # trio-websocket's cap
                    self._frame_failed(peer, f"message above {limits.max_message_bytes} bytes")
                return 1000, "closed"
            if isinstance(data, str):
                self._frame_failed(peer, "text message")
                return 1003, "binary messages only"
            try:
                message = decode(
                    data, cluster_id=self._cluster_id, max_bytes=limits.max_message_bytes
                )
            except FrameError as exc:
                self._frame_failed(peer, str(exc))
                return 1007, str(exc)
            if message.src != peer.id or message.dst != self._id:
                reason = f"frame {message.src!r}->{message.dst!r} on the connection of {peer.id!r}"
                self._frame_failed(peer, reason)
                return 1008, reason
            counters.frames_received += 1
            counters.bytes_received += len(data)
            self._totals.changed.notify()
            await self._inbound_send.send(message)

    def _frame_failed(self, peer: PeerLink, reason: str) -> None:
        self._totals.decode_failures += 1
        peer.counters.decode_failures += 1
        self._totals.changed.notify()
        logger.warning(
            "%s: dropped the connection of %s: invalid frame: %s", self._id, peer.id, reason
        )

    # -- running ---------------------------------------------------------------------------

    async def run(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve and dial until cancelled; ``started`` once the listeners are bound."""
        listeners: list[trio.SocketListener] | list[trio.SSLListener[trio.SocketStream]]
        if ssl_context is None:
            listeners = await trio.open_tcp_listeners(port, host=host)
        else:
            listeners = await trio.open_ssl_over_tcp_listeners(
                port, ssl_context, host=host, https_compatible=True
            )
        self._ports = tuple(_listener_port(listener) for listener in listeners)
        scheme = "ws" if ssl_context is None else "wss"
        url_host = f"[{host}]" if ":" in host else host
        self._url = f"{scheme}://{url_host}:{self._ports[0]}{RAFT_PATH}"
        try:
            async with self._inbound_send, trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._handle_stream, listeners)
                for link in self._links.values():
                    nursery.start_soon(link.run, name=f"trio_raft dial {self._id}->{link.id}")
                task_status.started()
        finally:
            self._closed = True
            self._totals.changed.notify()


# -- helpers ----------------------------------------------------------------------------------


def check_url(url: str) -> str:
    """Return ``url`` if it is a ``ws://`` or ``wss://`` URL with a host and a valid port.

    Raises:
        ValueError: it is not.
    """
    parts = urlsplit(url)  # raises ValueError for some malformed URLs
    _ = parts.port  # raises ValueError for a bad port
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"peer URL must look like ws://host:port/raft or wss://..., got {url!r}")
    return url


def _listener_port(listener: trio.SocketListener | trio.SSLListener[trio.SocketStream]) -> int:
    inner = listener.transport_listener if isinstance(listener, trio.SSLListener) else listener
    assert isinstance(inner, trio.SocketListener)
    port: int = inner.socket.getsockname()[1]
    return port


def _remote(stream: trio.abc.Stream) -> str:
    """``host:port`` of the other end of ``stream``, for logs; never raises."""
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if not isinstance(inner, trio.SocketStream):
        return repr(inner)
    try:
        host, port, *_ = inner.socket.getpeername()
    except OSError:
        return "an unknown address"
    return f"{host}:{port}"
