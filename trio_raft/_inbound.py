"""Guarding inbound connections on the peer and client ports (private).

Three pieces both servers share:

* :class:`Admission` decides which TCP connections may be open. A connection is *pending*
  from accept until it has proved who it is (the peer handshake; on the client port the HTTP
  upgrade and, with a token, the ``hello``), then *established*. Pending connections live in a
  bounded pool with a per-address bound; when either is full, the *oldest* pending connection
  (of that address, or of the address with the most) is evicted to make room, never the new
  one. Idle or slow handshakes are the attacker's cheapest way to hold slots, so they are the
  ones that go: a stranger who opens connections and sits on them can no longer keep a member
  or a client out, and one who keeps opening them must do so faster than a real handshake
  completes (milliseconds) and, beyond the per-address bound, from many addresses.
* :func:`remote_host` names the address a connection comes from (an IPv6 /64 counts as one).
* :class:`Barrier` logs an exception that escaped one connection's handler, rate-limited, so
  that a bug (or an input nobody foresaw) ends that connection, never the node.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import OrderedDict
from typing import Final, final

import attrs
import trio

BARRIER_LOG_INTERVAL_S: Final = 10.0
"""At most one log line per this many seconds per barrier; the others are counted."""


@final
@attrs.define(eq=False)
class Ticket:
    """One admitted connection. Run its handler inside :attr:`scope`: eviction cancels it."""

    address: str
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    pending: bool = True
    evicted: bool = False


@final
class Admission:
    """The admission policy of one server (see the module docstring).

    Args:
        max_pending: Most connections still in their handshake at once.
        max_pending_per_address: Most of those from one address.
        max_total: Most connections at once, pending and established (None: no bound beyond
            the pending one; the caller bounds established connections some other way).
    """

    def __init__(
        self, *, max_pending: int, max_pending_per_address: int, max_total: int | None = None
    ) -> None:
        assert max_pending >= 1 and max_pending_per_address >= 1
        self.max_pending = max_pending
        self.max_pending_per_address = max_pending_per_address
        self.max_total = max_total
        self._pending: dict[str, OrderedDict[int, Ticket]] = {}
        self.pending = 0
        """Connections admitted and still in their handshake."""
        self.established = 0
        """Connections admitted that completed it."""
        self.evicted = 0
        """Pending connections evicted so far to make room for newer ones."""

    def admit(self, address: str) -> Ticket | None:
        """Admit a new connection from ``address``, evicting a pending one if needed.

        Returns None (refuse it) only when ``max_total`` connections are established and none
        is pending.
        """
        if self.max_total is not None and self.established >= self.max_total:
            return None
        same = self._pending.get(address)
        if same is not None and len(same) >= self.max_pending_per_address:
            self._evict(same)
        full = self.pending >= self.max_pending or (
            self.max_total is not None and self.pending + self.established >= self.max_total
        )
        if full:
            self._evict(max(self._pending.values(), key=len))
        ticket = Ticket(address)
        self._pending.setdefault(address, OrderedDict())[id(ticket)] = ticket
        self.pending += 1
        return ticket

    def establish(self, ticket: Ticket) -> None:
        """``ticket``'s connection completed its handshake: it leaves the pending pool."""
        if ticket.pending and not ticket.evicted:
            self._forget(ticket)
            self.established += 1
        ticket.pending = False

    def release(self, ticket: Ticket) -> None:
        """``ticket``'s connection is closed (call it exactly once, in a ``finally``)."""
        if ticket.evicted:
            return
        if ticket.pending:
            self._forget(ticket)
        else:
            self.established -= 1

    def _evict(self, tickets: OrderedDict[int, Ticket]) -> None:
        _, oldest = next(iter(tickets.items()))
        self._forget(oldest)
        oldest.evicted = True
        oldest.scope.cancel()
        self.evicted += 1

    def _forget(self, ticket: Ticket) -> None:
        tickets = self._pending[ticket.address]
        del tickets[id(ticket)]
        if not tickets:
            del self._pending[ticket.address]
        self.pending -= 1


def remote_address(stream: trio.abc.Stream) -> str:
    """``host:port`` of the other end of ``stream``, for logs; never raises."""
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if not isinstance(inner, trio.SocketStream):
        return repr(inner)
    try:
        host, port, *_ = inner.socket.getpeername()
    except OSError:
        return "an unknown address"
    return f"{host}:{port}"


def remote_host(stream: trio.abc.Stream) -> str:
    """The address ``stream`` comes from, for admission and logs; never raises.

    IPv6 addresses are cut to their /64 prefix (one host usually owns a whole /64).
    """
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if not isinstance(inner, trio.SocketStream):
        return "local"
    try:
        host = str(inner.socket.getpeername()[0])
    except (OSError, IndexError):
        return "unknown"
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@final
class Barrier:
    """Logs exceptions that escaped a connection handler, at most one line per
    :data:`BARRIER_LOG_INTERVAL_S` (with the count of those not logged)."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._logger = logger
        self._what = what
        self._next_log = -float("inf")
        self._suppressed = 0
        self.count = 0
        """Exceptions caught so far."""

    def caught(self, group: BaseException) -> None:
        """Record one escaped exception (or exception group) and maybe log it."""
        self.count += 1
        now = trio.current_time()
        if now < self._next_log:
            self._suppressed += 1
            return
        self._next_log = now + BARRIER_LOG_INTERVAL_S
        suppressed = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        self._suppressed = 0
        self._logger.error(
            "%s failed unexpectedly and was closed; the node goes on%s",
            self._what,
            suppressed,
            exc_info=group,
        )
