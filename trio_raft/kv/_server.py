"""Serving the KV service: :func:`serve_kv`, one WebSocket endpoint per node.

::

    serve_kv ─ nursery
      └── trio.serve_listeners: one task per TCP connection (admitted by _inbound.Admission:
            │                   at most max_connections, pending ones evicted oldest first)
            ├── TLS, HTTP upgrade (within HANDSHAKE_TIMEOUT_S), then the hello if a token is set
            └── _Connection.run: reads requests, in order
                  └── nursery: one task per request in flight (at most max_concurrent_requests;
                               beyond that the connection is not read: TCP back-pressure);
                               replies wait for room in MAX_OUTPUT_BYTES, or the connection
                               is closed as a slow reader

Writes go through :meth:`Node.propose <trio_raft.Node.propose>`, linearizable reads through
:meth:`Node.read <trio_raft.Node.read>` (ReadIndex), stale reads straight to the local state
machine, membership ops through the node's membership methods (:meth:`Node.add_learner
<trio_raft.Node.add_learner>` ...). The node's errors become error codes (see
:mod:`trio_raft.kv._protocol`).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from ssl import SSLContext
from typing import Final, NoReturn, final

import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
)

from .._abc import StateMachine
from .._errors import (
    InvalidMembershipError,
    LeadershipLostError,
    LeadershipTransferError,
    LearnerNotCaughtUpError,
    MembershipChangeInProgressError,
    NodeClosedError,
    NoSpaceError,
    NotLeaderError,
    ProposalDroppedError,
    QuorumUnavailableError,
    RaftError,
)
from .._inbound import Admission, Barrier, Ticket, remote_address, remote_host
from .._node import Node, _check_command
from .._status import Status
from .._sync import Broadcast
from .._types import Membership, NodeId, Role
from .._ws import wrap_server_stream_fast
from ._backup import Downloads
from ._protocol import (
    _OP_NAMES,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    MAX_REQUEST_BYTES,
    PATH,
    PROTOCOL_VERSION,
    AddLearner,
    BadRequest,
    Call,
    Cas,
    Consistency,
    Delete,
    Demote,
    ErrorCode,
    Failure,
    FetchSnapshot,
    FrameError,
    Get,
    Hello,
    ListKeys,
    Members,
    MembershipChange,
    NodeStatus,
    Ok,
    OpenSession,
    Promote,
    Put,
    Query,
    Remove,
    Request,
    Response,
    SessionExpiredError,
    TransferLeader,
    client_url,
    decode_request,
    encode_response,
)
from ._stats import KVServerStatistics, ServerCounters

logger: Final = logging.getLogger("trio_raft.kv")

_BUSY: Final = b"too many connections; retry later or elsewhere"
_NETWORK_ERRORS: Final = (
    ConnectionClosed,
    HandshakeError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


def status_to_wire(status: Status) -> dict[str, object]:
    """A node's :class:`~trio_raft.Status` as plain CBOR-friendly values.

    A follower that is not a voter of its configuration (a learner, a joining node that has
    none yet, a removed node) has the role ``"learner"``.
    """
    m = status.membership
    voters = frozenset() if m is None else m.all_voters
    role = status.role.value
    if status.role is Role.FOLLOWER and status.node_id not in voters:
        role = "learner"
    return {
        "node": status.node_id,
        "role": role,
        "term": status.term,
        "leader": status.leader_id,
        "commit": status.commit_index,
        "applied": status.last_applied,
        "last_index": status.last_log_index,
        "last_term": status.last_log_term,
        "compacted": status.compacted_index,
        "log_start": status.compacted_index,  # the same, under its old name (compatibility)
        "voted_for": status.voted_for,
        "snapshot": status.snapshot_index,
        "no_space": status.no_space,
        "followers": {
            peer: {
                "match": f.match_index,
                "next": f.next_index,
                "probing": f.probing,
                "voter": peer in voters,
            }
            for peer, f in sorted(status.followers.items())
        },
        "voters": [] if m is None else sorted(m.voters),
        "learners": [] if m is None else sorted(m.learners),
        "outgoing": [] if m is None else sorted(m.outgoing),
        "config_index": status.membership_index,
        "config_committed": status.membership_committed,
    }


def membership_to_wire(
    membership: Membership, index: int, committed: bool, leader: NodeId | None
) -> dict[str, object]:
    """A configuration as the membership ops answer it: ``index``, ``committed``, ``leader``,
    ``voters`` and ``learners`` (each a map from id to address) and ``outgoing`` (ids)."""
    addresses = membership.addresses
    return {
        "index": index,
        "committed": committed,
        "leader": leader,
        "voters": {v: addresses[v] for v in sorted(membership.voters)},
        "learners": {v: addresses[v] for v in sorted(membership.learners)},
        "outgoing": sorted(membership.outgoing),
    }


DEFAULT_MAX_CONNECTIONS: Final = 1024
"""Connections a server keeps at once, those still in their handshake included. When it is
full, the oldest connection still in its handshake is closed to make room; if every one is
established, the new one is refused with HTTP 503 (clients move on)."""
DEFAULT_MAX_CONCURRENT_REQUESTS: Final = 64
"""Requests one connection may have in flight; past it the server stops reading it."""
MAX_PENDING_PER_ADDRESS: Final = 64
"""Connections from one address (an IPv6 /64) still in their handshake; a newer one evicts
the oldest."""
MAX_REFUSING: Final = 16
"""Connections being refused with 503 at once, beyond ``max_connections``; more are closed
without an answer."""
HELLO_TIMEOUT_S: Final = 10.0
"""With a token configured, a connection must authenticate within this time or be closed."""
HANDSHAKE_TIMEOUT_S: Final = 5.0
"""TLS and the WebSocket opening handshake (HTTP upgrade) must complete within this time."""
CLOSE_TIMEOUT_S: Final = 2.0
"""How long the server waits for a client to complete a closing handshake."""
MAX_OUTPUT_BYTES: Final = 1024 * 1024
"""Encoded replies a connection may have waiting to be written; further replies wait."""
SLOW_READER_TIMEOUT_S: Final = 10.0
"""A reply that cannot be written within this time (the client does not read) closes the
connection with 1008."""


@final
class KVServer:
    """A running KV endpoint, as returned by ``await nursery.start(serve_kv, ...)``.

    Do not instantiate it directly.
    """

    def __init__(
        self,
        node: Node,
        state_machine: StateMachine,
        leader_urls: Mapping[NodeId, str],
        token: str | None,
        admin_token: str | None,
        max_connections: int,
        max_concurrent_requests: int,
        cluster_id: str | None = None,
    ) -> None:
        self._node = node
        self._cluster_id = cluster_id
        self._sm = state_machine
        self._leader_urls = leader_urls
        self._token = None if token is None else token.encode()
        self._admin_token = None if admin_token is None else admin_token.encode()
        self._max_concurrent = max_concurrent_requests
        self._admission = Admission(
            max_pending=max_connections,
            max_pending_per_address=MAX_PENDING_PER_ADDRESS,
            max_total=max_connections,
        )
        self._refusing = 0
        self._barrier = Barrier(logger, f"{node.id}: a KV client connection")
        self._port: int | None = None
        self._counters = ServerCounters(node.id)

    def statistics(self) -> KVServerStatistics:
        """What this server has answered (requests by op and outcome) and refused
        (connections by reason) since it started; cheap, computed on access."""
        return self._counters.snapshot(self.connections)

    @property
    def port(self) -> int:
        """The TCP port the server listens on (the one the OS chose, if started with port 0;
        with ``host=None`` and port 0, each address family may get its own: this is the
        first)."""
        assert self._port is not None, "serve_kv sets the port before returning the server"
        return self._port

    @property
    def connections(self) -> int:
        """How many client connections are open right now, those still in their handshake
        included (at most ``max_connections``)."""
        return self._admission.pending + self._admission.established

    @property
    def max_connections(self) -> int:
        """The bound on :attr:`connections`."""
        total = self._admission.max_total
        assert total is not None
        return total

    @property
    def evicted_connections(self) -> int:
        """Connections closed before completing their handshake to make room for newer ones."""
        return self._admission.evicted

    @property
    def failed_connections(self) -> int:
        """Connections ended by an unexpected exception (logged, rate-limited); the server
        went on."""
        return self._barrier.count

    async def _handle_stream(self, stream: trio.abc.Stream) -> None:
        """One TCP connection, from accept to close; nothing it raises ends the server."""
        ticket = self._admission.admit(remote_host(stream))
        try:
            if ticket is None:
                await self._refuse(stream)
                return
            try:
                with ticket.scope:
                    await self._run_stream(stream, ticket)
            except* Exception as group:  # the barrier: Cancelled and KeyboardInterrupt pass
                self._barrier.caught(group)
            finally:
                self._admission.release(ticket)
        finally:
            await trio.aclose_forcefully(stream)

    async def _refuse(self, stream: trio.abc.Stream) -> None:
        """Over ``max_connections`` with none to evict: answer 503, if few are being refused."""
        self._counters.reject(
            "busy", remote_host(stream), remote_address(stream),
            f"{self.max_connections} connections are open (max_connections)",
        )  # fmt: skip
        if self._refusing >= MAX_REFUSING:
            return
        self._refusing += 1
        try:
            with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
                async with trio.open_nursery() as nursery:
                    request = await self._upgrade_request(nursery, stream)
                    await request.reject(503, body=_BUSY)
                    nursery.cancel_scope.cancel()
        except Exception:  # a client that fails while refused: nothing to do
            pass
        finally:
            self._refusing -= 1

    async def _upgrade_request(
        self, nursery: trio.Nursery, stream: trio.abc.Stream
    ) -> WebSocketRequest:
        if isinstance(stream, trio.SSLStream):
            await stream.do_handshake()
        return await wrap_server_stream_fast(
            nursery, stream, message_queue_size=1, max_message_size=MAX_REQUEST_BYTES
        )

    async def _run_stream(self, stream: trio.abc.Stream, ticket: Ticket) -> None:
        host, remote = remote_host(stream), remote_address(stream)
        rejection: tuple[str, str] | None = None
        async with trio.open_nursery() as nursery:
            ws = None
            with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
                try:
                    request = await self._upgrade_request(nursery, stream)
                    if request.path != PATH:
                        rejection = "wrong_path", f"path {request.path[:100]!r}, not {PATH}"
                        await request.reject(404, body=f"the KV service is at {PATH}".encode())
                    else:
                        ws = await request.accept()
                except _NETWORK_ERRORS as exc:
                    # The client left or spoke no HTTP (or no TLS): nothing to answer.
                    rejection = "bad_handshake", f"{type(exc).__name__}: {exc}"
            if ws is None:
                if rejection is None:
                    rejection = "bad_handshake", f"no upgrade within {HANDSHAKE_TIMEOUT_S} s"
                self._counters.reject(rejection[0], host, remote, rejection[1])
                nursery.cancel_scope.cancel()
                return
            connection = _Connection(self, ws, (host, remote))
            try:
                if await connection.authenticate():
                    self._admission.establish(ticket)
                    await connection.run()
            except Exception:
                await connection.close(CLOSE_INTERNAL_ERROR, "internal error")
                raise
            finally:
                nursery.cancel_scope.cancel()

    def _authentic(self, request: Request) -> bool:
        """With a token configured: whether ``request`` is a hello with it (or with the admin
        token, which also grants everything the token does)."""
        if self._token is None:
            return True
        if not isinstance(request, Hello) or request.token is None:
            return False
        return _matches(request.token, self._token) or _matches(request.token, self._admin_token)

    def _admin(self, hello: Hello) -> bool:
        """Whether ``hello`` grants the membership ops: it carries the admin token if one is
        configured, else the token if one is; with neither, anyone may."""
        secret = self._admin_token if self._admin_token is not None else self._token
        return secret is None or _matches(hello.token, secret)

    def _leader_url(self, leader: NodeId | None) -> str | None:
        """Where clients reach ``leader``: ``leader_urls``, else the ``"client"`` URL of its
        address in the configuration (a node that joined later)."""
        if leader is None or leader == self._node.id:
            return None
        url = self._leader_urls.get(leader)
        if url is None:
            membership = self._node.membership
            if membership is not None:
                url = client_url(membership.addresses.get(leader))
        return url

    async def _answer(self, rid: int, request: Request) -> Response:
        """Execute one request; every outcome becomes a response."""
        try:
            result = await self._execute(request)
        except NotLeaderError as exc:
            return Failure(rid, ErrorCode.NOT_LEADER, str(exc), self._leader_url(exc.leader_id))
        except LeadershipLostError as exc:
            if isinstance(request, MembershipChange):
                advice = "retrying is safe: membership operations are idempotent"
            else:
                advice = "retry with the same seq"
            return Failure(rid, ErrorCode.OUTCOME_UNKNOWN, f"{exc}; {advice}")
        except NoSpaceError as exc:
            return Failure(rid, ErrorCode.NO_SPACE, str(exc))
        except ProposalDroppedError as exc:
            return Failure(rid, ErrorCode.DROPPED, str(exc))
        except NodeClosedError as exc:
            return Failure(rid, ErrorCode.UNAVAILABLE, str(exc))
        except SessionExpiredError as exc:
            return Failure(rid, ErrorCode.SESSION_EXPIRED, str(exc))
        except MembershipChangeInProgressError as exc:
            return Failure(rid, ErrorCode.CHANGE_IN_PROGRESS, str(exc))
        except InvalidMembershipError as exc:  # a ValueError: before the clause below
            return Failure(rid, ErrorCode.INVALID_MEMBERSHIP, str(exc))
        except LearnerNotCaughtUpError as exc:
            return Failure(rid, ErrorCode.NOT_CAUGHT_UP, str(exc))
        except QuorumUnavailableError as exc:
            return Failure(rid, ErrorCode.QUORUM_UNAVAILABLE, str(exc))
        except LeadershipTransferError as exc:
            return Failure(rid, ErrorCode.TRANSFER_FAILED, str(exc))
        except _CommandFailed as exc:
            return Failure(rid, ErrorCode.COMMAND_FAILED, str(exc)[:MAX_ERROR_CHARS])
        except ValueError as exc:  # the state machine refused it (StaleSequenceError included)
            return Failure(rid, ErrorCode.BAD_REQUEST, str(exc))
        except Exception as exc:  # a bug: tell the client rather than kill the server
            return Failure(rid, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        return Ok(rid, result)

    async def _execute(self, request: Request) -> object:
        node = self._node
        propose = node.propose
        match request:
            case Hello():
                await trio.lowlevel.checkpoint()
                return {"v": PROTOCOL_VERSION, "node": node.id}
            case Get(key=key, consistency=consistency):
                return await self._read(("get", key), consistency)
            case ListKeys(prefix=prefix, limit=limit, start_after=after, consistency=consistency):
                return await self._read(("list", prefix, limit, after), consistency)
            case OpenSession(session=session):
                return await propose(("open", session))
            case Put(session=session, seq=seq, key=key, value=value):
                return await propose(("put", session, seq, key, value))
            case Delete(session=session, seq=seq, key=key):
                return await propose(("delete", session, seq, key), frees_space=True)
            case Cas(session=session, seq=seq, key=key, expected=expected, new=new):
                return await propose(("cas", session, seq, key, expected, new))
            case Call(command=command):
                return await self._call(command)
            case Query(query=query, consistency=consistency):
                return await self._read(query, consistency)
            case NodeStatus():
                await trio.lowlevel.checkpoint()
                return status_to_wire(node.status)
            case Members():
                await trio.lowlevel.checkpoint()
                status = node.status
                if status.role is not Role.LEADER:
                    raise NotLeaderError(node.id, status.leader_id)
                return self._membership()
            case AddLearner(node=member, peer=peer, client=client):
                await node.add_learner(member, {"peer": peer, "client": client})
                return self._membership()
            case Promote(node=member, catch_up_timeout_s=timeout):
                await node.promote(member, catch_up_timeout_s=timeout)
                return self._membership()
            case Demote(node=member):
                await node.demote(member)
                return self._membership()
            case Remove(node=member):
                await node.remove(member)
                return self._membership()
            case TransferLeader(to=target):
                return {"leader": await node.transfer_leadership(target)}
            case FetchSnapshot():  # pragma: no cover
                raise AssertionError("a snapshot request is answered by its connection")

    async def _call(self, command: object) -> object:
        """Propose a ``call``'s command; an exception of its ``apply`` becomes
        :class:`_CommandFailed` (the node's own refusals pass through as they are)."""
        node = self._node
        # Checked and encoded once here; the node takes the encoding as it is.
        encoded = _check_command(command, node._state.config.max_command_bytes)
        try:
            return await node.propose(encoded)
        except (RaftError, trio.Cancelled):
            raise
        except Exception as exc:
            raise _CommandFailed(f"{type(exc).__name__}: {exc}") from exc

    def _membership(self) -> dict[str, object]:
        """The configuration in force here, as the membership ops answer it (after a change
        returned, that is the committed one, or a later one)."""
        status = self._node.status
        assert status.membership is not None, "a leader, or one that was, has a configuration"
        return membership_to_wire(
            status.membership,
            status.membership_index,
            status.membership_committed,
            status.leader_id,
        )

    async def _read(self, query: object, consistency: Consistency) -> object:
        if consistency == "stale":
            await trio.lowlevel.checkpoint()
            return self._sm.query(query)
        return await self._node.read(query)


MAX_ERROR_CHARS = 2000
"""A ``command_failed`` message carries at most this much of the exception's text."""


class _CommandFailed(Exception):
    """A ``call``'s command was applied and the state machine's ``apply`` raised."""


class _Connection:
    """One client connection: authenticate, then read requests and answer each in a task.

    Replies are written in the order they are ready; at most :data:`MAX_OUTPUT_BYTES` of them
    (plus one) wait to be written at once, the others wait to be encoded. A reply that cannot
    be written within :data:`SLOW_READER_TIMEOUT_S` ends the connection (1008): a client that
    does not read its replies can hold no more than that.
    """

    def __init__(
        self, server: KVServer, ws: WebSocketConnection, remote: tuple[str, str] = ("?", "?")
    ) -> None:
        self._server = server
        self._ws = ws
        self._remote = remote
        """The client's (host, host:port), for the rejection warnings."""
        self._slots = trio.Semaphore(server._max_concurrent)
        self._output_bytes = 0
        self._drained = Broadcast()
        self._scope = trio.CancelScope()
        self._ending: tuple[int, str] | None = None
        self._admin = server._admin_token is None and server._token is None
        """Whether this connection may run the membership ops (set by each hello)."""
        self._downloads = Downloads()
        """This connection's snapshot download (the ``snapshot`` op), at most one."""

    async def run(self) -> None:
        """Serve requests until the client leaves or breaks the protocol, then close."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    await self._read_requests(nursery)
                    nursery.cancel_scope.cancel()  # nobody is left to answer
        finally:
            await self._downloads.aclose()  # an abandoned download closes its snapshot file
        if self._ending is not None:
            await self.close(*self._ending)

    async def _read_requests(self, nursery: trio.Nursery) -> None:
        while True:
            try:
                data = await self._ws.get_message()
            except ConnectionClosed as exc:
                self._closed(exc)
                return
            try:
                rid, request = decode_request(data)
            except FrameError as exc:
                self._reject("invalid_frame", str(exc))
                self._ending = exc.code, str(exc)
                return
            except BadRequest as exc:
                await self._slots.acquire()
                failure = Failure(exc.request_id, ErrorCode.BAD_REQUEST, str(exc))
                self._count(None, failure)
                nursery.start_soon(self._reply, failure)
                continue
            await self._slots.acquire()
            nursery.start_soon(self._serve, rid, request)

    async def authenticate(self) -> bool:
        """With a token configured, the first request must be a ``hello`` carrying it."""
        server = self._server
        if server._token is None:
            return True
        with trio.move_on_after(HELLO_TIMEOUT_S):
            try:
                data = await self._ws.get_message()
            except ConnectionClosed as exc:
                self._closed(exc)
                return False
            try:
                rid, request = decode_request(data)
            except FrameError as exc:
                self._reject("invalid_frame", str(exc))
                await self.close(exc.code, str(exc))
                return False
            except BadRequest as exc:
                rid = exc.request_id
                op = None
            else:
                op = request
                if server._authentic(request):
                    assert isinstance(request, Hello)
                    self._admin = server._admin(request)
                    response = await server._answer(rid, request)
                    self._count(request, response)
                    await self._send(response)
                    return True
            reason = "the first request must be a hello with the right token"
            self._reject("unauthenticated", "no hello with the right token")
            failure = Failure(rid, ErrorCode.UNAUTHORIZED, reason)
            self._count(op, failure)
            await self._send(failure)
            await self.close(CLOSE_POLICY_VIOLATION, "unauthorized")
            return False
        self._reject("unauthenticated", f"no hello within {HELLO_TIMEOUT_S} s")
        await self.close(CLOSE_POLICY_VIOLATION, f"no hello within {HELLO_TIMEOUT_S} s")
        return False

    def _closed(self, exc: ConnectionClosed) -> None:
        """The connection ended: count it as refused if it sent a message over the limit."""
        if exc.reason is not None and exc.reason.code == 1009:  # trio-websocket's cap
            self._reject("invalid_frame", f"a message over {MAX_REQUEST_BYTES} bytes")

    def _reject(self, reason: str, detail: str) -> None:
        self._server._counters.reject(reason, *self._remote, detail)

    def _count(self, request: Request | None, response: Response) -> None:
        """Count an answer by op and outcome (``"invalid"`` for a request not decoded)."""
        op = "invalid" if request is None else _OP_NAMES[type(request)]
        outcome = response.code.value if isinstance(response, Failure) else "ok"
        self._server._counters.requests[op, outcome] += 1

    async def _serve(self, rid: int, request: Request) -> None:
        try:
            response: Response
            if isinstance(request, MembershipChange) and not self._admin:
                response = Failure(rid, ErrorCode.UNAUTHORIZED, self._not_admin())
            elif isinstance(request, FetchSnapshot):
                response = await self._snapshot(rid, request)
            else:
                if isinstance(request, Hello):
                    self._admin = self._server._admin(request)
                try:
                    response = await self._server._answer(rid, request)
                except trio.Cancelled:  # the client left (or the server stops) first
                    self._server._counters.requests[_OP_NAMES[type(request)], "abandoned"] += 1
                    raise
            self._count(request, response)
            await self._send(response)
        finally:
            self._slots.release()

    async def _snapshot(self, rid: int, request: FetchSnapshot) -> Response:
        """The ``snapshot`` op (a backup): only for a connection with the admin credential."""
        if not self._admin:
            await trio.lowlevel.checkpoint()
            if self._server._admin_token is not None:
                reason = (
                    "snapshot downloads (backups) need the cluster's admin_token: send it in "
                    "the hello (trio-raft snapshot save --token-file FILE)"
                )
            else:
                reason = "snapshot downloads (backups) need a hello with the cluster's token"
            return Failure(rid, ErrorCode.UNAUTHORIZED, reason)
        server = self._server
        return await self._downloads.answer(
            server._node, server._cluster_id, rid, request.offset, server._leader_url
        )

    def _not_admin(self) -> str:
        if self._server._admin_token is not None:
            return (
                "membership operations need the cluster's admin_token: send it in the hello "
                "(trio-raft member ... --token ADMIN_TOKEN)"
            )
        return "membership operations need a hello with the cluster's token"

    async def _reply(self, response: Response) -> None:
        try:
            await self._send(response)
        finally:
            self._slots.release()

    async def _send(self, response: Response) -> None:
        """Write ``response`` once there is room; end the connection if the client does not
        read it in time."""
        with trio.move_on_after(SLOW_READER_TIMEOUT_S) as deadline:
            while self._output_bytes >= MAX_OUTPUT_BYTES:
                await self._drained.wait()
            data = encode_response(response)
            self._output_bytes += len(data)
            try:
                await self._ws.send_message(data)
            except ConnectionClosed:
                pass  # the client left; the reader notices
            finally:
                self._output_bytes -= len(data)
                self._drained.notify()
        if deadline.cancelled_caught:
            seconds = f"{SLOW_READER_TIMEOUT_S:g}"
            self._ending = CLOSE_POLICY_VIOLATION, f"slow reader: replies unread for {seconds} s"
            self._scope.cancel()

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` and ``reason`` (cut to fit a close frame), waiting at most
        :data:`CLOSE_TIMEOUT_S`."""
        short = reason.encode()[:120].decode(errors="ignore")  # a control frame: 125 bytes
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await self._ws.aclose(code, short)


async def serve_kv(
    node: Node,
    *,
    host: str | None,
    port: int,
    leader_urls: Mapping[NodeId, str],
    token: str | None = None,
    admin_token: str | None = None,
    ssl_context: SSLContext | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
    cluster_id: str | None = None,
    task_status: trio.TaskStatus[KVServer] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve the KV service of ``node`` over WebSocket at ``ws[s]://host:port/kv``, forever.

    Supports ``server = await nursery.start(serve_kv, node, ...)``, which returns once the
    listener is bound (so a bind error reaches the caller) with a :class:`KVServer` (its
    :attr:`~KVServer.port` is the bound port). Run it next to the node, e.g. in the node's
    ``async with`` block: a node that leads but serves no clients is useless, and a server whose
    node stopped answers ``unavailable``. Cancel it to stop: every connection is closed and
    requests in flight are abandoned (a write may still be applied; its client retries it).

    Limits (each documented in its constant): at most ``max_connections`` connections, counted
    from the TCP accept; when they are all open, the oldest one still in its handshake (TLS and
    HTTP upgrade within 5 s, then a hello within 10 s when a token is configured) is closed to
    make room, and if none is, the new one is refused with HTTP 503. At most 64 connections
    from one address may be in their handshake. ``max_concurrent_requests`` requests in flight
    per connection (beyond that the server stops reading the connection); requests of at most
    512 KiB (a bigger one closes the connection with 1009) and 64 CBOR items, without tags
    (otherwise 1007); at most 1 MiB of replies waiting per connection, and a client that leaves
    a reply unread for 10 s is closed (1008). An exception while serving one connection closes
    it (1011) and is logged; it never ends the server. Operations have no server-side timeout
    (a ``promote`` waits as long as the node's catch-up timeout): clients set theirs, as trio's
    timeout philosophy wants.

    Any state machine can be served: ``call`` proposes a command to it and ``query`` reads it
    (:meth:`KVClient.call`, :meth:`KVClient.query`), so an application's own
    :class:`~trio_raft.StateMachine` gets clients, leader redirects, tokens and limits for
    free. The key-value ops (``get``, ``put``, ...) need a :class:`KVStateMachine`; against
    another state machine they fail as that state machine refuses them (``bad_request``).

    Besides the key-value ops, the server answers the membership ops (``members``,
    ``add_learner``, ``promote``, ``demote``, ``remove``, ``transfer_leader``) on the leader,
    through the node's methods; other nodes answer ``not_leader`` with the leader's URL.
    The leader answers ``snapshot`` (a backup holding every acknowledged write:
    :meth:`KVClient.snapshot`), with the admin credential the membership ops need; one
    download at a time per connection.

    Args:
        node: The node to serve (running a :class:`KVStateMachine` for the KV ops).
        host: The interface to bind (``None``: all of them).
        port: The port to bind (0: any free one, see :attr:`KVServer.port`).
        leader_urls: Each node's client URL (``ws://host:port/kv``), sent to clients that reach
            a follower so they can follow to the leader. Read at every redirect, so it may be
            filled in after the servers have bound their ports. For a leader it does not list,
            the ``"client"`` URL of the leader's address in the configuration is used (the
            address ``add_learner`` gives a node that joins: ``{"peer": URL, "client":
            URL}``). A leader without a URL gets the client a ``not_leader`` without a hint (it
            then tries its other URLs).
        token: If set, a client's first request must be a ``hello`` carrying this token (or
            ``admin_token``), compared in constant time; otherwise the server answers
            ``unauthorized`` and closes the connection with 1008 (policy violation). Use TLS
            (``ssl_context``) on untrusted networks, or the token travels in clear text.
        admin_token: If set, the membership ops (``add_learner``, ``promote``, ``demote``,
            ``remove``, ``transfer_leader``; not ``members``) need a connection whose
            ``hello`` carried it; others get ``unauthorized`` for them (the connection stays
            open). It also grants everything ``token`` does. If not set, ``token`` grants the
            membership ops too (and with neither, any client may run them).
        ssl_context: Serve ``wss://`` with this context.
        max_connections: Bound of concurrent connections.
        max_concurrent_requests: Bound of requests in flight per connection.
        cluster_id: The cluster's id, reported with a backup (the ``snapshot`` op) if given.
        task_status: For :meth:`trio.Nursery.start`.

    Raises:
        ValueError: a bound is < 1.
        OSError: the address cannot be bound.
    """
    state_machine = node.state_machine
    if max_connections < 1 or max_concurrent_requests < 1:
        raise ValueError(
            "max_connections and max_concurrent_requests must be >= 1, got "
            f"{max_connections} and {max_concurrent_requests}"
        )
    server = KVServer(
        node,
        state_machine,
        leader_urls,
        token,
        admin_token,
        max_connections,
        max_concurrent_requests,
        cluster_id,
    )
    listeners: list[trio.SocketListener] | list[trio.SSLListener[trio.SocketStream]]
    if ssl_context is None:
        listeners = await trio.open_tcp_listeners(port, host=host)
    else:
        listeners = await trio.open_ssl_over_tcp_listeners(
            port, ssl_context, host=host, https_compatible=True
        )
    # With host=None there is one listener per address family (and, with port 0, maybe
    # one port each): report the first.
    server._port = _listener_port(listeners[0])
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, server._handle_stream, listeners)
        task_status.started(server)
        await trio.sleep_forever()
    raise AssertionError("unreachable: serve_kv runs until cancelled")


def _matches(given: str | None, secret: bytes | None) -> bool:
    """Whether ``given`` is ``secret``, compared in constant time (False if either is None)."""
    if given is None or secret is None:
        return False
    return hmac.compare_digest(given.encode(), secret)


def _listener_port(listener: trio.SocketListener | trio.SSLListener[trio.SocketStream]) -> int:
    inner = listener.transport_listener if isinstance(listener, trio.SSLListener) else listener
    assert isinstance(inner, trio.SocketListener)
    port: int = inner.socket.getsockname()[1]
    return port
