"""Statistics, limits and default limits of the WebSocket transport: plain values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs

from .._sync import Broadcast
from .._types import NodeId

BATCH_BYTES: Final = 64 << 10
"""The largest batch a link writes (or ``max_message_bytes`` if smaller): frames queued for a
peer are coalesced into one WebSocket message up to this size; a larger frame goes alone."""
MAX_MESSAGE_BYTES: Final = 4 << 20
"""Default frame size limit: above the node's default ``max_bytes_per_append`` and
``snapshot_chunk_bytes`` (1 MiB each) plus framing."""
SEND_QUEUE_SIZE: Final = 128
"""Default bound of a peer's send queue, in frames (the node keeps at most
``Config.max_inflight_appends`` appends in flight per follower, plus heartbeats and answers)."""
SEND_QUEUE_BYTES: Final = 16 << 20
"""Default bound of a peer's send queue, in bytes."""
RECEIVE_QUEUE_SIZE: Final = 64
"""Default bound of the receive channel, in messages."""
CONNECT_TIMEOUT_S: Final = 5.0
"""Default bound on TCP connect, TLS and the HTTP upgrade when dialing."""
HANDSHAKE_TIMEOUT_S: Final = 5.0
"""Default bound on the membership handshake."""
SEND_TIMEOUT_S: Final = 10.0
"""Default bound on writing one frame; a connection stuck longer is dropped."""
BACKOFF_S_MIN: Final = 0.05
"""Default first reconnection delay."""
BACKOFF_S_MAX: Final = 2.0
"""Default cap of the reconnection delay."""
DISCONNECT_TIMEOUT_S: Final = 1.0
"""How long a closing handshake may take before the socket is closed anyway."""
MAX_HANDSHAKES_PER_ADDRESS: Final = 4
"""Inbound connections from one address (an IPv6 /64) still in their handshake; a newer one
evicts the oldest."""
MAX_INBOUND_PER_PEER: Final = 2
"""Authenticated inbound connections kept per peer: a newer one evicts the oldest beyond this
(room for a reconnection while a dead connection has not been noticed yet)."""


@attrs.frozen(kw_only=True)
class PeerStatistics:
    """Counters of one peer since the transport opened (see :meth:`WebSocketTransport.statistics`).

    Every frame ``send`` accepted for the peer ends up in exactly one of ``frames_sent``,
    ``dropped_not_connected`` (its connection was lost first) or ``queued_frames``.
    """

    url: str | None
    """Where the peer is dialed (``None`` while no URL is known: see
    :meth:`WebSocketTransport.update_members`)."""
    connected: bool
    """Whether the outbound connection is authenticated and open; ``send`` queues only then."""
    inbound_connections: int
    """Authenticated connections from the peer being read now."""
    queued_frames: int
    """Frames waiting in the peer's send queue."""
    queued_bytes: int
    """Bytes waiting in the peer's send queue."""
    frames_sent: int = 0
    """Frames written to the peer's connection."""
    bytes_sent: int = 0
    """Bytes of those frames."""
    messages_sent: int = 0
    """WebSocket messages those frames were written in: fewer than the frames when several
    queued frames were coalesced into one batch (see :doc:`wire`, "Batches")."""
    frames_received: int = 0
    """Valid frames received from the peer and delivered to the receive channel."""
    bytes_received: int = 0
    """Bytes of those frames."""
    dropped_not_connected: int = 0
    """Messages dropped because the peer was not connected (at ``send`` or while queued)."""
    dropped_queue_full: int = 0
    """Messages dropped because the peer's send queue was full (frames or bytes)."""
    dropped_too_large: int = 0
    """Messages dropped because their frame exceeded ``max_message_bytes``."""
    dropped_unencodable: int = 0
    """Messages dropped because a command is not wire-encodable (a bug upstream; logged)."""
    connects: int = 0
    """Outbound connections that completed the handshake."""
    connect_failures: int = 0
    """Outbound attempts that failed before the handshake (refused, unreachable, timeouts)."""
    handshake_failures: int = 0
    """Failed handshakes with this peer: outbound ones, and inbound ones claiming its id (an
    unauthenticated claim: this may be someone else misusing the id)."""
    decode_failures: int = 0
    """Invalid frames from this peer (each dropped the connection that carried it)."""
    last_failure: str | None = None
    """What went wrong last time a connection to the peer failed, for humans."""


@attrs.define
class PeerCounters:
    """The mutable counters behind :class:`PeerStatistics`."""

    frames_sent: int = 0
    bytes_sent: int = 0
    messages_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    dropped_not_connected: int = 0
    dropped_queue_full: int = 0
    dropped_too_large: int = 0
    dropped_unencodable: int = 0
    connects: int = 0
    connect_failures: int = 0
    handshake_failures: int = 0
    decode_failures: int = 0
    last_failure: str | None = None

    def freeze(self, **live: object) -> PeerStatistics:
        return PeerStatistics(**attrs.asdict(self), **live)  # type: ignore[arg-type]


@attrs.frozen(kw_only=True)
class TransportStatistics:
    """A snapshot returned by :meth:`WebSocketTransport.statistics`."""

    node_id: NodeId
    """This node."""
    peers: Mapping[NodeId, PeerStatistics]
    """Per-peer counters, of the current peers only (a removed member's go with it)."""
    open_connections: int
    """Inbound connections open now, authenticated or not (at most ``max_connections`` still
    in their handshake, plus 2 authenticated ones per peer)."""
    refused_connections: int = 0
    """Inbound connections closed at once because ``max_connections`` were open (no longer
    happens: the oldest pending connection is evicted instead; kept for compatibility)."""
    evicted_connections: int = 0
    """Inbound connections closed before completing their handshake to make room for a newer
    one (``max_connections`` of them were pending, or too many from one address)."""
    failed_connections: int = 0
    """Inbound connections ended by an unexpected exception (logged, rate-limited); the
    transport went on."""
    handshake_failures: int = 0
    """Failed handshakes, inbound (any claimed id, or none) and outbound."""
    decode_failures: int = 0
    """Inbound frames that failed validation, were too large, or came from another node than the
    authenticated peer; each dropped its connection."""
    dropped_unknown_peer: int = 0
    """Messages to a node that is not a peer (never was, or was removed by
    :meth:`WebSocketTransport.update_members`), or sent after the transport closed."""


@attrs.define
class Totals:
    """The transport-wide counters, shared by the server and every peer link, and the broadcast
    that wakes ``wait_statistics`` whenever a counter or a connection changes."""

    open_connections: int = 0
    refused_connections: int = 0
    handshake_failures: int = 0
    decode_failures: int = 0
    dropped_unknown_peer: int = 0
    changed: Broadcast = attrs.Factory(Broadcast)

    def handshake_failed(self, counters: PeerCounters | None, description: str) -> None:
        """Count a failed handshake (also against the peer's ``counters``, if known)."""
        self.handshake_failures += 1
        if counters is not None:
            counters.handshake_failures += 1
            counters.last_failure = description
        self.changed.notify()


@attrs.frozen(kw_only=True)
class Limits:
    """The bounds and timeouts of a transport (validated by ``open_websocket_transport``)."""

    max_message_bytes: int
    send_queue_size: int
    send_queue_bytes: int
    receive_queue_size: int
    max_connections: int
    connect_timeout_s: float
    handshake_timeout_s: float
    send_timeout_s: float
    backoff_s_min: float
    backoff_s_max: float
