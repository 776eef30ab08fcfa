"""The wire format: every Raft message as one versioned CBOR envelope.

A frame is one CBOR map with exactly these keys (short, since heartbeats are frequent):

======  =========================================================================================
key     value
======  =========================================================================================
``v``   protocol version, an int (:data:`PROTOCOL_VERSION`)
``c``   cluster id, a str (a frame for another cluster is rejected)
``s``   sender node id, a non-empty str
``d``   receiver node id, a non-empty str, different from the sender
``t``   message type code, an int (see :data:`TYPE_CODES`)
``b``   body: an array of the message's remaining fields, in the order of :data:`BODY_FIELDS`
======  =========================================================================================

An :class:`~trio_raft.AppendRequest`'s entries are an array of compact arrays
``[term, index, kind, command]``, encoded once per message. Commands are plain CBOR values
(see :func:`check_command` for the exact data model), except that the command of a ``CONFIG``
entry (kind 2) is a :class:`~trio_raft.Membership` in its plain form
(:meth:`~trio_raft.Membership.to_plain`), as is a :class:`~trio_raft.SnapshotRequest`'s
``membership``; the decoder rebuilds it with :meth:`~trio_raft.Membership.from_plain`, whose
checks bound it (at most 64 members, addresses of at most 1024 bytes).

Decoding is strict, because frames come from the network: the size cap is checked before a byte
is decoded; the CBOR is decoded plainly (no tag or object hooks), definite lengths only, without
duplicate map keys, with only text or byte string map keys and no trailing bytes; the layout is
checked here and every field by the constructors of the frozen :mod:`trio_raft._messages` types,
the one schema that :func:`encode` checks too (so the two cannot drift apart). Anything wrong
raises :class:`FrameError` naming the field and the problem; nothing else is ever raised and no
partly built message escapes.

Canonical form: a message survives ``decode(encode(m))`` unchanged except inside commands, where
tuples come back as lists (CBOR has one array type) and subclasses of the allowed types come
back as the base type (a membership's addresses included). Compare commands after a round trip,
not before.

Protocol version 2 (this one) added :class:`~trio_raft.TimeoutNow`, ``VoteRequest.transfer``,
``SnapshotRequest.membership`` and ``CONFIG`` entries; version 1 frames are refused, and so are
version 1 peers in the handshake (see :doc:`wire`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Final

import cbor2

from ._errors import RaftError
from ._messages import (
    AppendRequest,
    AppendResponse,
    Message,
    SnapshotRequest,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    validate,
)
from ._types import MAX_ID_CHARS, EncodedCommand, Entry, EntryKind, FieldError, Membership, short

__all__ = [
    "BODY_FIELDS",
    "MAX_COMMAND_DEPTH",
    "MAX_ID_CHARS",
    "PROTOCOL_VERSION",
    "TYPE_CODES",
    "EncodedCommand",
    "FrameError",
    "cbor_head",
    "cbor_uint",
    "check_command",
    "command_bytes",
    "decode",
    "encode",
    "encode_command",
    "load_plain",
]

PROTOCOL_VERSION: Final = 2
"""The version of the envelope and body layout; a frame with any other ``v`` is rejected.
Version 2 added membership changes and leadership transfer; nodes of version 1 and 2 refuse
each other (the handshake's subprotocol is ``trio-raft.<version>``)."""

MAX_COMMAND_DEPTH: Final = 32
"""Commands may nest lists and maps at most this deep."""

_ENVELOPE_DEPTH: Final = 4  # map > body array > entries array > entry array > command
_PLAIN_DEPTH: Final = 2  # a membership's plain form > its addresses map > an address
_COMMAND_INT_MIN: Final = -(2**64)  # the integers CBOR encodes without a bignum tag
_COMMAND_INT_MAX: Final = 2**64 - 1
_ENVELOPE_KEYS: Final = frozenset("vcsdtb")
_DECODED_TYPES: Final = frozenset({type(None), bool, int, float, str, bytes, list, dict})

TYPE_CODES: Final[dict[type[Message], int]] = {
    VoteRequest: 1,
    VoteResponse: 2,
    AppendRequest: 3,
    AppendResponse: 4,
    SnapshotRequest: 5,
    SnapshotResponse: 6,
    TimeoutNow: 7,
}
"""The ``t`` of each message type."""

BODY_FIELDS: Final[dict[type[Message], tuple[str, ...]]] = {
    VoteRequest: ("term", "last_log_index", "last_log_term", "pre_vote", "transfer"),
    VoteResponse: ("term", "granted", "pre_vote"),
    AppendRequest: ("term", "prev_index", "prev_term", "commit", "seq", "entries"),
    AppendResponse: (
        "term",
        "success",
        "match_index",
        "rejected_index",
        "conflict_term",
        "conflict_index",
        "last_index",
        "seq",
    ),
    SnapshotRequest: ("term", "index", "snapshot_term", "offset", "data", "done", "membership"),
    SnapshotResponse: ("term", "index", "offset", "done"),
    TimeoutNow: ("term",),
}
"""The body array of each message type: its attribute values in this order."""


class FrameError(RaftError):
    """A frame (or a message to be framed) breaks the wire format (see :doc:`wire`).

    Raised when decoding bytes that are not a valid frame for this cluster (the message says
    which rule failed, e.g. ``AppendRequest.entries[2].index: expected 8 (contiguous after
    prev_index 5), got 9``), and when encoding a message that cannot be framed (a command outside
    the wire's data model). A transport that receives an invalid frame drops the connection that
    carried it and counts it; the node never sees the frame. A transport asked to send an
    unencodable message drops it, counts it and logs this error.
    """


# -- encoding ---------------------------------------------------------------------------------


def encode(message: Message, *, cluster_id: str, checked: bool = False) -> bytes:
    """Frame ``message`` for ``cluster_id``.

    ``checked`` skips :func:`~trio_raft._messages.validate` (about 40% of the cost of a small
    AppendRequest): for a message its constructor checked and nobody altered since, as every
    message a node builds is (the transport's ``send``). The receiver's :func:`decode` checks
    every frame in any case.

    Every frame this returns is accepted by :func:`decode` with the same ``cluster_id`` and a
    large enough ``max_bytes``. The bytes are exactly ``cbor2.dumps`` of the envelope, but
    built by hand around each entry's cached command encoding (:func:`command_bytes`), so a
    command is encoded once however many followers it is sent to (CBOR is concatenative: an
    array is its header followed by its items' encodings).

    Raises:
        FrameError: a field breaks the schema :func:`decode` enforces (only possible for a
            message whose construction checks were bypassed), a command is not wire-encodable
            (see :func:`check_command`), or the message type has no code in this protocol
            version.
    """
    cls = type(message)
    if cls not in TYPE_CODES:
        raise FrameError(
            f"{cls.__name__} has no wire encoding (protocol version {PROTOCOL_VERSION})"
        )
    if not checked:
        try:
            validate(message)  # the checks decode runs, for messages that skipped construction's
        except FieldError as exc:
            raise FrameError(str(exc)) from None
    try:
        parts = [
            _ENVELOPE_HEAD,
            _text(cluster_id),
            b"\x61s",
            _text(message.src),
            b"\x61d",
            _text(message.dst),
            _TYPE_AND_BODY[cls],
        ]
    except UnicodeEncodeError as exc:  # a str with lone surrogates is not UTF-8 encodable
        raise FrameError(f"cannot encode {cls.__name__}: {exc}") from exc
    append = parts.append
    for name in BODY_FIELDS[cls]:
        value = getattr(message, name)
        if type(value) is int:  # the schema bounds every int field to [0, 2**63 - 1]
            append(_uint(value))
        elif type(value) is bool:
            append(b"\xf5" if value else b"\xf4")
        elif isinstance(value, bytes):  # a subclass too, as the schema allows
            append(_head(_BYTES, len(value)))
            append(bytes(value))
        elif name == "entries":
            _append_entries(parts, value)
        elif name == "membership":
            plain = _plain_membership(value, f"{cls.__name__}.membership")
            append(_dumps(plain, f"{cls.__name__}.membership"))
        else:  # validate() allows nothing else
            raise AssertionError(f"{cls.__name__}.{name}: no encoding for {type(value)}")
    return b"".join(parts)


def _append_entries(parts: list[bytes], entries: tuple[Entry, ...]) -> None:
    """Each entry as ``[term, index, kind, command]`` around its cached command encoding."""
    parts.append(_head(_ARRAY, len(entries)))
    append = parts.append
    for i, e in enumerate(entries):
        append(b"\x84" + _uint(e.term) + _uint(e.index) + _KIND_BYTES[e.kind])
        data = getattr(e, "_encoded", None)  # unset in an entry built without __init__
        append(data if data is not None else command_bytes(e, f"AppendRequest.entries[{i}]"))


def encode_command(command: object, *, where: str = "command") -> EncodedCommand:
    """Check ``command`` against the wire's data model (:func:`check_command`) and encode it,
    once: an :class:`Entry` built with the result as its command keeps the encoding for the
    WAL, the wire and the size accounting (:func:`command_bytes`).

    Raises:
        FrameError: the command is outside the data model, or cannot be encoded (a str
            holding lone surrogates).
    """
    check_command(command, where=where)
    return EncodedCommand(command, _dumps(command, where))


def command_bytes(entry: Entry, where: str = "entry") -> bytes:
    """The CBOR encoding of ``entry``'s command (a configuration entry's membership in its
    plain form, a no-op's ``null``), checked against the wire's data model; computed once per
    entry and cached in it (an entry that came from a proposal already holds it).

    Raises:
        FrameError: the command is outside the data model or cannot be encoded; nothing is
            cached then.
    """
    data: bytes | None = getattr(entry, "_encoded", None)  # unset if built without __init__
    if data is not None:
        return data
    if entry.kind is EntryKind.CONFIG:
        plain = _plain_membership(entry.command, f"{where}.command")
        data = _dumps(plain, f"{where}.command")
    elif entry.kind is EntryKind.NOOP:
        data = b"\xf6"  # null: an Entry invariant
    else:
        data = encode_command(entry.command, where=f"{where}.command").data
    object.__setattr__(entry, "_encoded", data)
    return data


def _dumps(value: object, where: str) -> bytes:
    try:
        return cbor2.dumps(value)
    except Exception as exc:  # e.g. a str with lone surrogates is not UTF-8 encodable
        raise FrameError(f"{where}: cannot be encoded: {exc}") from exc


_UINT: Final = 0
_BYTES: Final = 2
_TEXT: Final = 3
_ARRAY: Final = 4
_SMALL_UINTS: Final = tuple(bytes((n,)) for n in range(24))


def _head(major: int, n: int) -> bytes:
    """A CBOR head: major type ``major`` with argument ``n``, in its shortest form (as
    ``cbor2`` writes it)."""
    if n < 24:
        return bytes((major << 5 | n,))
    if n < 0x100:
        return bytes((major << 5 | 24, n))
    if n < 0x10000:
        return bytes((major << 5 | 25, n >> 8, n & 0xFF))
    if n < 0x100000000:
        return bytes((major << 5 | 26,)) + n.to_bytes(4, "big")
    return bytes((major << 5 | 27,)) + n.to_bytes(8, "big")


def _uint(n: int) -> bytes:
    return _SMALL_UINTS[n] if n < 24 else _head(_UINT, n)


def _text(value: str) -> bytes:
    data = value.encode("utf-8")
    return _head(_TEXT, len(data)) + data


def cbor_head(major: int, n: int) -> bytes:
    """A CBOR head (major type ``major``, argument ``n`` < 2**64) in its shortest form, as
    ``cbor2`` writes it."""
    return _head(major, n)


def cbor_uint(n: int) -> bytes:
    """The CBOR encoding of the unsigned integer ``n`` (< 2**64), as ``cbor2`` writes it: for
    the WAL, which builds its records around :func:`command_bytes` as :func:`encode` does."""
    return _uint(n)


_ENVELOPE_HEAD: Final = b"\xa6" + _text("v") + _uint(PROTOCOL_VERSION) + _text("c")
_TYPE_AND_BODY: Final = {
    cls: _text("t") + _uint(code) + _text("b") + _head(_ARRAY, len(BODY_FIELDS[cls]))
    for cls, code in TYPE_CODES.items()
}
_KIND_BYTES: Final = {kind: _uint(int(kind)) for kind in EntryKind}


def _plain_membership(membership: object, where: str) -> object:
    """The plain form of a membership to be framed, checked as the decoder will check it (so a
    membership whose construction checks were bypassed is refused here, not by the peer)."""
    try:
        plain = membership.to_plain()  # type: ignore[attr-defined]  # validate() checked it
        Membership.from_plain(plain)
    except FieldError as exc:
        raise FrameError(f"{where}: {exc}") from None
    except Exception as exc:  # a bypassed membership may hold anything
        raise FrameError(f"{where}: cannot be encoded: {exc!r:.200}") from None
    return plain


def check_command(command: object, *, where: str = "command") -> None:
    """Check that ``command`` can travel on the wire (and be stored as CBOR).

    The data model: ``None``, :class:`bool`, :class:`int` in ``[-2**64, 2**64 - 1]``,
    :class:`float`, :class:`str`, :class:`bytes`, :class:`list`/:class:`tuple`, and
    :class:`dict` with :class:`str` or :class:`bytes` keys, nested at most
    :data:`MAX_COMMAND_DEPTH` deep. Tuples arrive as lists. Anything else (sets, datetimes,
    arbitrary objects, CBOR tags, integer map keys) is refused: integer keys because a map
    of colliding integer keys is a cheap denial of service on the decoding side.

    Raises:
        FrameError: the command is outside that model; the message gives the path to the value.
    """
    _check_value(command, where, 0, None)


def address_size(address: object, *, where: str = "address") -> int:
    """Check a member's address against the command data model and return its encoded size.

    Raises:
        FrameError: the address is outside the data model of :func:`check_command`.
    """
    check_command(address, where=where)
    try:
        return len(cbor2.dumps(address))
    except Exception as exc:  # e.g. a str with lone surrogates
        raise FrameError(f"{where}: cannot be encoded: {exc}") from exc


class _Invalid(Exception):
    """A value outside the command model; the path to it is collected while unwinding, so the
    common, valid case builds no strings."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.path: list[str] = []


def _check_value(value: object, where: str, depth: int, budget: list[int] | None) -> None:
    try:
        _walk(value, depth, budget)
    except _Invalid as exc:
        raise FrameError(f"{where}{''.join(reversed(exc.path))}: {exc.reason}") from None


_SCALARS: Final = frozenset({type(None), bool, float, str, bytes})


def _walk(value: object, depth: int, budget: list[int] | None) -> None:
    """Check one value of a command; ``budget`` (decoding only) counts values left."""
    kind = type(value)
    if budget is not None:
        budget[0] -= 1
        if budget[0] < 0:  # shared references (CBOR tag 28/29) can build cycles and DAGs
            raise _Invalid("command has more values than the frame has bytes")
        if kind not in _DECODED_TYPES:
            # Decoded values must be exactly these: cbor2 builds other types for tags
            # (datetime, Decimal, set, CBORTag, ...) and simple values, none in the model.
            raise _Invalid(f"{_kind(value)} is not allowed in a command (a CBOR tag?)")
    if kind in _SCALARS or isinstance(value, (bool, float, str, bytes)):
        return
    if isinstance(value, int):
        if not _COMMAND_INT_MIN <= value <= _COMMAND_INT_MAX:
            raise _Invalid("integer out of range [-2**64, 2**64 - 1]")
        return
    if not isinstance(value, (list, tuple, dict)):
        raise _Invalid(
            f"{kind.__name__} is not allowed in a command (allowed: None, bool, int, float, "
            "str, bytes, list, tuple, dict with str or bytes keys)"
        )
    if depth >= MAX_COMMAND_DEPTH:
        raise _Invalid(f"nested deeper than {MAX_COMMAND_DEPTH} levels")
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, (str, bytes)):
                raise _Invalid(f"map key of type {type(key).__name__} (only str or bytes keys)")
        labelled: Iterable[tuple[object, object]] = value.items()
    else:
        labelled = enumerate(value)
    for label, item in labelled:
        if type(item) in _SCALARS:  # the common case, without a call
            if budget is not None:
                budget[0] -= 1
                if budget[0] < 0:
                    raise _Invalid("command has more values than the frame has bytes")
            continue
        try:
            _walk(item, depth + 1, budget)
        except _Invalid as exc:
            exc.path.append(f"[{label!r:.40}]")
            raise


# -- decoding ---------------------------------------------------------------------------------


def load_plain(data: object, *, max_bytes: int, max_depth: int) -> object:
    """Decode one plain CBOR item from ``data``, strictly.

    Checks, in order: ``data`` is :class:`bytes`; its length is at most ``max_bytes`` (before
    decoding anything); it is exactly one well-formed CBOR item (no trailing bytes) with
    definite lengths, no duplicate map keys, only text or byte string map keys, and at most
    ``max_depth`` nested containers. No tag or object hooks are installed.

    Raises:
        FrameError: any of the above fails.
    """
    if not isinstance(data, bytes):
        raise FrameError(f"expected a binary frame, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise FrameError(f"frame of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    stream = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            stream,
            max_depth=max_depth,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
        )
        value = decoder.decode()
    except Exception as exc:  # cbor2 raises CBORDecodeError, but semantic decoders may not
        raise FrameError(f"not well-formed CBOR: {exc}") from None
    if stream.tell() != len(data):
        raise FrameError(f"{len(data) - stream.tell()} trailing bytes after the CBOR item")
    return value


def decode(data: bytes, *, cluster_id: str, max_bytes: int) -> Message:
    """Validate one frame of ``cluster_id`` and return the message it carries.

    The frame's layout (envelope, body array, entry arrays, commands) is checked here; the
    fields themselves are checked by the message types' constructors (the one schema of
    :mod:`trio_raft._messages`), exactly as :func:`encode` checks them.

    Args:
        data: The frame, as received.
        cluster_id: This node's cluster; frames of other clusters are rejected.
        max_bytes: Frames longer than this are rejected before decoding.

    Returns:
        A fully validated message. It does not check that the sender or receiver belong to the
        cluster; the transport checks them against the authenticated connection.

    Raises:
        FrameError: the frame is invalid; the message names the rule broken. No other exception
            escapes.
    """
    envelope = load_plain(
        data, max_bytes=max_bytes, max_depth=_ENVELOPE_DEPTH + _PLAIN_DEPTH + MAX_COMMAND_DEPTH
    )
    if not isinstance(envelope, dict):
        raise FrameError(f"envelope: expected a map, got {_kind(envelope)}")
    version = envelope.get("v")  # first: another version may have other keys
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise FrameError(
            f"envelope: unsupported protocol version {short(version)} (this node speaks "
            f"{PROTOCOL_VERSION}; all nodes of a cluster must speak the same version)"
        )
    keys = set(envelope)
    if keys != _ENVELOPE_KEYS:
        problems = []
        if missing := sorted(map(str, _ENVELOPE_KEYS - keys)):
            problems.append(f"missing key {', '.join(missing)}")
        if extra := sorted(short(k) for k in keys - _ENVELOPE_KEYS):
            problems.append(f"unexpected key {', '.join(extra)}")
        raise FrameError(f"envelope: {'; '.join(problems)} (the keys are v, c, s, d, t, b)")
    cluster = envelope["c"]
    if type(cluster) is not str or cluster != cluster_id:
        raise FrameError(f"envelope: frame for cluster {short(cluster)}, not {cluster_id!r}")
    code = envelope["t"]
    cls = _CLASS_BY_CODE.get(code) if type(code) is int else None
    if cls is None:
        raise FrameError(f"envelope: unknown message type {short(code)}")
    body = envelope["b"]
    name = cls.__name__
    fields = BODY_FIELDS[cls]
    if type(body) is not list:
        raise FrameError(f"{name}: body must be an array, got {_kind(body)}")
    if len(body) != len(fields):
        raise FrameError(
            f"{name}: body has {len(body)} fields, expected {len(fields)} ({', '.join(fields)})"
        )
    values = dict(zip(fields, body, strict=True))
    late: FrameError | None = None  # a bad membership, reported after the fields before it
    if cls is AppendRequest:
        values["entries"] = _entries(values["entries"], f"{name}.entries", [len(data)])
    elif cls is SnapshotRequest:
        try:
            values["membership"] = _membership(
                values["membership"], f"{name}.membership", [len(data)]
            )
        except FrameError as exc:
            late = exc  # the constructor refuses the raw value too, but checks the others first
    try:
        # src and dst are the envelope's s and d; every field is checked by the constructor.
        return cls(src=envelope["s"], dst=envelope["d"], **values)
    except FieldError as exc:
        if late is not None and exc.path == "membership":
            raise late from None
        raise FrameError(str(exc)) from None


_CLASS_BY_CODE: Final = {code: cls for cls, code in TYPE_CODES.items()}
_ENTRY_KINDS: Final = {int(k): k for k in EntryKind}


def _entries(value: object, where: str, budget: list[int]) -> tuple[Entry, ...]:
    """The entry arrays of an AppendRequest body as :class:`Entry` values (each checked by
    its constructor); ``budget`` counts the command values the frame's size allows."""
    if type(value) is not list:
        raise FrameError(f"{where}: expected an array, got {_kind(value)}")
    entries = []
    for i, raw in enumerate(value):  # the hot loop: error paths build their strings lazily
        if type(raw) is not list or len(raw) != 4:
            raise FrameError(f"{where}[{i}]: expected an array [term, index, kind, command]")
        term, index, kind_code, command = raw
        kind = _ENTRY_KINDS.get(kind_code) if type(kind_code) is int else None
        if kind is None:
            raise FrameError(f"{where}[{i}].kind: unknown entry kind {short(kind_code)}")
        late: FrameError | None = None  # a bad membership, reported after term and index
        if kind is EntryKind.CONFIG:  # rare; its command is then checked here
            try:
                command = _membership(command, f"{where}[{i}].command", budget)
            except FrameError as exc:
                late = exc  # Entry refuses the raw value too, after checking term and index
        try:
            entries.append(Entry(term, index, command, kind))
        except FieldError as exc:
            if late is not None and exc.path == "command":
                raise late from None
            raise FrameError(f"{where}[{i}].{exc.path}: {exc.reason}") from None
        if kind is EntryKind.CONFIG:
            continue
        try:
            _walk(command, 0, budget)
        except _Invalid as exc:
            path = "".join(reversed(exc.path))
            raise FrameError(f"{where}[{i}].command{path}: {exc.reason}") from None
        if kind is EntryKind.COMMAND:
            # Checked: encode it now, once, for the follower's WAL and size accounting (not
            # the received bytes: shared or string references may tie them to the frame).
            object.__setattr__(entries[-1], "_encoded", _dumps(command, f"{where}[{i}].command"))
    return tuple(entries)


def _membership(value: object, where: str, budget: list[int]) -> Membership:
    """A membership in plain form, as decoded: its values are counted against ``budget`` and
    checked against the command model first (addresses may nest as deep as a command), so
    that :meth:`Membership.from_plain` only ever sees a small, plain tree."""
    try:
        _walk(value, -_PLAIN_DEPTH, budget)
    except _Invalid as exc:
        raise FrameError(f"{where}{''.join(reversed(exc.path))}: {exc.reason}") from None
    try:
        return Membership.from_plain(value)
    except FieldError as exc:
        raise FrameError(f"{where}: {exc}") from None


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__
