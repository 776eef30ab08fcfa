"""WebSocket handshakes that fail at once when the other side hangs up first.

trio-websocket's ``wrap_client_stream`` waits for the HTTP upgrade answer and is never woken if
the server closes the TCP connection before answering (a proxy whose backend is down, a server
refusing over its connection limit): the caller would wait out its whole connect timeout.
:func:`wrap_client_stream_fast` watches the stream for end-of-stream during the handshake and
raises :class:`ClosedBeforeUpgrade` then. :func:`wrap_server_stream_fast` does the same on the
server side: trio-websocket closes the stream on an HTTP protocol error but leaves the caller
waiting for a request that will never come (holding a connection slot until its timeout).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio
from trio_websocket import (
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
    wrap_client_stream,
    wrap_server_stream,
)

T = TypeVar("T")


class ClosedBeforeUpgrade(HandshakeError):
    """The other side closed the connection (or sent something that is not an HTTP upgrade)
    before the WebSocket upgrade completed."""


class _WatchedStream(trio.abc.Stream):
    """Passes everything through; sets :attr:`ended` when the peer ends the stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self.ended = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended.set()
            raise
        if not data:
            self.ended.set()
        return data

    async def aclose(self) -> None:
        self.ended.set()
        await self._stream.aclose()


async def _upgrade_unless_hung_up(
    stream: trio.abc.Stream,
    upgrade: Callable[[trio.abc.Stream], Awaitable[T]],
    other_side: str,
) -> T:
    """Run ``upgrade`` on a watched ``stream``; raise :class:`ClosedBeforeUpgrade` as soon as
    ``other_side`` ends the stream first."""
    watched = _WatchedStream(stream)
    upgraded: list[T] = []
    async with trio.open_nursery() as race:

        async def handshake() -> None:
            upgraded.append(await upgrade(watched))
            race.cancel_scope.cancel()

        async def hang_up() -> None:
            await watched.ended.wait()
            race.cancel_scope.cancel()

        race.start_soon(handshake)
        race.start_soon(hang_up)
    if not upgraded:
        raise ClosedBeforeUpgrade(
            f"the {other_side} closed the connection before the WebSocket upgrade"
        )
    return upgraded[0]


async def wrap_client_stream_fast(
    nursery: trio.Nursery, stream: trio.abc.Stream, host: str, resource: str, **options: Any
) -> WebSocketConnection:
    """``trio_websocket.wrap_client_stream``, but raising :class:`ClosedBeforeUpgrade` as soon
    as the server ends the stream before the upgrade completes."""
    return await _upgrade_unless_hung_up(
        stream,
        lambda watched: wrap_client_stream(nursery, watched, host, resource, **options),  # type: ignore[arg-type]  # any trio Stream works
        "server",
    )


async def wrap_server_stream_fast(
    nursery: trio.Nursery, stream: trio.abc.Stream, **options: Any
) -> WebSocketRequest:
    """``trio_websocket.wrap_server_stream``, but raising :class:`ClosedBeforeUpgrade` as soon
    as the client ends the stream, or trio-websocket closes it (an HTTP protocol error), before
    a complete upgrade request arrived. Bound it with a timeout: a client that sends nothing
    is waited for."""
    return await _upgrade_unless_hung_up(
        stream, lambda watched: wrap_server_stream(nursery, watched, **options), "client"
    )
