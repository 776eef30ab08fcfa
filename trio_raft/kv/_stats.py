"""What a KV server has answered and refused: :meth:`KVServer.statistics
<trio_raft.kv.KVServer.statistics>`, and its rate-limited warnings about refused connections.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Final, final

import attrs
import trio

from .._logging import RateLimiter, log_limited
from .._types import NodeId

logger: Final = logging.getLogger("trio_raft.kv")

REJECTION_REPORT_S: Final = 60.0
"""A refused connection is logged at most once this often per (address, reason), with the
count of those not logged."""

REJECTION_REASONS: Final = (
    "busy", "bad_handshake", "wrong_path", "unauthenticated", "invalid_frame",
)  # fmt: skip
"""Why a server refuses or drops a client connection: ``busy`` (``max_connections`` are open,
503), ``bad_handshake`` (no TLS, HTTP or WebSocket upgrade within the handshake timeout, or
a broken one), ``wrong_path`` (404), ``unauthenticated`` (no ``hello`` with the token),
``invalid_frame`` (a frame that is too large or not CBOR: the connection is closed)."""


@final
@attrs.frozen
class KVServerStatistics:
    """A snapshot returned by :meth:`KVServer.statistics <trio_raft.kv.KVServer.statistics>`;
    counts run from the server's start."""

    requests: Mapping[tuple[str, str], int]
    """Requests answered, by ``(op, outcome)``: ``op`` is the request's op (``"put"``,
    ``"get"``, ``"call"``, ...; ``"invalid"`` for one that could not be decoded), ``outcome``
    is ``"ok"`` or the :class:`~trio_raft.kv.ErrorCode` of the answer (``"not_leader"`` is a
    redirect, ``"outcome_unknown"`` a write whose leader was lost, ``"unauthorized"``, ...),
    or ``"abandoned"``: the connection closed (the client left, or gave up and reconnected)
    or the server stopped before the answer was ready. The server sets no time limit of its
    own: a client's timeout shows here as ``abandoned`` if it closes the connection."""
    rejected_connections: Mapping[str, int]
    """Connections refused or dropped, by reason: ``busy`` (``max_connections`` are open: HTTP
    503), ``bad_handshake`` (no TLS, HTTP or WebSocket upgrade within the handshake timeout,
    or a broken one), ``wrong_path`` (404), ``unauthenticated`` (no ``hello`` with the token),
    ``invalid_frame`` (a message over the size limit, or not CBOR: the connection is closed).
    Each is also logged, at most once a minute per client address and reason."""
    connections: int
    """Client connections open now (those in their handshake included)."""


class ServerCounters:
    """A server's running counts and its refusal warnings."""

    def __init__(self, node_id: NodeId) -> None:
        self._node_id = node_id
        self.requests: Counter[tuple[str, str]] = Counter()
        self.rejected: Counter[str] = Counter()
        self._limiter = RateLimiter(REJECTION_REPORT_S)

    def reject(self, reason: str, host: str, remote: str, detail: str) -> None:
        """Count a refused connection from ``remote`` (``host`` is its address without the
        port: the rate limit's key) and log it, rate-limited."""
        self.rejected[reason] += 1
        log_limited(
            logger, self._limiter, (host, reason), trio.current_time(),
            f"{self._node_id}: refused a client connection from {remote}: {detail}",
            {"node": self._node_id, "event": "client_rejected", "remote": remote,
             "reason": reason},
        )  # fmt: skip

    def snapshot(self, connections: int) -> KVServerStatistics:
        """The counts now."""
        return KVServerStatistics(dict(self.requests), dict(self.rejected), connections)
