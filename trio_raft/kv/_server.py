"""Serving the KV service: :func:`serve_kv`, one WebSocket endpoint per node.

::

    serve_kv ─ nursery
      └── serve_websocket (trio-websocket): one task per connection (at most max_connections)
            └── _Connection.run: reads requests, in order
                  └── nursery: one task per request in flight (at most max_concurrent_requests;
                               beyond that the connection is not read: TCP back-pressure)

Writes go through :meth:`Node.propose <trio_raft.Node.propose>`, linearizable reads through
:meth:`Node.read <trio_raft.Node.read>` (ReadIndex), stale reads straight to the local state
machine. The node's errors become error codes (see :mod:`trio_raft.kv._protocol`).
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Mapping
from functools import partial
from ssl import SSLContext
from typing import Final, NoReturn, final

import trio
from trio_websocket import (
    ConnectionClosed,
    Endpoint,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
)

from .._errors import (
    LeadershipLostError,
    NodeClosedError,
    NotLeaderError,
    ProposalDroppedError,
)
from .._node import Node
from .._status import Status
from .._types import NodeId
from ._protocol import (
    CLOSE_POLICY_VIOLATION,
    MAX_REQUEST_BYTES,
    PATH,
    PROTOCOL_VERSION,
    BadRequest,
    Cas,
    Consistency,
    Delete,
    ErrorCode,
    Failure,
    FrameError,
    Get,
    Hello,
    ListKeys,
    NodeStatus,
    Ok,
    OpenSession,
    Put,
    Request,
    Response,
    SessionExpiredError,
    decode_request,
    encode_response,
)
from ._state_machine import KVStateMachine


def status_to_wire(status: Status) -> dict[str, object]:
    """A node's :class:`~trio_raft.Status` as plain CBOR-friendly values."""
    return {
        "node": status.node_id,
        "role": status.role.value,
        "term": status.term,
        "leader": status.leader_id,
        "commit": status.commit_index,
        "applied": status.last_applied,
        "last_index": status.last_log_index,
        "last_term": status.last_log_term,
        "log_start": status.log_start_index,
        "snapshot": status.snapshot_index,
        "followers": {
            peer: {"match": f.match_index, "next": f.next_index, "probing": f.probing}
            for peer, f in sorted(status.followers.items())
        },
    }


DEFAULT_MAX_CONNECTIONS: Final = 1024
"""Connections a server accepts at once; more are refused with HTTP 503 (clients move on)."""
DEFAULT_MAX_CONCURRENT_REQUESTS: Final = 64
"""Requests one connection may have in flight; past it the server stops reading it."""
HELLO_TIMEOUT_S: Final = 10.0
"""With a token configured, a connection must authenticate within this time or be closed."""
HANDSHAKE_TIMEOUT_S: Final = 10.0
"""A WebSocket opening handshake that takes longer is dropped."""
CLOSE_TIMEOUT_S: Final = 2.0
"""How long the server waits for a client to complete a closing handshake."""


@final
class KVServer:
    """A running KV endpoint, as returned by ``await nursery.start(serve_kv, ...)``.

    Do not instantiate it directly.
    """

    def __init__(
        self,
        node: Node,
        state_machine: KVStateMachine,
        leader_urls: Mapping[NodeId, str],
        token: str | None,
        max_connections: int,
        max_concurrent_requests: int,
    ) -> None:
        self._node = node
        self._sm = state_machine
        self._leader_urls = leader_urls
        self._token = None if token is None else token.encode()
        self._max_connections = max_connections
        self._max_concurrent = max_concurrent_requests
        self._connections = 0
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The TCP port the server listens on (the one the OS chose, if started with port 0;
        with ``host=None`` and port 0, each address family may get its own: this is the
        first)."""
        assert self._port is not None, "serve_kv sets the port before returning the server"
        return self._port

    @property
    def connections(self) -> int:
        """How many client connections are open right now."""
        return self._connections

    async def _handle(self, request: WebSocketRequest) -> None:
        if request.path != PATH:
            await request.reject(404, body=f"the KV service is at {PATH}".encode())
            return
        if self._connections >= self._max_connections:
            await request.reject(503, body=b"too many connections; retry later or elsewhere")
            return
        self._connections += 1
        try:
            ws = await request.accept()
            await _Connection(self, ws).run()
        finally:
            self._connections -= 1

    def _authentic(self, request: Request) -> bool:
        if self._token is None:
            return True
        if not isinstance(request, Hello) or request.token is None:
            return False
        return hmac.compare_digest(request.token.encode(), self._token)

    async def _answer(self, rid: int, request: Request) -> Response:
        """Execute one request; every outcome becomes a response."""
        try:
            result = await self._execute(request)
        except NotLeaderError as exc:
            leader = exc.leader_id
            url = (
                None if leader is None or leader == self._node.id else self._leader_urls.get(leader)
            )
            return Failure(rid, ErrorCode.NOT_LEADER, str(exc), url)
        except LeadershipLostError as exc:
            return Failure(rid, ErrorCode.OUTCOME_UNKNOWN, f"{exc}; retry with the same seq")
        except ProposalDroppedError as exc:
            return Failure(rid, ErrorCode.DROPPED, str(exc))
        except NodeClosedError as exc:
            return Failure(rid, ErrorCode.UNAVAILABLE, str(exc))
        except SessionExpiredError as exc:
            return Failure(rid, ErrorCode.SESSION_EXPIRED, str(exc))
        except ValueError as exc:  # the state machine refused it (StaleSequenceError included)
            return Failure(rid, ErrorCode.BAD_REQUEST, str(exc))
        except Exception as exc:  # a bug: tell the client rather than kill the server
            return Failure(rid, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        return Ok(rid, result)

    async def _execute(self, request: Request) -> object:
        propose = self._node.propose
        match request:
            case Hello():
                await trio.lowlevel.checkpoint()
                return {"v": PROTOCOL_VERSION, "node": self._node.id}
            case Get(key=key, consistency=consistency):
                return await self._read(("get", key), consistency)
            case ListKeys(prefix=prefix, limit=limit, start_after=after, consistency=consistency):
                return await self._read(("list", prefix, limit, after), consistency)
            case OpenSession(session=session):
                return await propose(("open", session))
            case Put(session=session, seq=seq, key=key, value=value):
                return await propose(("put", session, seq, key, value))
            case Delete(session=session, seq=seq, key=key):
                return await propose(("delete", session, seq, key))
            case Cas(session=session, seq=seq, key=key, expected=expected, new=new):
                return await propose(("cas", session, seq, key, expected, new))
            case NodeStatus():
                await trio.lowlevel.checkpoint()
                return status_to_wire(self._node.status)

    async def _read(self, query: tuple[object, ...], consistency: Consistency) -> object:
        if consistency == "stale":
            await trio.lowlevel.checkpoint()
            return self._sm.query(query)
        return await self._node.read(query)


class _Connection:
    """One client connection: authenticate, then read requests and answer each in a task."""

    def __init__(self, server: KVServer, ws: WebSocketConnection) -> None:
        self._server = server
        self._ws = ws
        self._slots = trio.Semaphore(server._max_concurrent)

    async def run(self) -> None:
        if not await self._authenticate():
            return
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    data = await self._ws.get_message()
                except ConnectionClosed:
                    break
                try:
                    rid, request = decode_request(data)
                except FrameError as exc:
                    await self._close(exc.code, str(exc))
                    break
                except BadRequest as exc:
                    await self._send(Failure(exc.request_id, ErrorCode.BAD_REQUEST, str(exc)))
                    continue
                await self._slots.acquire()
                nursery.start_soon(self._serve, rid, request)
            nursery.cancel_scope.cancel()  # nobody is left to answer

    async def _authenticate(self) -> bool:
        """With a token configured, the first request must be a ``hello`` carrying it."""
        server = self._server
        if server._token is None:
            return True
        with trio.move_on_after(HELLO_TIMEOUT_S):
            try:
                data = await self._ws.get_message()
            except ConnectionClosed:
                return False
            try:
                rid, request = decode_request(data)
            except FrameError as exc:
                await self._close(exc.code, str(exc))
                return False
            except BadRequest as exc:
                rid = exc.request_id
            else:
                if server._authentic(request):
                    await self._send(await server._answer(rid, request))
                    return True
            reason = "the first request must be a hello with the right token"
            await self._send(Failure(rid, ErrorCode.UNAUTHORIZED, reason))
            await self._close(CLOSE_POLICY_VIOLATION, "unauthorized")
            return False
        await self._close(CLOSE_POLICY_VIOLATION, f"no hello within {HELLO_TIMEOUT_S} s")
        return False

    async def _serve(self, rid: int, request: Request) -> None:
        try:
            await self._send(await self._server._answer(rid, request))
        finally:
            self._slots.release()

    async def _send(self, response: Response) -> None:
        with contextlib.suppress(ConnectionClosed):  # the client left; the reader notices
            await self._ws.send_message(encode_response(response))

    async def _close(self, code: int, reason: str) -> None:
        # A close reason must fit a control frame (123 bytes).
        short = reason.encode()[:120].decode(errors="ignore")
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await self._ws.aclose(code, short)


async def serve_kv(
    node: Node,
    *,
    host: str | None,
    port: int,
    leader_urls: Mapping[NodeId, str],
    token: str | None = None,
    ssl_context: SSLContext | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
    task_status: trio.TaskStatus[KVServer] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve the KV service of ``node`` over WebSocket at ``ws[s]://host:port/kv``, forever.

    Supports ``server = await nursery.start(serve_kv, node, ...)``, which returns once the
    listener is bound (so a bind error reaches the caller) with a :class:`KVServer` (its
    :attr:`~KVServer.port` is the bound port). Run it next to the node, e.g. in the node's
    ``async with`` block: a node that leads but serves no clients is useless, and a server whose
    node stopped answers ``unavailable``. Cancel it to stop: every connection is closed and
    requests in flight are abandoned (a write may still be applied; its client retries it).

    Limits (each documented in its constant): at most ``max_connections`` connections (more are
    refused with HTTP 503), ``max_concurrent_requests`` requests in flight per connection
    (beyond that the server stops reading the connection), messages of at most
    512 KiB (a bigger one closes the connection with 1009), a hello within 10 s when a token
    is configured. Operations have
    no server-side timeout: clients set theirs, as trio's timeout philosophy wants.

    Args:
        node: A node running a :class:`KVStateMachine`.
        host: The interface to bind (``None``: all of them).
        port: The port to bind (0: any free one, see :attr:`KVServer.port`).
        leader_urls: Each node's client URL (``ws://host:port/kv``), sent to clients that reach
            a follower so they can follow to the leader. Read at every redirect, so it may be
            filled in after the servers have bound their ports. A leader without a URL gets the
            client a ``not_leader`` without a hint (it then tries its other URLs).
        token: If set, a client's first request must be a ``hello`` carrying this token
            (compared in constant time); otherwise the server answers ``unauthorized`` and
            closes the connection with 1008 (policy violation). Use TLS (``ssl_context``) on
            untrusted networks, or the token travels in clear text.
        ssl_context: Serve ``wss://`` with this context.
        max_connections: Bound of concurrent connections.
        max_concurrent_requests: Bound of requests in flight per connection.
        task_status: For :meth:`trio.Nursery.start`.

    Raises:
        TypeError: ``node`` does not run a :class:`KVStateMachine`.
        ValueError: a bound is < 1.
        OSError: the address cannot be bound.
    """
    state_machine = node.state_machine
    if not isinstance(state_machine, KVStateMachine):
        raise TypeError(
            f"serve_kv needs a node running a KVStateMachine, got {type(state_machine).__name__}"
        )
    if max_connections < 1 or max_concurrent_requests < 1:
        raise ValueError(
            "max_connections and max_concurrent_requests must be >= 1, got "
            f"{max_connections} and {max_concurrent_requests}"
        )
    server = KVServer(
        node, state_machine, leader_urls, token, max_connections, max_concurrent_requests
    )
    async with trio.open_nursery() as nursery:
        ws_server = await nursery.start(
            partial(
                serve_websocket,
                server._handle,
                host,
                port,
                ssl_context,
                max_message_size=MAX_REQUEST_BYTES,
                connect_timeout=HANDSHAKE_TIMEOUT_S,
                disconnect_timeout=CLOSE_TIMEOUT_S,
            )
        )
        # With host=None there is one listener per address family (and, with port 0, maybe
        # one port each): report the first.
        server._port = next(e.port for e in ws_server.listeners if isinstance(e, Endpoint))
        task_status.started(server)
        await trio.sleep_forever()
    raise AssertionError("unreachable: serve_kv runs until cancelled")
