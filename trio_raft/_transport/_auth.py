"""Membership proof at connection time: a mutual HMAC-SHA256 challenge-response.

Every node of a cluster holds the same secret. A connection is authenticated before any Raft
frame is read, in four WebSocket messages (each a small CBOR map, at most
:data:`HANDSHAKE_MAX_BYTES`)::

    client (dialer)                                       server (listener)
      hello     {t: "hello", v, c: cluster, s: client id, d: server id, n: client nonce}  ──▶
                  server checks v, c, d == itself, s is a known peer; else closes 1008
      ◀──  challenge {t: "challenge", n: server nonce, p: server proof}
      client checks the server proof; else closes 1008
      proof     {t: "proof", p: client proof}  ──▶
                  server checks the client proof; else closes 1008
      ◀──  welcome {t: "welcome"}

A proof is ``HMAC-SHA256(secret, CBOR([label, v, cluster, client id, server id, client nonce,
server nonce]))`` with ``label`` ``"trio-raft server"`` or ``"trio-raft client"``: it binds
both ids, both fresh 32-byte nonces and the role, so a proof cannot be replayed on another
connection nor reflected back as the other role. The secret never crosses the wire and proofs
are compared with :func:`hmac.compare_digest`. Nonces come from :mod:`secrets` (never from a
seeded :class:`random.Random`: predictable nonces would make proofs replayable).

What it does not do: it does not protect the frames that follow. Without TLS an on-path attacker
can relay a handshake and then alter or inject frames; use ``wss://`` on untrusted networks.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Container
from typing import Final, Protocol

import attrs
import cbor2
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    WebSocketRequest,
)

from .._codec import PROTOCOL_VERSION, FrameError, load_plain
from .._errors import RaftError
from .._types import NodeId

SUBPROTOCOL: Final = f"trio-raft.{PROTOCOL_VERSION}"
"""The WebSocket subprotocol both sides must agree on."""
BATCH_SUBPROTOCOL: Final = f"trio-raft.{PROTOCOL_VERSION}+batch"
"""The same protocol, and the listener reads batches (several frames in one message): a dialer
offers it before :data:`SUBPROTOCOL`, a listener that knows it picks it, and one that does
not picks :data:`SUBPROTOCOL` (see :doc:`wire`, "Batches")."""

NONCE_BYTES: Final = 32
HANDSHAKE_MAX_BYTES: Final = 512
"""Handshake messages are checked against this size before they are decoded."""
MIN_SECRET_BYTES: Final = 16
"""Shorter secrets are refused; use e.g. ``secrets.token_bytes(32)``."""

RAFT_PATH: Final = "/raft"
"""The one path the server answers; peer URLs look like ``ws://host:port/raft``."""

_SERVER_LABEL: Final = "trio-raft server"
_CLIENT_LABEL: Final = "trio-raft client"


class PeerRejectedError(RaftError):
    """A connection failed the handshake: the other side is not a member of this cluster, or
    broke the protocol. ``reason`` is short enough for a WebSocket close frame; ``peer`` is the
    node id the other side claimed or was dialed as, if known."""

    def __init__(self, reason: str, *, peer: NodeId | None = None) -> None:
        super().__init__(reason if peer is None else f"{peer!r}: {reason}")
        self.reason = reason
        self.peer = peer


class MessageConnection(Protocol):
    """What the handshake needs from a connection (a :class:`trio_websocket.WebSocketConnection`
    fits)."""

    async def send_message(self, message: str | bytes) -> None: ...

    async def get_message(self) -> str | bytes: ...


def new_nonce() -> bytes:
    """A fresh random nonce from the operating system's CSPRNG."""
    return secrets.token_bytes(NONCE_BYTES)


@attrs.frozen
class Transcript:
    """What both proofs of one handshake bind."""

    cluster_id: str
    client_id: NodeId
    server_id: NodeId
    client_nonce: bytes
    server_nonce: bytes

    def proof(self, secret: bytes, *, server: bool) -> bytes:
        """The HMAC-SHA256 proof of the server (``server=True``) or of the client."""
        label = _SERVER_LABEL if server else _CLIENT_LABEL
        message = cbor2.dumps(
            [
                label,
                PROTOCOL_VERSION,
                self.cluster_id,
                self.client_id,
                self.server_id,
                self.client_nonce,
                self.server_nonce,
            ]
        )
        return hmac.new(secret, message, hashlib.sha256).digest()


async def client_handshake(
    conn: MessageConnection,
    *,
    secret: bytes,
    cluster_id: str,
    client_id: NodeId,
    server_id: NodeId,
) -> None:
    """Authenticate to ``server_id`` and check that it is a member too.

    Raises:
        PeerRejectedError: the server's answers are malformed or its proof is wrong.
        trio_websocket.ConnectionClosed: the server closed the connection (it refused us; the
            close reason says why).
    """
    client_nonce = new_nonce()
    await conn.send_message(
        cbor2.dumps(
            {
                "t": "hello",
                "v": PROTOCOL_VERSION,
                "c": cluster_id,
                "s": client_id,
                "d": server_id,
                "n": client_nonce,
            }
        )
    )
    challenge = _parse(await conn.get_message(), "challenge", {"n": _nonce, "p": _digest})
    transcript = Transcript(
        cluster_id, client_id, server_id, client_nonce, _as_bytes(challenge["n"])
    )
    expected = transcript.proof(secret, server=True)
    if not hmac.compare_digest(_as_bytes(challenge["p"]), expected):
        raise PeerRejectedError("server failed to prove cluster membership", peer=server_id)
    proof = transcript.proof(secret, server=False)
    await conn.send_message(cbor2.dumps({"t": "proof", "p": proof}))
    _parse(await conn.get_message(), "welcome", {})


async def server_handshake(
    conn: MessageConnection,
    *,
    secret: bytes,
    cluster_id: str,
    server_id: NodeId,
    peers: Container[NodeId],
) -> NodeId:
    """Authenticate the client of ``conn`` and prove membership to it.

    Returns:
        The client's node id, proven to be one of ``peers``.

    Raises:
        PeerRejectedError: the client is not an authenticated member of ``peers`` (unknown id,
            wrong cluster or version, malformed message, wrong proof); close with 1008 and the
            error's ``reason``.
        trio_websocket.ConnectionClosed: the client went away.
    """
    hello = _parse(
        await conn.get_message(),
        "hello",
        {"v": _int, "c": _text, "s": _text, "d": _text, "n": _nonce},
    )
    if hello["v"] != PROTOCOL_VERSION:
        raise PeerRejectedError(f"protocol version {hello['v']} is not {PROTOCOL_VERSION}")
    client_id, wanted = _as_str(hello["s"]), _as_str(hello["d"])
    if hello["c"] != cluster_id:
        raise PeerRejectedError("wrong cluster id", peer=client_id)
    if wanted != server_id:
        raise PeerRejectedError(f"this is node {server_id[:32]!r}", peer=client_id)
    if client_id == server_id or client_id not in peers:
        raise PeerRejectedError("unknown node id", peer=client_id)
    transcript = Transcript(cluster_id, client_id, server_id, _as_bytes(hello["n"]), new_nonce())
    proof = transcript.proof(secret, server=True)
    await conn.send_message(
        cbor2.dumps({"t": "challenge", "n": transcript.server_nonce, "p": proof})
    )
    answer = _parse(await conn.get_message(), "proof", {"p": _digest})
    expected = transcript.proof(secret, server=False)
    if not hmac.compare_digest(_as_bytes(answer["p"]), expected):
        raise PeerRejectedError("authentication failed", peer=client_id)
    await conn.send_message(cbor2.dumps({"t": "welcome"}))
    return client_id


# -- refusals -------------------------------------------------------------------------------


async def accept_request(request: WebSocketRequest) -> WebSocketConnection:
    """Accept the HTTP upgrade if it is for :data:`RAFT_PATH` and offers :data:`SUBPROTOCOL`
    (with :data:`BATCH_SUBPROTOCOL` if the dialer offers that too: check ``ws.subprotocol``).

    Raises:
        PeerRejectedError: it is not; the request was rejected with 404 or 400.
    """
    if request.path != RAFT_PATH:
        await request.reject(404)
        raise PeerRejectedError(f"path {request.path[:40]!r} is not {RAFT_PATH}")
    if BATCH_SUBPROTOCOL in request.proposed_subprotocols:
        return await request.accept(subprotocol=BATCH_SUBPROTOCOL)
    if SUBPROTOCOL not in request.proposed_subprotocols:
        await request.reject(400, body=f"expected subprotocol {SUBPROTOCOL}".encode())
        raise PeerRejectedError(f"subprotocol {SUBPROTOCOL} not offered")
    return await request.accept(subprotocol=SUBPROTOCOL)


def is_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is the other side closing with 1008 (policy violation)."""
    return isinstance(exc, ConnectionClosed) and exc.reason is not None and exc.reason.code == 1008


def describe_failure(exc: BaseException) -> str:
    """A short, human explanation of a failed connection or handshake."""
    if isinstance(exc, PeerRejectedError):
        return exc.reason
    if isinstance(exc, trio.TooSlowError):
        return "handshake timed out"
    if isinstance(exc, ConnectionRejected):
        return f"HTTP upgrade rejected with status {exc.status_code}"
    if isinstance(exc, trio.BrokenResourceError):
        return f"broken connection ({exc.__cause__!r})"
    if isinstance(exc, ConnectionClosed) and exc.reason is not None:
        return f"closed by the other side ({exc.reason.code} {exc.reason.reason or ''})".strip()
    return repr(exc)


# -- parsing ----------------------------------------------------------------------------------

_Check = Callable[[object], bool]


def _int(value: object) -> bool:
    return type(value) is int


def _text(value: object) -> bool:
    return type(value) is str and 1 <= len(value) <= 128


def _nonce(value: object) -> bool:
    return type(value) is bytes and len(value) == NONCE_BYTES


def _digest(value: object) -> bool:
    return type(value) is bytes and len(value) == hashlib.sha256().digest_size


def _parse(data: str | bytes, kind: str, fields: dict[str, _Check]) -> dict[str, object]:
    """Strictly decode handshake message ``kind`` with exactly ``fields`` (plus ``t``)."""
    try:
        value = load_plain(data, max_bytes=HANDSHAKE_MAX_BYTES, max_depth=1)
    except FrameError as exc:
        raise PeerRejectedError(f"malformed {kind}: {exc}"[:100]) from None
    if not isinstance(value, dict) or value.get("t") != kind:
        raise PeerRejectedError(f"expected a {kind} message")
    if set(value) != {"t", *fields}:
        raise PeerRejectedError(f"malformed {kind}: wrong fields")
    for name, check in fields.items():
        if not check(value[name]):
            raise PeerRejectedError(f"malformed {kind}: bad {name!r}")
    return value


def _as_bytes(value: object) -> bytes:
    assert isinstance(value, bytes)
    return value


def _as_str(value: object) -> str:
    assert isinstance(value, str)
    return value
