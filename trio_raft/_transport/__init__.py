"""Network transports for real deployments: :func:`open_websocket_transport`."""

from __future__ import annotations

import math
import random
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import trio

from .._codec import MAX_ID_CHARS
from .._types import NodeId
from .._util import unwrap_single_exception_group
from ._auth import HANDSHAKE_MAX_BYTES, MIN_SECRET_BYTES
from ._stats import (
    BACKOFF_S_MAX,
    BACKOFF_S_MIN,
    CONNECT_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    RECEIVE_QUEUE_SIZE,
    SEND_QUEUE_BYTES,
    SEND_QUEUE_SIZE,
    SEND_TIMEOUT_S,
    Limits,
)
from ._stats import PeerStatistics as PeerStatistics
from ._stats import TransportStatistics as TransportStatistics
from ._websocket import WebSocketTransport as WebSocketTransport
from ._websocket import check_ids, check_url, default_max_connections

__all__ = [
    "PeerStatistics",
    "TransportStatistics",
    "WebSocketTransport",
    "open_websocket_transport",
]


@asynccontextmanager
async def open_websocket_transport(
    node_id: NodeId,
    peers: Mapping[NodeId, str | None],
    *,
    cluster_id: str,
    secret: bytes,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
    peer_ssl_context: ssl.SSLContext | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    send_queue_size: int = SEND_QUEUE_SIZE,
    send_queue_bytes: int = SEND_QUEUE_BYTES,
    receive_queue_size: int = RECEIVE_QUEUE_SIZE,
    max_connections: int | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
    send_timeout_s: float = SEND_TIMEOUT_S,
    backoff_s_min: float = BACKOFF_S_MIN,
    backoff_s_max: float = BACKOFF_S_MAX,
    rng: random.Random | None = None,
    dial_overrides: Mapping[NodeId, str] = {},
) -> AsyncIterator[WebSocketTransport]:
    """Connect this node to its peers over WebSockets for the duration of the ``async with``.

    The server is bound before the block starts (see :attr:`WebSocketTransport.port` and
    :attr:`~WebSocketTransport.url`); a task per peer keeps one authenticated outbound
    connection open, reconnecting with exponential backoff and jitter. Leaving the block closes
    every connection and stops every task; the receive channel then ends. Pass the transport to
    :func:`~trio_raft.open_node` inside the block::

        async with open_websocket_transport("n1", peers, cluster_id="c", secret=key) as t:
            async with trio_raft.open_node("n1", members, transport=t, ...) as node:
                ...

    Peers authenticate each other with ``secret`` (an HMAC challenge-response, see
    :doc:`wire`): connections from unknown ids, other clusters or without the secret are closed
    (code 1008) before any Raft message is read. The frames that follow are protected only by
    TLS: use ``wss://`` URLs (``ssl_context`` and ``peer_ssl_context``) off trusted networks.

    The peers can change while the transport runs: the node tells it the members of every new
    configuration (:meth:`WebSocketTransport.update_members`), and their addresses there are
    dialled unless ``dial_overrides`` says otherwise.

    Memory is bounded: per peer ``send_queue_bytes`` queued; ``receive_queue_size`` decoded
    messages; each of at most ``max_connections + 2 * len(peers)`` inbound connections may
    buffer one message of up to ``max_message_bytes`` (unauthenticated ones included, until the
    handshake timeout or until a newer one evicts them). No exception from one inbound
    connection ends the transport: it is logged (rate-limited) and closes that connection.

    Args:
        node_id: This node's id.
        peers: Every *other* member's id and URL (``ws://host:port/raft`` or ``wss://...``), or
            ``None`` if not known yet (see :meth:`WebSocketTransport.set_peer_url`): the peers
            until the first :meth:`~WebSocketTransport.update_members`, and the URLs dialled
            for members whose configuration address has none.
        cluster_id: Names the cluster; frames and handshakes of other clusters are refused.
        secret: The cluster's shared secret, at least 16 bytes (``secrets.token_bytes(32)``).
        host: Interface to listen on; also the host part of :attr:`~WebSocketTransport.url`.
        port: Port to listen on; 0 lets the kernel choose (read it from ``transport.port``).
        ssl_context: Serve TLS (``wss://``) with this server context.
        peer_ssl_context: Client context for ``wss://`` peers (default: the system's CAs).
        max_message_bytes: Largest frame sent or accepted; bigger inbound messages close the
            connection with 1009. Keep it above ``Config.max_bytes_per_append`` and
            ``Config.snapshot_chunk_bytes`` plus a few KiB: a bigger message is never delivered.
        send_queue_size: Frames queued per peer before ``send`` drops.
        send_queue_bytes: Bytes queued per peer before ``send`` drops (>= max_message_bytes).
        receive_queue_size: Decoded messages buffered for the node; when full, reading pauses.
        max_connections: Inbound connections still in their handshake (TLS, HTTP upgrade,
            membership proof) at once, at most 4 of them from one address (an IPv6 /64); when
            either bound is reached a newcomer evicts the oldest, so strangers sitting on
            connections cannot keep a member out. Authenticated connections do not count: each
            peer keeps at most 2 (the newest). Default ``2 * len(peers) + 8``, recomputed with
            the current number of peers whenever
            :meth:`~WebSocketTransport.update_members` changes them.
        connect_timeout_s: Bound on TCP connect, TLS and HTTP upgrade when dialing.
        handshake_timeout_s: Bound on the membership handshake (and, inbound, on TLS and the
            HTTP upgrade too).
        send_timeout_s: A frame not written within this closes the connection (dead peer).
        backoff_s_min: First reconnection delay; doubles per consecutive failure.
        backoff_s_max: Cap of the reconnection delay. Each delay is scaled by a jitter factor
            drawn uniformly from [0.5, 1).
        rng: Source of that jitter (``random.Random()`` if omitted). Handshake nonces never come
            from it: they come from ``secrets``.
        dial_overrides: URLs to dial some nodes at instead of the ones in ``peers`` or in their
            configuration address (say, through a proxy), for peers now or members added later
            by :meth:`~WebSocketTransport.update_members`. :meth:`~WebSocketTransport.set_peer_url`
            adds to them.

    Raises:
        ValueError: An invalid argument (the message says which).
        OSError: The listener could not be bound.
    """
    limits = _check_arguments(
        node_id,
        peers,
        dial_overrides=dial_overrides,
        cluster_id=cluster_id,
        secret=secret,
        max_message_bytes=max_message_bytes,
        send_queue_size=send_queue_size,
        send_queue_bytes=send_queue_bytes,
        receive_queue_size=receive_queue_size,
        max_connections=max_connections,
        connect_timeout_s=connect_timeout_s,
        handshake_timeout_s=handshake_timeout_s,
        send_timeout_s=send_timeout_s,
        backoff_s_min=backoff_s_min,
        backoff_s_max=backoff_s_max,
    )
    transport = WebSocketTransport(
        node_id,
        peers,
        cluster_id=cluster_id,
        secret=bytes(secret),
        peer_ssl_context=peer_ssl_context,
        limits=limits,
        rng=rng or random.Random(),
        dial_overrides=dial_overrides,
        auto_max_connections=max_connections is None,
    )
    with unwrap_single_exception_group():
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run, host, port, ssl_context)
            try:
                yield transport
            finally:
                nursery.cancel_scope.cancel()


def _check_arguments(
    node_id: NodeId,
    peers: Mapping[NodeId, str | None],
    *,
    dial_overrides: Mapping[NodeId, str],
    cluster_id: str,
    secret: bytes,
    max_connections: int | None,
    **numbers: float,
) -> Limits:
    ids = [("node_id", node_id), ("cluster_id", cluster_id)]
    for name, text in [*ids, *((f"peer id {peer!r}", peer) for peer in peers)]:
        if not isinstance(text, str) or not 1 <= len(text) <= MAX_ID_CHARS:
            raise ValueError(f"{name} must be a str of 1 to {MAX_ID_CHARS} characters")
    if node_id in peers:
        raise ValueError(f"peers lists the other members; it must not contain {node_id!r}")
    for url in peers.values():
        if url is not None:
            check_url(url)
    if not isinstance(dial_overrides, Mapping):
        raise ValueError(f"dial_overrides must map node ids to URLs, got {dial_overrides!r}")
    check_ids(dial_overrides)
    if node_id in dial_overrides:
        raise ValueError(f"dial_overrides names other nodes; it must not contain {node_id!r}")
    for url in dial_overrides.values():
        if not isinstance(url, str):
            raise ValueError(f"dial_overrides values must be ws:// or wss:// URLs, got {url!r}")
        check_url(url)
    if not isinstance(secret, (bytes, bytearray)) or len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"secret must be at least {MIN_SECRET_BYTES} bytes")
    if max_connections is None:
        max_connections = default_max_connections(len(peers))
    for name, value in [*numbers.items(), ("max_connections", max_connections)]:
        seconds = "s" in name.split("_")  # units last: connect_timeout_s, backoff_s_min
        if not 0 < value < math.inf or (not seconds and type(value) is not int):
            kind = "number" if seconds else "int"
            raise ValueError(f"{name} must be a positive finite {kind}, got {value!r}")
    if numbers["max_message_bytes"] < 2 * HANDSHAKE_MAX_BYTES:
        raise ValueError(f"max_message_bytes must be >= {2 * HANDSHAKE_MAX_BYTES}")
    if numbers["send_queue_bytes"] < numbers["max_message_bytes"]:
        raise ValueError("send_queue_bytes must be >= max_message_bytes")
    if numbers["backoff_s_min"] > numbers["backoff_s_max"]:
        raise ValueError("backoff_s_min must be <= backoff_s_max")
    return Limits(max_connections=max_connections, **numbers)  # type: ignore[arg-type]
