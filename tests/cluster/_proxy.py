"""A loopback TCP fault proxy with one listening port per directed link ``src → dst``.

A node dials each peer and sends only its own messages on that connection (inbound connections
are read-only, see :mod:`trio_raft._transport._websocket`), so the link ``src → dst`` carries
exactly the messages from ``src`` to ``dst``. Routing node ``src``'s dial of ``dst`` through
:meth:`FaultProxy.port` ``(src, dst)`` (the cluster file's ``dial`` table) makes every directed
link separately breakable::

    src ──dial──▶ proxy port (src, dst) ──forward bytes──▶ dst's real listen port

:meth:`FaultProxy.block` closes the link's open connections and holds new ones: accepted, never
forwarded, so the dialer's handshake times out as across a real partition. :meth:`FaultProxy.heal`
forwards again, the held connections included (their bytes were buffered, like TCP segments
retransmitted once a partition heals).

Whether the proxy closes a connection to a node that is down, or holds it until the node
listens, is a choice (``wait_for_target``): holding is the default, because the WebSocket
transport waits out its whole connect timeout when a connection is closed before the HTTP
upgrade completes (see ``test_proxy_dial.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import NoReturn, final

import attrs
import trio

HOST = "127.0.0.1"
CHUNK_BYTES = 1 << 16
TARGET_RETRY_S = 0.05


@attrs.define(eq=False)
class _Link:
    src: str
    dst: str
    target_port: int
    port: int = 0
    blocked: bool = False
    healed: trio.Event = attrs.Factory(trio.Event)
    connections: set[trio.CancelScope] = attrs.Factory(set)
    accepted: int = 0
    """Connections accepted from ``src``."""
    forwarded: int = 0
    """Connections forwarded to ``dst``."""
    held: int = 0
    """Connections held while blocked (forwarded at :meth:`FaultProxy.heal` if still open)."""


@final
class FaultProxy:
    """The proxy of a cluster; run it with :func:`open_fault_proxy`."""

    def __init__(self, targets: Mapping[str, int], *, wait_for_target: bool = True) -> None:
        """``targets``: each node's real peer port (where it listens). With
        ``wait_for_target``, a connection to a node that is not listening is held until it
        is (like a SYN retransmitted until the host is up); otherwise it is closed at once
        (like a proxy whose backend is down)."""
        self._wait_for_target = wait_for_target
        self._links = {
            (src, dst): _Link(src, dst, port)
            for src in targets
            for dst, port in targets.items()
            if src != dst
        }

    def port(self, src: str, dst: str) -> int:
        """The proxy port that forwards ``src``'s connections to ``dst``."""
        port = self._links[src, dst].port
        assert port, "the proxy is not running"
        return port

    def dial_table(self) -> dict[str, dict[str, str]]:
        """Each node's ``dial`` table: every peer through the proxy port of that link."""
        table: dict[str, dict[str, str]] = {}
        for (src, dst), link in self._links.items():
            table.setdefault(src, {})[dst] = f"ws://{HOST}:{link.port}/raft"
        return table

    def block(self, src: str, dst: str) -> None:
        """Cut ``src → dst``: close its connections; hold new ones until :meth:`heal`."""
        link = self._links[src, dst]
        if not link.blocked:
            link.blocked = True
            link.healed = trio.Event()
            for scope in link.connections:
                scope.cancel()

    def isolate(self, node: str, others: Iterable[str] | None = None) -> None:
        """Cut both directions between ``node`` and each of ``others`` (default: everyone)."""
        peers = {d for s, d in self._links if s == node} if others is None else set(others)
        for peer in peers:
            self.block(node, peer)
            self.block(peer, node)

    def heal(self) -> None:
        """Forward every link again, held connections included."""
        for link in self._links.values():
            if link.blocked:
                link.blocked = False
                link.healed.set()

    def blocked(self) -> set[tuple[str, str]]:
        """The links cut now."""
        return {key for key, link in self._links.items() if link.blocked}

    def statistics(self) -> dict[tuple[str, str], tuple[int, int, int]]:
        """``(accepted, forwarded, held)`` connection counts per link."""
        return {
            key: (link.accepted, link.forwarded, link.held) for key, link in self._links.items()
        }

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Listen on one port per link and forward, until cancelled."""
        async with trio.open_nursery() as nursery:
            for link in self._links.values():
                listeners = await trio.open_tcp_listeners(0, host=HOST)
                link.port = listeners[0].socket.getsockname()[1]
                await nursery.start(trio.serve_listeners, partial(self._handle, link), listeners)
            task_status.started()
            await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def _handle(self, link: _Link, downstream: trio.SocketStream) -> None:
        link.accepted += 1
        try:
            with trio.CancelScope() as scope:
                link.connections.add(scope)  # block() cancels it: the connection is closed
                try:
                    upstream = await self._connect(link)
                    if upstream is None:
                        return
                    link.forwarded += 1
                    async with upstream, trio.open_nursery() as nursery:
                        cancel = nursery.cancel_scope.cancel
                        nursery.start_soon(_pump, downstream, upstream, cancel)
                        nursery.start_soon(_pump, upstream, downstream, cancel)
                finally:
                    link.connections.discard(scope)
        finally:
            await trio.aclose_forcefully(downstream)

    async def _connect(self, link: _Link) -> trio.SocketStream | None:
        """Connect to ``dst`` once the link is not blocked (and, if ``wait_for_target``, once
        ``dst`` listens); ``None``: ``dst`` is down, close the connection."""
        held = False
        while True:
            if link.blocked:
                if not held:
                    held = True
                    link.held += 1
                await link.healed.wait()
                continue
            try:
                return await trio.open_tcp_stream(HOST, link.target_port)
            except OSError:
                if not self._wait_for_target:
                    return None
            await trio.sleep(TARGET_RETRY_S)


async def _pump(
    source: trio.SocketStream, sink: trio.SocketStream, cancel: Callable[[], object]
) -> None:
    """Copy ``source`` to ``sink``; pass on the end of stream; cancel both ways on an error."""
    try:
        while data := await source.receive_some(CHUNK_BYTES):
            await sink.send_all(data)
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        cancel()


@asynccontextmanager
async def open_fault_proxy(
    targets: Mapping[str, int], *, wait_for_target: bool = True
) -> AsyncIterator[FaultProxy]:
    """Run a :class:`FaultProxy` for the ``async with`` block (arguments: see the class)."""
    proxy = FaultProxy(targets, wait_for_target=wait_for_target)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
