"""A :class:`~trio_raft.Transport` over WebSockets (trio-websocket), with authenticated peers.

::

    open_websocket_transport ─ nursery
      ├── server        listeners on host:port; one task per inbound connection: TLS, HTTP
      │                 upgrade on /raft, handshake (at most max_connections at once, at most
      │                 MAX_HANDSHAKES_PER_ADDRESS per address: a newcomer evicts the oldest),
      │                 then read messages ──▶ split batches ──▶ decode ──▶ receive channel
      └── dialer → peer one per peer: connect, handshake, then write that peer's queue, in order;
                        reconnect with exponential backoff and jitter; each in a cancel scope
                        of its own, so update_members can add and remove peers at any time

Each node dials every peer and carries only its own messages on that connection; inbound
connections are read-only. So each direction of a pair of nodes has its own ordered stream, and
a slow reader never blocks anyone's ``send``: that is sync, encodes the frame and puts it on the
peer's bounded queue, or drops it (counted) when the queue is full or the peer is not connected.
Raft retries whatever is lost.

Frames already queued when the dialer writes go together in one WebSocket message (a batch) if
the listener negotiated batches (subprotocol ``trio-raft.2+batch``; see :doc:`wire`).
"""

from __future__ import annotations

import contextlib
import logging
import random
import ssl
from collections.abc import Callable, Iterable, Mapping
from typing import Final, final
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection

from .._codec import MAX_ID_CHARS, FrameError, decode, encode
from .._inbound import Admission, Barrier, Ticket, remote_address, remote_host
from .._logging import RAFT_FIELDS, RateLimiter, log_limited
from .._messages import Message
from .._types import NodeId, short
from .._util import move_queued
from .._ws import wrap_server_stream_fast
from ._auth import (
    BATCH_SUBPROTOCOL,
    RAFT_PATH,
    PeerRejectedError,
    accept_request,
    describe_failure,
    server_handshake,
)
from ._batch import split_batch
from ._peer import PeerLink, close
from ._stats import (
    MAX_HANDSHAKES_PER_ADDRESS,
    MAX_INBOUND_PER_PEER,
    Limits,
    Totals,
    TransportStatistics,
)

logger: Final = logging.getLogger("trio_raft.transport")

REJECTION_REPORT_S: Final = 60.0
"""Refused connections and invalid frames are logged at most once this often per (address or
peer, reason), with the count of those not logged."""

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
        dial_overrides: Mapping[NodeId, str] | None = None,
        auto_max_connections: bool = False,
    ) -> None:
        self._id = node_id
        self._cluster_id = cluster_id
        self._secret = secret
        self._peer_ssl_context = peer_ssl_context
        self._limits = limits
        self._rng = rng
        self._totals = Totals()
        self._overrides = dict(dial_overrides or {})
        """URLs that win over configuration addresses: ``dial_overrides`` and
        :meth:`set_peer_url`."""
        self._fallback = {peer: url for peer, url in peers.items() if url is not None}
        """The URLs given in ``peers``: used when the configuration gives no usable address."""
        self._addresses: dict[NodeId, object] = {}
        """The configuration address of every member that :meth:`update_members` named."""
        self._auto_max_connections = auto_max_connections
        self._links = {
            peer_id: self._new_link(peer_id, self._overrides.get(peer_id, url))
            for peer_id, url in peers.items()
        }
        self._inbound_send, self._inbound_receive = trio.open_memory_channel[Message](
            limits.receive_queue_size
        )
        self._deliver_to: trio.MemorySendChannel[Message] = self._inbound_send
        """Where decoded messages go: :attr:`receive_channel`, or the node's inbox."""
        self._admission = Admission(
            max_pending=limits.max_connections,
            max_pending_per_address=MAX_HANDSHAKES_PER_ADDRESS,
        )
        self._barrier = Barrier(logger, f"{node_id}: an inbound peer connection")
        self._rejections = RateLimiter(REJECTION_REPORT_S)
        self._nursery: trio.Nursery | None = None
        """The nursery of :meth:`run` while it runs: every link's task is started in it."""
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

    def deliver_into(self, channel: trio.MemorySendChannel[Message] | None) -> None:
        """Deliver into ``channel`` (the node's inbox) from now on, or into
        :attr:`receive_channel` again with ``None``; see :class:`trio_raft.Transport`. A full
        ``channel`` pauses reading, as a full receive channel does; a message for a closed one
        is dropped."""
        self._deliver_to = self._inbound_send if channel is None else channel
        if channel is not None:
            move_queued(self._inbound_receive, channel)

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
            frame = encode(message, cluster_id=self._cluster_id, checked=True)  # constructed
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
        happens. Like ``dial_overrides``, the URL wins over the peer's address in the
        configuration (:meth:`update_members`), for as long as the transport is open.

        Raises:
            KeyError: ``peer`` is not a peer now (not in ``peers``, or removed by
                :meth:`update_members`).
            ValueError: ``url`` is not a ``ws://`` or ``wss://`` URL with a host.
        """
        link = self._links[peer]
        link.set_url(check_url(url))
        self._overrides[peer] = url

    def update_members(self, members: Mapping[NodeId, object]) -> None:
        """Reach exactly ``members`` from now on: every node this node must talk to, each with
        its address from the configuration (:attr:`Membership.addresses
        <trio_raft.Membership.addresses>`); this node's own id is ignored. The node calls it
        whenever its configuration changes; sync, never blocks, and cheap when nothing changed.

        An address is a ``ws://``/``wss://`` URL, or a mapping whose ``"peer"`` key is one.
        ``dial_overrides`` and :meth:`set_peer_url` win over it; without a usable address the
        URL given in ``peers`` is dialled, if any, else the member is kept (its connections
        accepted) but not dialled, which is logged once at WARNING.

        * A new member gets a dial task, and its handshakes are accepted from now on.
        * A removed member's dial task stops, its queued frames are dropped, its authenticated
          inbound connections are closed (code 1000, "no longer a member"), its handshakes fail
          ("unknown node id"), ``send`` counts messages to it as ``dropped_unknown_peer`` and
          its entry leaves ``statistics().peers``.
        * A member whose URL changed is dialled at the new one (as :meth:`set_peer_url`).

        Unless ``max_connections`` was given, it becomes twice the new number of peers plus 8.
        After the transport closed, this does nothing.

        Raises:
            ValueError: a member id is not a str of 1 to 128 characters (nothing changed).
        """
        if self._closed:
            return
        check_ids(members)
        wanted = {peer: address for peer, address in members.items() if peer != self._id}
        for peer in [peer for peer in self._links if peer not in wanted]:
            self._remove(peer)
        for peer, address in wanted.items():
            link = self._links.get(peer)
            known = link is not None and peer in self._addresses
            if known and _same(self._addresses[peer], address):
                continue  # the common case: nothing changed
            self._addresses[peer] = address
            url = self._url_for(peer, address)
            if link is None:
                link = self._links[peer] = self._new_link(peer, url)
                self._start(link)
                logger.info("%s: %s is a member; dialling %s", self._id, peer, url)
            else:
                link.set_url(url)
        if self._auto_max_connections:
            self._admission.max_pending = default_max_connections(len(self._links))
        self._totals.changed.notify()

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

    # -- members ---------------------------------------------------------------------------

    def _new_link(self, peer: NodeId, url: str | None) -> PeerLink:
        return PeerLink(
            peer,
            url,
            node_id=self._id,
            cluster_id=self._cluster_id,
            secret=self._secret,
            ssl_context=self._peer_ssl_context,
            limits=self._limits,
            totals=self._totals,
            rng=self._rng,
        )

    def _start(self, link: PeerLink) -> None:
        """Run ``link`` in the transport's nursery. Before :meth:`run` this does nothing
        (``run`` starts every link it finds); while the transport closes it stops the link."""
        if self._nursery is None:
            return
        try:
            self._nursery.start_soon(link.run, name=f"trio_raft dial {self._id}->{link.id}")
        except RuntimeError:  # the nursery is closing: so is the transport
            link.stop()

    def _remove(self, peer: NodeId) -> None:
        link = self._links.pop(peer)
        self._addresses.pop(peer, None)
        link.stop()
        logger.info("%s: %s is no longer a member; stopped dialling it", self._id, peer)

    def _url_for(self, peer: NodeId, address: object) -> str | None:
        """The URL to dial ``peer`` at, given its configuration ``address``."""
        override = self._overrides.get(peer)
        if override is not None:
            return override
        url = address_url(address)
        if url is not None:
            return url
        fallback = self._fallback.get(peer)
        if fallback is None:
            logger.warning(
                "%s: member %s has no ws:// or wss:// URL in its address (%s); it is not "
                "dialled (its own connections are accepted)",
                self._id,
                peer,
                _describe(address),
            )
        return fallback

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
        remote = remote_address(stream)
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
            self._rejected(stream, remote, claimed, reason, description)
            if ws is not None:
                await close(ws, 1008, reason)
            return
        link = self._links.get(peer_id)
        if link is None:  # removed by update_members during the handshake
            description = f"inbound handshake from {remote} (claiming {peer_id!r}): unknown node id"
            self._totals.handshake_failed(None, description)
            self._rejected(stream, remote, peer_id, "unknown node id", description)
            await close(ws, 1008, "unknown node id")
            return
        self._admission.establish(ticket)
        with trio.CancelScope() as scope:
            link.inbound.append(scope)
            self._totals.changed.notify()
            if len(link.inbound) > MAX_INBOUND_PER_PEER:
                link.inbound[0].cancel()  # the oldest is most likely dead
            logger.info(
                "%s: accepted a connection from %s", self._id, peer_id,
                extra={RAFT_FIELDS: {
                    "node": self._id, "event": "peer_accepted", "peer": peer_id, "remote": remote,
                }},
            )  # fmt: skip
            try:
                code, reason = await self._read_frames(ws, link)
            finally:
                link.inbound.remove(scope)
                self._totals.changed.notify()
        if scope.cancelled_caught:
            replaced = "no longer a member" if link.stopped else "replaced by a newer connection"
            code, reason = 1000, replaced
        await close(ws, code, reason)

    async def _read_frames(self, ws: WebSocketConnection, peer: PeerLink) -> tuple[int, str]:
        """Deliver ``peer``'s frames until the connection ends; return the close code and
        reason to answer with. On a connection that negotiated batches a message may carry
        several frames, each checked and delivered in order as if it came alone."""
        limits = self._limits
        counters = peer.counters
        batching = ws.subprotocol == BATCH_SUBPROTOCOL
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
                frames = split_batch(data) if batching else [data]
            except FrameError as exc:
                self._frame_failed(peer, str(exc))
                return 1007, str(exc)
            for frame in frames:
                try:
                    message = decode(
                        frame, cluster_id=self._cluster_id, max_bytes=limits.max_message_bytes
                    )
                except FrameError as exc:
                    self._frame_failed(peer, str(exc))
                    return 1007, str(exc)
                if message.src != peer.id or message.dst != self._id:
                    reason = (
                        f"frame {message.src!r}->{message.dst!r} on the connection of {peer.id!r}"
                    )
                    self._frame_failed(peer, reason)
                    return 1008, reason
                counters.frames_received += 1
                counters.bytes_received += len(frame)
                self._totals.changed.notify()
                # A closed channel: the node it was for shut down (or the transport is
                # closing); the message is lost.
                with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                    await self._deliver_to.send(message)

    def _rejected(
        self, stream: trio.abc.Stream, remote: str, claimed: str | None, reason: str, text: str
    ) -> None:
        """Log a refused inbound connection, rate-limited per (address, reason)."""
        log_limited(
            logger, self._rejections, (remote_host(stream), reason), trio.current_time(),
            f"{self._id}: refused the {text}",
            {"node": self._id, "event": "connection_rejected", "remote": remote,
             "claimed": claimed, "reason": reason},
        )  # fmt: skip

    def _frame_failed(self, peer: PeerLink, reason: str) -> None:
        self._totals.decode_failures += 1
        peer.counters.decode_failures += 1
        self._totals.changed.notify()
        log_limited(
            logger, self._rejections, (peer.id, "frame"), trio.current_time(),
            f"{self._id}: dropped the connection of {peer.id}: invalid frame: {reason}",
            {"node": self._id, "event": "frame_rejected", "peer": peer.id, "reason": reason},
        )  # fmt: skip

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
                self._nursery = nursery
                for link in self._links.values():
                    self._start(link)
                task_status.started()
        finally:
            self._nursery = None
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


def check_ids(ids: Iterable[object]) -> None:
    """Check that every one of ``ids`` is a valid node id.

    Raises:
        ValueError: one is not a str of 1 to ``MAX_ID_CHARS`` characters.
    """
    for node_id in ids:
        if not isinstance(node_id, str) or not 1 <= len(node_id) <= MAX_ID_CHARS:
            raise ValueError(
                f"peer id {short(node_id)} must be a str of 1 to {MAX_ID_CHARS} characters"
            )


def address_url(address: object) -> str | None:
    """The peer URL in a configuration address: the address itself if it is a ``str``, its
    ``"peer"`` value if it is a mapping; ``None`` unless that is a valid ``ws://``/``wss://``
    URL (:func:`check_url`). Never raises."""
    try:
        url = address.get("peer") if isinstance(address, Mapping) else address
        return check_url(url) if isinstance(url, str) else None
    except Exception:  # anything a hostile or broken address does: no URL
        return None


def default_max_connections(peers: int) -> int:
    """The default ``max_connections`` for ``peers`` peers."""
    return 2 * peers + 8


def _describe(address: object) -> str:
    """A bounded description of a configuration address, for logs; never raises."""
    try:
        if isinstance(address, Mapping):
            if "peer" not in address:
                return "a mapping without a 'peer' key"
            return f"its 'peer' is {short(address['peer'])}"
    except Exception:
        return "an unreadable mapping"
    return short(address)


def _same(a: object, b: object) -> bool:
    """``a == b`` for plain configuration values (never raises)."""
    try:
        return a is b or bool(a == b)
    except Exception:
        return False


def _listener_port(listener: trio.SocketListener | trio.SSLListener[trio.SocketStream]) -> int:
    inner = listener.transport_listener if isinstance(listener, trio.SSLListener) else listener
    assert isinstance(inner, trio.SocketListener)
    port: int = inner.socket.getsockname()[1]
    return port
