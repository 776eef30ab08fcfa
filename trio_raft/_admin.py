"""The admin HTTP endpoint of a node: ``GET /health``, ``/ready`` and ``/metrics``, for load
balancers, orchestrators and Prometheus.

Plain HTTP/1.1 with ``h11`` (installed with trio-websocket), one request per connection, and
bounded at every step, since anyone who can reach the port can send anything: at most
:data:`MAX_CONNECTIONS` connections (more are closed at once), :data:`HEAD_TIMEOUT_S` to send
the request head, at most :data:`MAX_HEAD_BYTES` of bytes before it is complete, no request
body. It serves only
read-only views of the node, so it has no token; bind it to loopback or a private network.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import h11
import trio

from ._logging import RateLimiter
from ._types import Role

if TYPE_CHECKING:
    from ._node import Node

logger: Final = logging.getLogger("trio_raft.admin")

MAX_CONNECTIONS: Final = 64
"""Admin connections served at once; more are closed as they arrive."""
HEAD_TIMEOUT_S: Final = 5.0
"""How long a client has to send its request head."""
MAX_HEAD_BYTES: Final = 8192
"""The largest request head accepted (request line and headers)."""
READY_LAG: Final = 1000
"""``/ready`` fails while the state machine is more entries than this behind the commit index."""
STALL_ELECTION_TIMEOUTS: Final = 5
"""``/health`` fails once the node's dispatcher has been busy with one step (a disk write
that does not return, say) for this many maximum election timeouts."""

MetricsRenderer = Callable[[], tuple[bytes, str]]
"""Returns the ``/metrics`` body and its content type."""


def liveness(node: Node) -> tuple[bool, dict[str, object]]:
    """Whether ``node`` is alive, and the facts behind the answer: it has not shut down or
    stopped on an internal error, and its dispatcher (the task that runs the Raft rules and
    persists their decisions) has not been stuck in one step for
    :data:`STALL_ELECTION_TIMEOUTS` maximum election timeouts. A node that fails it will
    not recover by itself: restart it."""
    facts: dict[str, object] = {"node": node.id}
    busy_s = trio.current_time() - node._dispatching_since
    stall_s = STALL_ELECTION_TIMEOUTS * node._state.config.election_timeout_s_max
    if node._crash is not None:
        task, exc = node._crash
        facts.update(status="crashed", reason=f"internal error in its {task} task: {exc!r}")
    elif node._closed:
        facts["status"] = "closed"
    elif busy_s > stall_s:
        facts.update(
            status="stalled",
            reason=f"the dispatcher has been stuck in one step for {busy_s:.1f} s (over "
            f"{stall_s:g} s): the disk may not answer; restart the node",
            stalled_s=round(busy_s, 3),
        )
    else:
        facts["status"] = "ok"
    return facts["status"] == "ok", facts


def readiness(node: Node) -> tuple[bool, dict[str, object]]:
    """Whether ``node`` can serve clients now, and the facts behind the answer: it knows a
    leader it heard from within the maximum election timeout (or leads), and its state machine
    is within :data:`READY_LAG` entries of the commit index it knows."""
    st = node._state
    status = node.status
    facts: dict[str, object] = {
        "node": status.node_id, "role": status.role.value, "term": status.term,
        "leader": status.leader_id, "commit": status.commit_index,
        "applied": status.last_applied,
    }  # fmt: skip
    silence = trio.current_time() - st.leader_contact_at
    if status.role is Role.LEADER:
        reason = None
    elif status.leader_id is None:
        reason = "no leader known"
    elif silence > st.config.election_timeout_s_max:
        reason = f"no word from the leader {status.leader_id!r} for {silence:.1f} s"
    elif status.commit_index - status.last_applied > READY_LAG:
        lag = status.commit_index - status.last_applied
        reason = f"applying: {lag} committed entries behind (ready at {READY_LAG})"
    else:
        reason = None
    if reason is not None:
        facts["reason"] = reason
    return reason is None, facts


class AdminServer:
    """Serves one node's admin endpoint (see :func:`serve_admin`)."""

    def __init__(self, node: Node, metrics: MetricsRenderer | None) -> None:
        self._node = node
        self._metrics = metrics
        self._connections = 0
        self._refusals = RateLimiter(60.0)

    def _route(self, method: str, path: str) -> tuple[int, bytes, str]:
        if path == "/health":
            ok, facts = liveness(self._node)
            return (200 if ok else 503), _json(facts), "application/json"
        if path == "/ready":
            ok, facts = readiness(self._node)
            return (200 if ok else 503), _json({"ready": ok, **facts}), "application/json"
        if path == "/metrics":
            if self._metrics is None:
                text = b"metrics need the prometheus extra: pip install 'trio-raft[prometheus]'\n"
                return 501, text, "text/plain; charset=utf-8"
            metrics, content_type = self._metrics()
            return 200, metrics, content_type
        return 404, b"not found: try /health, /ready or /metrics\n", "text/plain; charset=utf-8"

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection: one request, one response, close."""
        if self._connections >= MAX_CONNECTIONS:
            suppressed = self._refusals.check("full", trio.current_time())
            if suppressed is not None:
                logger.warning(
                    "node %r: refused an admin connection: %d are open (and %d more refused "
                    "since the last message)", self._node.id, MAX_CONNECTIONS, suppressed,
                )  # fmt: skip
            await _close(stream)
            return
        self._connections += 1
        try:
            await self._handle(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError):
            pass  # the client went away or sent nonsense after we answered
        finally:
            self._connections -= 1
            await _close(stream)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        request: h11.Request | None = None
        received = 0
        with trio.move_on_after(HEAD_TIMEOUT_S):
            while request is None:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    await self._send(stream, conn, exc.error_status_hint, b"bad request\n")
                    return
                if isinstance(event, h11.Request):
                    request = event
                elif event is h11.NEED_DATA:
                    data = await stream.receive_some(4096)
                    received += len(data)
                    if received > MAX_HEAD_BYTES:
                        await self._send(stream, conn, 431, b"request head too large\n")
                        return
                    conn.receive_data(bytes(data))
                    if not data:
                        return
                else:
                    return  # ConnectionClosed, or anything else before a request
        if request is None:
            return  # too slow
        method = request.method.decode("ascii", "replace")
        if method not in ("GET", "HEAD"):
            await self._send(stream, conn, 405, b"only GET and HEAD\n", allow=True)
            return
        target = request.target.decode("ascii", "replace").split("?", 1)[0]
        status, body, content_type = self._route(method, target)
        await self._send(stream, conn, status, body, content_type, head=method == "HEAD")

    async def _send(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        *,
        allow: bool = False,
        head: bool = False,
    ) -> None:
        headers = [
            ("content-type", content_type),
            ("content-length", str(len(body))),
            ("connection", "close"),
            ("cache-control", "no-store"),
        ]
        if allow:
            headers.append(("allow", "GET, HEAD"))
        if conn.our_state is not h11.SEND_RESPONSE and conn.our_state is not h11.IDLE:
            return
        data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
        if body and not head:
            data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        with trio.move_on_after(HEAD_TIMEOUT_S):
            await stream.send_all(data)


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True).encode() + b"\n"


async def _close(stream: trio.abc.Stream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        await trio.aclose_forcefully(stream)


async def serve_admin(
    node: Node,
    host: str,
    port: int,
    *,
    metrics: MetricsRenderer | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``node``'s admin endpoint on ``host:port`` until cancelled; reports the bound
    port through ``task_status`` (``port=0`` picks a free one). ``metrics`` renders
    ``/metrics`` (without it, ``/metrics`` answers 501 saying what to install)."""
    server = AdminServer(node, metrics)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, server.handle, listeners)
        task_status.started(bound)
