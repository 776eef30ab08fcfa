"""The KV service's wire protocol, its limits and its errors.

One request or response per binary WebSocket message, each a CBOR map, on the path ``/kv``.
A request carries an ``id`` (an int the client picks) that its response echoes, so a
connection carries many requests at once and responses may come back in any order::

    request    {"id": 7, "op": "put", "session": b"...", "seq": 3, "key": "a", "value": b"1"}
    success    {"id": 7, "ok": None}
    failure    {"id": 7, "error": {"code": "not_leader", "message": "...",
                                   "leader": "ws://10.0.0.2:7000/kv"}}

The ops and their fields are the request classes below (``hello``, ``open_session``, ``get``,
``list``, ``put``, ``delete``, ``cas``, ``status``, and the membership ops ``members``,
``add_learner``, ``promote``, ``demote``, ``remove``, ``transfer_leader``, and ``snapshot``
for backups, answered in ``_backup``), the error codes
:class:`ErrorCode`; ``docs/source/kv.rst`` ("The wire protocol") has the full table. Every
field is checked (type, size, no unknown field) when a request is built, on either side. A
frame that cannot be answered (not CBOR, not a map, no valid ``id``) closes the connection with
1007, a text frame with 1003; a missing or wrong token closes it with 1008 after an
``unauthorized`` answer; a message over the size limit closes it with 1009. The error classes
are drawn in :mod:`trio_raft.kv`.
"""

from __future__ import annotations

import enum
import math
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, final

import attrs
import cbor2

from .._codec import MAX_COMMAND_DEPTH, check_command, load_plain
from .._codec import FrameError as _CodecFrameError
from .._errors import RaftError
from .._types import MAX_ADDRESS_BYTES, MAX_ID_CHARS, MAX_MEMBERS
from ._strict import StructureError, check_structure, describe

PROTOCOL_VERSION: Final = 1
"""The version a ``hello`` carries; a server answers ``bad_request`` to any other."""
PATH: Final = "/kv"
"""The WebSocket resource the service is served on."""

MAX_KEY_BYTES: Final = 1024
"""A key (or list prefix) is a non-empty str of at most this many bytes in UTF-8."""
MAX_VALUE_BYTES: Final = 256 * 1024
"""A value is bytes of at most this length."""
MAX_SESSION_ID_BYTES: Final = 64
"""A session id is 1 to this many bytes (the client draws 16 random ones)."""
MAX_LIST_LIMIT: Final = 1000
"""A ``list`` returns at most this many keys (ask for the next page with ``start_after``)."""
DEFAULT_LIST_LIMIT: Final = 100
"""The ``limit`` of a ``list`` that names none."""
MAX_TOKEN_BYTES: Final = 1024
"""Longest accepted token (UTF-8)."""
MAX_SEQ: Final = 2**63 - 1
"""Sequence numbers and request ids are ints in ``[1, MAX_SEQ]`` and ``[0, MAX_SEQ]``."""
MAX_REQUEST_BYTES: Final = 512 * 1024
"""Largest request message a server accepts (a ``put`` of the largest key and value fits)."""
MAX_RESPONSE_BYTES: Final = 2 * 1024 * 1024
"""Largest response message a client accepts (a full ``list`` page of the longest keys fits)."""
MAX_SNAPSHOT_PIECE_BYTES: Final = 1024 * 1024 - 32 * 1024
"""A ``snapshot`` response carries at most this many bytes of the snapshot file, so that the
whole message, metadata included (at most a few KiB), stays within 1 MiB."""
MAX_URL_BYTES: Final = 400
"""A URL in an ``add_learner`` (``peer``, ``client``) is at most this long in UTF-8, so that a
member's address (both URLs) stays within the configuration's limit per address."""

# WebSocket close codes (RFC 6455, section 7.4.1) the server uses.
CLOSE_UNSUPPORTED_DATA: Final = 1003  # a text frame
CLOSE_INVALID_PAYLOAD: Final = 1007  # a frame that cannot be answered
CLOSE_POLICY_VIOLATION: Final = 1008  # missing or wrong token, or replies not read
CLOSE_INTERNAL_ERROR: Final = 1011  # the server failed unexpectedly on this connection

_MAX_REQUEST_DEPTH: Final = 1 + MAX_COMMAND_DEPTH
"""A request is a map of scalars, except a ``call``'s command and a ``query``'s query: values
of the command data model, nested at most :data:`~trio_raft._codec.MAX_COMMAND_DEPTH` deep."""
_MAX_REQUEST_ITEMS: Final = 16 * 1024
"""CBOR items in a request (a KV one has at most 17; a ``call`` carries a whole command):
decoding work is bounded by it and by :data:`MAX_REQUEST_BYTES`."""
# {"id", "ok": {"voters": {id: address}}}: an address is any value of the command model.
_MAX_RESPONSE_DEPTH: Final = 3 + MAX_COMMAND_DEPTH
# A full list page, or a membership of the most members with the largest addresses.
_MAX_RESPONSE_ITEMS: Final = max(4 * MAX_LIST_LIMIT, MAX_MEMBERS * (MAX_ADDRESS_BYTES + 4)) + 1024

Consistency = Literal["linearizable", "stale"]


# -- errors -----------------------------------------------------------------------------------


class KVError(RaftError):
    """Base class of every error the KV service raises on purpose."""


class KVTimeoutError(KVError):
    """The call did not complete within its timeout.

    For a read nothing happened. For a write the outcome is *unknown*: it may have been applied
    (once: the session's sequence number prevents a second application). Read the key back to
    find out, or raise the timeout (``timeout_s``) if the cluster is just slow or electing.
    """

    def __init__(self, message: str, *, may_have_applied: bool = False) -> None:
        super().__init__(message)
        self.may_have_applied = may_have_applied
        """Whether the operation may have taken effect: false for reads and for writes that
        were never sent (or refused for sure), true otherwise."""


class KVRequestError(KVError, ValueError):
    """The request is invalid (a key too long, a wrong type, ...), whether the client or the
    server noticed; it had no effect. Fix the call: retrying the same request fails the same way.
    """


class StaleSequenceError(KVRequestError):
    """A write carried a sequence number older than its session's last applied one; it was not
    applied. Only a client that sends two writes of one session at once, or reuses a sequence
    number for a new write, sees this: give each concurrent writer its own session."""


class KVAuthError(KVError):
    """The server refused the token (missing or wrong). Pass the token the servers were started
    with; retrying with the same one fails the same way."""


class SessionExpiredError(KVError):
    """The client's session was evicted from the servers' bounded session table (too many other
    clients since its last write). The write that got this answer was not applied, but an earlier
    attempt of it, whose answer was lost, may have been: read the key back before retrying. The
    client has already opened a new session for its next writes."""


class KVNoSpaceError(KVError):
    """The cluster's leader is low on disk space (its alarm is raised; see ``no_space`` in
    ``trio-raft status``), so it refuses writes other than deletes. The write was not applied.
    Delete data and let the next snapshot compact the log, or give the nodes more disk; the
    alarm clears by itself within a second of space returning. Reads keep working."""


class KVServerError(KVError):
    """The server failed unexpectedly (the message says how). The outcome of a write is unknown.
    This is a bug in the server or its state machine: please report it."""


class CommandFailedError(KVError):
    """A ``call``'s command was applied and the state machine's ``apply`` raised; the message
    names the exception type and its text (the state is as ``apply`` left it: unchanged, if it
    follows the :class:`~trio_raft.StateMachine` contract)."""


class OutcomeUnknownError(KVError):
    """A ``call`` may or may not have been applied (the leader was lost after appending it,
    or the connection broke after sending it); the client does not retry it, since that could
    apply it twice. Check the state (``query``) before trying again."""

    may_have_applied: Final = True
    """Always true: what the error says, as an attribute for programs."""


class ClientClosedError(KVError):
    """The client was used after its ``async with`` block ended; open a new one."""


class MembershipRefusedError(KVError):
    """The leader refused a membership change: **nothing changed**. :attr:`code` says why, the
    message says what to do:

    ``change_in_progress``
        Another change (or a leadership transfer) is in flight. Wait until the configuration
        is committed and not joint (``members``), then retry.
    ``invalid_membership``
        The request is impossible (promoting a node that is not a learner, removing the last
        voter, ...). Fix it: retrying the same request fails the same way.
    ``not_caught_up``
        The learner did not keep up with the leader within the catch-up timeout; it stays a
        learner. Check it (disk, network), then retry with a longer ``catch_up_timeout_s``,
        or remove it.
    ``quorum_unavailable``
        The current or the requested voters lack a live majority, so the change could get
        stuck half-way. Bring the unreachable voters (named in the message) back first.

    Attributes:
        code: The :class:`ErrorCode` of the refusal.
    """

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


class TransferFailedError(KVError):
    """A leadership transfer did not happen: the old leader still leads (it accepts writes
    again), or it stepped down and no new leader was known in time (the message says which).
    Retry later, or pick another target."""


class ErrorCode(enum.StrEnum):
    """The ``code`` of an error response, and what a client does about it."""

    NOT_LEADER = "not_leader"
    """Not the leader: nothing happened. Retry on ``leader`` (a URL, or None if unknown)."""
    OUTCOME_UNKNOWN = "outcome_unknown"
    """Leadership was lost after the write was appended: it may or may not be applied. Retry
    with the same session and sequence number (the state machine then answers as the first
    time)."""
    DROPPED = "dropped"
    """The write was definitely not applied (e.g. back-pressure); retry, after a pause."""
    NO_SPACE = "no_space"
    """The leader's disk-space alarm is raised: the write was not applied, and only deletes
    are accepted until space is freed (:class:`KVNoSpaceError`)."""
    UNAVAILABLE = "unavailable"
    """The node is shutting down; nothing happened. Retry on another node."""
    BAD_REQUEST = "bad_request"
    """The request is invalid; it had no effect (:class:`KVRequestError`)."""
    UNAUTHORIZED = "unauthorized"
    """Missing or wrong token (:class:`KVAuthError`); the server closes the connection."""
    SESSION_EXPIRED = "session_expired"
    """The session is unknown (evicted): not applied (:class:`SessionExpiredError`)."""
    INTERNAL = "internal"
    """The server failed unexpectedly (:class:`KVServerError`)."""
    CHANGE_IN_PROGRESS = "change_in_progress"
    """Another membership change or a leadership transfer is in flight; nothing changed
    (:class:`MembershipRefusedError`)."""
    INVALID_MEMBERSHIP = "invalid_membership"
    """The membership request is impossible; nothing changed (:class:`MembershipRefusedError`)."""
    NOT_CAUGHT_UP = "not_caught_up"
    """The learner to promote did not catch up in time; it stays a learner
    (:class:`MembershipRefusedError`)."""
    QUORUM_UNAVAILABLE = "quorum_unavailable"
    """The old or the new voters lack a live majority; nothing changed
    (:class:`MembershipRefusedError`)."""
    TRANSFER_FAILED = "transfer_failed"
    """The leadership transfer did not complete (:class:`TransferFailedError`)."""
    COMMAND_FAILED = "command_failed"
    """The ``call``'s command was committed and applied, and the state machine's ``apply``
    raised (the same on every replica): ``message`` names the exception
    (:class:`CommandFailedError`)."""


class FrameError(Exception):
    """A message that cannot be answered; the receiver closes the connection with ``code``."""

    def __init__(self, message: str, code: int = CLOSE_INVALID_PAYLOAD) -> None:
        super().__init__(message)
        self.code = code


class BadRequest(Exception):
    """A request that can be answered with ``bad_request`` (its ``id`` is valid)."""

    def __init__(self, request_id: int, message: str) -> None:
        super().__init__(message)
        self.request_id = request_id


# -- field checks (shared with the state machine) -------------------------------------------


def check_key(value: object, what: str = "key") -> str:
    """Return ``value`` if it is a valid key, else raise :exc:`ValueError` saying why."""
    if type(value) is not str:
        raise ValueError(f"{what} must be a str, got {type(value).__name__}")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be valid Unicode (no lone surrogates)") from None
    if not 0 < size <= MAX_KEY_BYTES:
        raise ValueError(f"{what} must be 1 to {MAX_KEY_BYTES} bytes in UTF-8, got {size}")
    return value


def check_prefix(value: object) -> str:
    """A list prefix: like a key, but may be empty (list everything)."""
    if value == "":
        return ""
    return check_key(value, "prefix")


def check_value(value: object, what: str = "value") -> bytes:
    """Return ``value`` if it is valid bytes for a value, else raise :exc:`ValueError`."""
    if type(value) is not bytes:
        raise ValueError(f"{what} must be bytes, got {type(value).__name__}")
    if len(value) > MAX_VALUE_BYTES:
        raise ValueError(f"{what} must be at most {MAX_VALUE_BYTES} bytes, got {len(value)}")
    return value


def check_optional_value(value: object, what: str) -> bytes | None:
    """A value, or None (meaning "absent")."""
    return None if value is None else check_value(value, what)


def check_session(value: object) -> bytes:
    """A session id: 1 to :data:`MAX_SESSION_ID_BYTES` bytes."""
    if type(value) is not bytes or not 0 < len(value) <= MAX_SESSION_ID_BYTES:
        raise ValueError(
            f"session must be 1 to {MAX_SESSION_ID_BYTES} bytes, got {describe(value)}"
        )
    return value


def check_int(value: object, what: str, lo: int, hi: int) -> int:
    """An int (not a bool) in ``[lo, hi]``."""
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"{what} must be an int from {lo} to {hi}, got {describe(value)}")
    return value


def check_seq(value: object) -> int:
    """A write's sequence number: an int in ``[1, MAX_SEQ]``."""
    return check_int(value, "seq", 1, MAX_SEQ)


def check_limit(value: object) -> int:
    """A list limit: an int in ``[1, MAX_LIST_LIMIT]``."""
    return check_int(value, "limit", 1, MAX_LIST_LIMIT)


def check_optional_key(value: object, what: str) -> str | None:
    """A key, or None."""
    return None if value is None else check_key(value, what)


def check_node_id(value: object, what: str = "node") -> str:
    """A node id: a str of 1 to ``MAX_ID_CHARS`` (128) characters, as in a configuration."""
    if type(value) is not str or not 1 <= len(value) <= MAX_ID_CHARS:
        raise ValueError(
            f"{what} must be a node id (a str of 1 to {MAX_ID_CHARS} characters), "
            f"got {describe(value)}"
        )
    return value


def check_optional_node_id(value: object, what: str) -> str | None:
    """A node id, or None."""
    return None if value is None else check_node_id(value, what)


def check_url(value: object, what: str) -> str:
    """A ``ws://`` or ``wss://`` URL with a host, of at most :data:`MAX_URL_BYTES` in UTF-8."""
    if type(value) is not str:
        raise ValueError(f"{what} must be a ws:// or wss:// URL, got {describe(value)}")
    try:
        size = len(value.encode())
        parts = urllib.parse.urlsplit(value)
        _port = parts.port  # raises ValueError for a port out of range
    except (UnicodeEncodeError, ValueError):
        raise ValueError(f"{what} is not a valid URL: {describe(value)}") from None
    if size > MAX_URL_BYTES:
        raise ValueError(f"{what} must be at most {MAX_URL_BYTES} bytes in UTF-8, got {size}")
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"{what} must be a ws:// or wss:// URL with a host, got {describe(value)}")
    return value


def check_timeout(value: object, what: str) -> float | None:
    """None, or a positive, finite number of seconds (an int or a float, not a bool)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and type(value) is not bool and 0 < value < math.inf:
        return float(value)
    raise ValueError(
        f"{what} must be a positive, finite number of seconds or None, got {describe(value)}"
    )


def client_url(address: object) -> str | None:
    """The ``"client"`` URL of a member's address as trio-raft's tools write it (``{"peer":
    URL, "client": URL}``), if it is a valid one; None for any other address."""
    if isinstance(address, Mapping):
        url = address.get("client")
        try:
            return check_url(url, "client")
        except ValueError:
            return None
    return None


_Validator = Callable[[Any, Any, Any], None]


def _v(check: Callable[[object], object]) -> _Validator:
    """Adapt a ``check_*(value)`` function to an attrs validator."""

    def validator(_inst: Any, _attr: Any, value: Any) -> None:
        check(value)

    return validator


def _version(_inst: Any, _attr: Any, value: Any) -> None:
    if value != PROTOCOL_VERSION or type(value) is not int:
        raise ValueError(
            f"unsupported protocol version {describe(value)}; this server speaks {PROTOCOL_VERSION}"
        )


def _consistency(_inst: Any, _attr: Any, value: Any) -> None:
    if value not in ("linearizable", "stale"):
        raise ValueError(f'consistency must be "linearizable" or "stale", got {describe(value)}')


def _token(_inst: Any, _attr: Any, value: Any) -> None:
    if value is not None and (type(value) is not str or len(value.encode()) > MAX_TOKEN_BYTES):
        raise ValueError(f"token must be a str of at most {MAX_TOKEN_BYTES} bytes, or None")


# -- requests ----------------------------------------------------------------------------------
# Each class validates its fields on construction (ValueError), so an invalid request never
# exists: the server builds them from decoded maps, the client from its arguments. The id is
# not part of a request: it belongs to one sending of it (a retry gets a new one).


@final
@attrs.frozen(kw_only=True)
class Hello:
    """First request of a connection: protocol version and token."""

    token: str | None = attrs.field(default=None, validator=_token)
    v: int = attrs.field(default=PROTOCOL_VERSION, validator=_version)


@final
@attrs.frozen(kw_only=True)
class OpenSession:
    """Register a session (idempotent) before its first write."""

    session: bytes = attrs.field(validator=_v(check_session))


@final
@attrs.frozen(kw_only=True)
class Get:
    """Read one key."""

    key: str = attrs.field(validator=_v(check_key))
    consistency: Consistency = attrs.field(default="linearizable", validator=_consistency)


@final
@attrs.frozen(kw_only=True)
class ListKeys:
    """List keys with a prefix, in order, after ``start_after``, at most ``limit``."""

    prefix: str = attrs.field(validator=_v(check_prefix))
    limit: int = attrs.field(default=DEFAULT_LIST_LIMIT, validator=_v(check_limit))
    start_after: str | None = attrs.field(
        default=None, validator=_v(lambda x: check_optional_key(x, "start_after"))
    )
    consistency: Consistency = attrs.field(default="linearizable", validator=_consistency)


@final
@attrs.frozen(kw_only=True)
class Put:
    """Set a key's value."""

    session: bytes = attrs.field(validator=_v(check_session))
    seq: int = attrs.field(validator=_v(check_seq))
    key: str = attrs.field(validator=_v(check_key))
    value: bytes = attrs.field(validator=_v(check_value))


@final
@attrs.frozen(kw_only=True)
class Delete:
    """Remove a key."""

    session: bytes = attrs.field(validator=_v(check_session))
    seq: int = attrs.field(validator=_v(check_seq))
    key: str = attrs.field(validator=_v(check_key))


@final
@attrs.frozen(kw_only=True)
class Cas:
    """Set ``key`` to ``new`` iff its value is ``expected`` (None: absent, both ways)."""

    session: bytes = attrs.field(validator=_v(check_session))
    seq: int = attrs.field(validator=_v(check_seq))
    key: str = attrs.field(validator=_v(check_key))
    expected: bytes | None = attrs.field(
        validator=_v(lambda x: check_optional_value(x, "expected"))
    )
    new: bytes | None = attrs.field(validator=_v(lambda x: check_optional_value(x, "new")))


def check_plain(value: object, what: str = "command") -> object:
    """A value of the command data model (see :func:`trio_raft._codec.check_command`)."""
    try:
        check_command(value, where=what)
    except _CodecFrameError as exc:
        raise ValueError(str(exc)) from None
    return value


@final
@attrs.frozen(kw_only=True)
class Call:
    """Propose ``command`` to the node's state machine, whatever it is; the result is what its
    ``apply`` returned. Not retried by the client once it may have been appended (at most
    once): a state machine that needs exactly once de-duplicates by a request id inside the
    command."""

    command: object = attrs.field(validator=_v(check_plain))


@final
@attrs.frozen(kw_only=True)
class Query:
    """Answer ``query`` with the node's state machine (``query`` method), linearizably (on the
    leader, with ReadIndex) or ``stale`` (on any node, at once)."""

    query: object = attrs.field(validator=_v(lambda x: check_plain(x, "query")))
    consistency: Consistency = attrs.field(default="linearizable", validator=_consistency)


@final
@attrs.frozen(kw_only=True)
class NodeStatus:
    """The answering node's own status (never redirected): for monitoring."""


@final
@attrs.frozen(kw_only=True)
class Members:
    """The cluster's configuration, as the leader holds it."""


@final
@attrs.frozen(kw_only=True)
class AddLearner:
    """Add ``node`` as a learner at ``peer`` (Raft) and ``client`` (KV), or change the address
    of a member (a voter stays a voter)."""

    node: str = attrs.field(validator=_v(check_node_id))
    peer: str = attrs.field(validator=_v(lambda x: check_url(x, "peer")))
    client: str = attrs.field(validator=_v(lambda x: check_url(x, "client")))


@final
@attrs.frozen(kw_only=True)
class Promote:
    """Make learner ``node`` a voter once it has caught up (waiting at most
    ``catch_up_timeout_s``, the node's ``Config.catch_up_timeout_s`` if None)."""

    node: str = attrs.field(validator=_v(check_node_id))
    catch_up_timeout_s: float | None = attrs.field(
        default=None, validator=_v(lambda x: check_timeout(x, "catch_up_timeout_s"))
    )


@final
@attrs.frozen(kw_only=True)
class Demote:
    """Make voter ``node`` a learner."""

    node: str = attrs.field(validator=_v(check_node_id))


@final
@attrs.frozen(kw_only=True)
class Remove:
    """Remove ``node`` from the cluster (nothing to do if it is not a member)."""

    node: str = attrs.field(validator=_v(check_node_id))


@final
@attrs.frozen(kw_only=True)
class TransferLeader:
    """Hand leadership to ``to`` (None: the leader picks the most up-to-date voter)."""

    to: str | None = attrs.field(
        default=None, validator=_v(lambda x: check_optional_node_id(x, "to"))
    )


@final
@attrs.frozen(kw_only=True)
class FetchSnapshot:
    """Download a snapshot of the answering node's state machine (never redirected; needs the
    admin credential, as the membership ops do). ``offset`` 0 makes the node take a snapshot
    at the index it has applied (:meth:`Node.snapshot <trio_raft.Node.snapshot>`) and starts
    a download of it as a snapshot file; each next request asks for the bytes from
    ``offset`` on, the number of bytes received so far. One download at a time per
    connection: offset 0 abandons the previous one."""

    offset: int = attrs.field(default=0, validator=_v(lambda x: check_int(x, "offset", 0, MAX_SEQ)))


Request = (
    Hello
    | OpenSession
    | Get
    | ListKeys
    | Put
    | Delete
    | Cas
    | Call
    | Query
    | NodeStatus
    | Members
    | AddLearner
    | Promote
    | Demote
    | Remove
    | TransferLeader
    | FetchSnapshot
)
WriteRequest = Put | Delete | Cas
MembershipChange = AddLearner | Promote | Demote | Remove | TransferLeader
"""The ops that need the admin credential (``members`` needs only the token)."""

_OPS: Final[dict[str, type[Request]]] = {
    "hello": Hello,
    "open_session": OpenSession,
    "get": Get,
    "list": ListKeys,
    "put": Put,
    "delete": Delete,
    "cas": Cas,
    "call": Call,
    "query": Query,
    "status": NodeStatus,
    "members": Members,
    "add_learner": AddLearner,
    "promote": Promote,
    "demote": Demote,
    "remove": Remove,
    "transfer_leader": TransferLeader,
    "snapshot": FetchSnapshot,
}
_OP_NAMES: Final = {cls: name for name, cls in _OPS.items()}
_FIELDS: Final = {cls: frozenset(f.name for f in attrs.fields(cls)) for cls in _OPS.values()}
_REQUIRED: Final = {
    cls: frozenset(f.name for f in attrs.fields(cls) if f.default is attrs.NOTHING)
    for cls in _OPS.values()
}


def encode_request(request_id: int, request: Request) -> bytes:
    """Serialize a (valid, by construction) request under ``request_id``."""
    fields = attrs.asdict(request, recurse=False)
    return cbor2.dumps({"id": request_id, "op": _OP_NAMES[type(request)], **fields})


def _decode_map(
    data: bytes | str, max_bytes: int, max_items: int, max_depth: int
) -> dict[Any, Any]:
    """Decode one message to a map, or raise :exc:`FrameError` (close the connection).

    The work is bounded before anything is decoded: the size, then the item headers
    (:func:`~trio_raft.kv._strict.check_structure`: no tags, at most ``max_items`` items and
    ``max_depth`` levels), then the strict decoder peers use (no duplicate keys, only text or
    byte string map keys).
    """
    if isinstance(data, str):
        raise FrameError("text frames are not part of the protocol", CLOSE_UNSUPPORTED_DATA)
    if len(data) > max_bytes:
        raise FrameError(f"message of {len(data)} bytes exceeds {max_bytes}")
    try:
        check_structure(data, max_items=max_items, max_depth=max_depth)
        decoded = load_plain(data, max_bytes=max_bytes, max_depth=max_depth)
    except (StructureError, _CodecFrameError) as exc:
        raise FrameError(f"not a valid CBOR message: {str(exc)[:200]}") from None
    if not isinstance(decoded, dict):
        raise FrameError(f"a message must be a CBOR map, got {describe(decoded)}")
    return decoded


def _request_id(message: dict[object, object]) -> int:
    request_id = message.get("id")
    if type(request_id) is not int or not 0 <= request_id <= MAX_SEQ:
        raise FrameError(f"a message needs an int id from 0 to {MAX_SEQ}")
    return request_id


def decode_request(data: bytes | str) -> tuple[int, Request]:
    """Parse and validate one request message; return its id and the request.

    Raises:
        FrameError: unanswerable junk (not a CBOR map, no valid ``id``, a text frame): close.
        BadRequest: a map with a valid ``id`` that is not a valid request: answer it.
    """
    message = _decode_map(data, MAX_REQUEST_BYTES, _MAX_REQUEST_ITEMS, _MAX_REQUEST_DEPTH)
    request_id = _request_id(message)
    op = message.get("op")
    cls = _OPS.get(op) if isinstance(op, str) else None
    if cls is None:
        raise BadRequest(request_id, f"unknown op {describe(op)}; expected one of {sorted(_OPS)}")
    fields = {k: v for k, v in message.items() if k not in ("id", "op")}
    unknown = set(fields) - _FIELDS[cls]
    if unknown:
        names = ", ".join(sorted(describe(name) for name in unknown)[:8])
        raise BadRequest(request_id, f"unknown fields for {op!r}: {names}")
    missing = _REQUIRED[cls] - set(fields)
    if missing:
        raise BadRequest(request_id, f"missing fields for {op!r}: {', '.join(sorted(missing))}")
    try:
        return request_id, cls(**fields)
    except (ValueError, TypeError) as exc:
        raise BadRequest(request_id, f"invalid {op!r} request: {str(exc)[:200]}") from None


# -- responses ---------------------------------------------------------------------------------


@final
@attrs.frozen
class Ok:
    """A successful response; ``result`` is plain CBOR data whose shape depends on the op."""

    id: int
    result: object


@final
@attrs.frozen
class Failure:
    """An error response."""

    id: int
    code: ErrorCode
    message: str
    leader: str | None = None
    """Only for ``not_leader``: the leader's client URL, if known."""


Response = Ok | Failure


def encode_response(response: Response) -> bytes:
    """Serialize a response."""
    if isinstance(response, Ok):
        return cbor2.dumps({"id": response.id, "ok": response.result})
    error: dict[str, object] = {"code": response.code.value, "message": response.message}
    if response.code is ErrorCode.NOT_LEADER:
        error["leader"] = response.leader
    return cbor2.dumps({"id": response.id, "error": error})


def decode_response(data: bytes | str) -> Response:
    """Parse one response message; the shape of an ``ok`` result is checked by the caller.

    Raises:
        FrameError: not a valid response (the connection is then useless: close it).
    """
    message = _decode_map(data, MAX_RESPONSE_BYTES, _MAX_RESPONSE_ITEMS, _MAX_RESPONSE_DEPTH)
    request_id = _request_id(message)
    if set(message) == {"id", "ok"}:
        return Ok(request_id, message["ok"])
    error = message.get("error")
    if set(message) != {"id", "error"} or not isinstance(error, dict):
        raise FrameError("a response is {id, ok} or {id, error}")
    code, text, leader = error.get("code"), error.get("message"), error.get("leader")
    if type(code) is not str:
        raise FrameError(f"malformed error code in response {request_id}")
    if set(error) - {"code", "message", "leader"} or type(text) is not str:
        raise FrameError(f"malformed error in response {request_id}")
    try:
        error_code = ErrorCode(code)
    except ValueError:
        raise FrameError(f"unknown error code {describe(code)}") from None
    if leader is not None and type(leader) is not str:
        raise FrameError("an error's leader must be a URL or None")
    return Failure(request_id, error_code, text, leader)
