"""The Raft RPCs, one frozen attrs class each, and the one schema they share with the wire.

Every message names its sender (``src``), its receiver (``dst``) and the sender's ``term``; the
transport needs nothing else to route it. Requests and their responses are plain values: a node
never waits for a response, it reacts to whatever arrives (etcd's model), so lost, duplicated and
reordered messages are all handled by the receiving rules in :mod:`trio_raft._core`.

The schema: every field has a validator below, and every message is checked as a whole after its
fields (:func:`validate`). The messages check themselves on construction (so the core cannot
build one the wire would refuse), :func:`trio_raft._codec.encode` runs :func:`validate` again
before framing (unless told the message is one a node constructed: the transport's send), and
:func:`trio_raft._codec.decode` builds messages only through their constructors. There is no
second list of rules to drift from this one.

========================  ======================================================================
kind of field             rule
========================  ======================================================================
node id (src, dst)        a :class:`str` of 1 to :data:`~trio_raft._types.MAX_ID_CHARS`
                          characters; ``src != dst``
term                      an :class:`int` (not a bool) in ``[0, MAX_TERM]`` (:data:`MAX_TERM`)
index, offset, seq        an :class:`int` (not a bool) in ``[0, MAX_INDEX]`` (``2**63 - 1``)
snapshot index and term   as above, but at least 1 (so is a :class:`TimeoutNow`'s term)
flag                      a :class:`bool`
data                      :class:`bytes`
entries                   a :class:`tuple` of :class:`~trio_raft.Entry`, indexes contiguous from
                          ``prev_index + 1``, terms non-decreasing from ``prev_term`` and at most
                          ``term``; a ``CONFIG`` entry's command is a
                          :class:`~trio_raft.Membership`, any other's is not
membership                a :class:`~trio_raft.Membership` (its own constructor checked it)
========================  ======================================================================

Whole-message rules: ``src != dst``; an AppendEntries' entries as above and ``prev_term <=
term``; a snapshot's ``snapshot_term <= term``; a vote request with ``transfer`` is not a PreVote.

Cost: the checks are type tests and comparisons, a few hundred nanoseconds per message; the
entries of an AppendEntries are checked with C-level ``map`` calls, not a Python loop (a
``CONFIG`` entry, which is rare, is checked on its own).
"""

from __future__ import annotations

import operator
from typing import TypeAlias

import attrs

from ._types import (
    MAX_ID_CHARS,
    MAX_INDEX,
    MAX_TERM,
    Entry,
    EntryKind,
    FieldError,
    Membership,
    NodeId,
    short,
)

__all__ = [
    "MESSAGE_TYPES",
    "AppendRequest",
    "AppendResponse",
    "Message",
    "SnapshotRequest",
    "SnapshotResponse",
    "TimeoutNow",
    "VoteRequest",
    "VoteResponse",
    "validate",
]

# -- field rules ------------------------------------------------------------------------------
# attrs validators: (instance, attribute, value). The error path alone builds strings.


def _node_id(inst: object, attribute: attrs.Attribute[str], value: object) -> None:
    if type(value) is not str or not 1 <= len(value) <= MAX_ID_CHARS:
        reason = f"expected a str of 1 to {MAX_ID_CHARS} characters, got {short(value)}"
        raise FieldError(type(inst).__name__, attribute.name, reason)


def _term(inst: object, attribute: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or not 0 <= value <= MAX_TERM:
        reason = f"expected an integer in [0, 2**62 (MAX_TERM)], got {short(value)}"
        raise FieldError(type(inst).__name__, attribute.name, reason)


def _positive_term(inst: object, attribute: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or not 1 <= value <= MAX_TERM:
        reason = f"expected an integer in [1, 2**62 (MAX_TERM)], got {short(value)}"
        raise FieldError(type(inst).__name__, attribute.name, reason)


def _index(inst: object, attribute: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or not 0 <= value <= MAX_INDEX:
        reason = f"expected an integer in [0, 2**63 - 1], got {short(value)}"
        raise FieldError(type(inst).__name__, attribute.name, reason)


def _positive_index(inst: object, attribute: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or not 1 <= value <= MAX_INDEX:
        reason = f"expected an integer in [1, 2**63 - 1], got {short(value)}"
        raise FieldError(type(inst).__name__, attribute.name, reason)


def _bool(inst: object, attribute: attrs.Attribute[bool], value: object) -> None:
    if type(value) is not bool:
        raise FieldError(
            type(inst).__name__, attribute.name, f"expected a bool, got {short(value)}"
        )


def _bytes(inst: object, attribute: attrs.Attribute[bytes], value: object) -> None:
    if not isinstance(value, bytes):
        reason = f"expected a byte string, got {type(value).__name__}"
        raise FieldError(type(inst).__name__, attribute.name, reason)


def _entries(inst: object, attribute: attrs.Attribute[tuple[Entry, ...]], value: object) -> None:
    if type(value) is not tuple:
        reason = f"expected a tuple of Entry, got {type(value).__name__}"
        raise FieldError(type(inst).__name__, attribute.name, reason)
    if value and {*map(type, value)} != {Entry}:
        i = next(i for i, e in enumerate(value) if type(e) is not Entry)
        reason = f"expected an Entry, got {type(value[i]).__name__}"
        raise FieldError(type(inst).__name__, f"{attribute.name}[{i}]", reason)


def _membership(inst: object, attribute: attrs.Attribute[Membership], value: object) -> None:
    if not isinstance(value, Membership):
        reason = f"expected a Membership, got {type(value).__name__}"
        raise FieldError(type(inst).__name__, attribute.name, reason)


_INDEXES = operator.attrgetter("index")
_TERMS = operator.attrgetter("term")
_KINDS = operator.attrgetter("kind")
_COMMANDS = operator.attrgetter("command")


# -- whole-message rules ----------------------------------------------------------------------


def _check_endpoints(m: Message) -> None:
    if m.src == m.dst:
        raise FieldError(type(m).__name__, "dst", f"sender and receiver are both {m.src!r}")


def _check_append(m: AppendRequest) -> None:
    """Invariants of any AppendEntries a leader builds from its log (Log Matching relies on
    entries being contiguous; log terms never decrease and never exceed the leader's term)."""
    _check_endpoints(m)
    if m.prev_term > m.term:
        raise FieldError("AppendRequest", "prev_term", f"{m.prev_term} exceeds the term {m.term}")
    entries = m.entries
    if not entries:
        return
    first = m.prev_index + 1
    indexes = list(map(_INDEXES, entries))
    terms = list(map(_TERMS, entries))
    if (
        indexes == list(range(first, first + len(indexes)))
        and m.prev_term <= terms[0]
        and terms[-1] <= m.term
        and terms == sorted(terms)
    ):
        return
    previous_term = m.prev_term
    for i, (index, term) in enumerate(zip(indexes, terms, strict=True)):
        if index != first + i:
            reason = (
                f"expected {first + i} (contiguous after prev_index {m.prev_index}), got {index}"
            )
            raise FieldError("AppendRequest", f"entries[{i}].index", reason)
        if not previous_term <= term <= m.term:
            reason = (
                f"{term} is outside [{previous_term}, {m.term}] (log terms never decrease nor "
                "exceed the leader's term)"
            )
            raise FieldError("AppendRequest", f"entries[{i}].term", reason)
        previous_term = term
    raise AssertionError("unreachable: the fast check failed but no entry is invalid")


def _check_vote(m: VoteRequest) -> None:
    _check_endpoints(m)
    if m.transfer and m.pre_vote:
        reason = "a leadership transfer's vote request is never a PreVote"
        raise FieldError("VoteRequest", "transfer", reason)


def _check_snapshot(m: SnapshotRequest) -> None:
    _check_endpoints(m)
    if m.snapshot_term > m.term:
        reason = f"{m.snapshot_term} exceeds the term {m.term}"
        raise FieldError("SnapshotRequest", "snapshot_term", reason)


def validate(message: Message) -> None:
    """Check every field of ``message`` and the message as a whole, as construction does.

    For messages built in ways that skip the constructor's checks (:func:`object.__setattr__`
    on a frozen instance, :func:`attrs.validators.set_disabled`); the codec calls it before
    encoding. The entries of an :class:`AppendRequest` are checked too.

    Raises:
        FieldError: a rule of the schema is broken (a :class:`ValueError`).
    """
    attrs.validate(message)
    if type(message) is AppendRequest and message.entries and not _entries_look_valid(message):
        for entry in message.entries:  # find the culprit, with the constructor's own message
            attrs.validate(entry)
            entry.__attrs_post_init__()
    message.__attrs_post_init__()


def _entries_look_valid(m: AppendRequest) -> bool:
    """The :class:`Entry` rules for every entry, in C-level passes instead of a call per
    entry; given that :func:`_check_append` runs next (contiguous indexes from
    ``prev_index + 1``, terms non-decreasing up to the message's term), it is exact."""
    entries = m.entries
    indexes = list(map(_INDEXES, entries))
    terms = list(map(_TERMS, entries))
    kinds = list(map(_KINDS, entries))
    if (
        {*map(type, indexes)} != {int}
        or {*map(type, terms)} != {int}
        or {*map(type, kinds)} != {EntryKind}
        or min(terms) < 1
        or max(terms) > MAX_TERM
        or min(indexes) < 1
        or max(indexes) > MAX_INDEX
    ):
        return False
    if EntryKind.NOOP in kinds and any(
        e.command is not None for e in entries if e.kind is EntryKind.NOOP
    ):
        return False
    if EntryKind.CONFIG in kinds:  # rare: each entry on its own
        return all(
            (e.kind is EntryKind.CONFIG) == isinstance(e.command, Membership) for e in entries
        )
    # No CONFIG entry: no command may be a Membership (checked once per distinct type).
    return not any(issubclass(t, Membership) for t in {*map(type, map(_COMMANDS, entries))})


# -- the messages -----------------------------------------------------------------------------


@attrs.frozen(slots=True)
class VoteRequest:
    """RequestVote (Raft §5.2), or a PreVote probe (thesis §9.6) when ``pre_vote`` is set.

    A PreVote carries the term the candidate *would* use (its term + 1) without having adopted it.

    Raises:
        ValueError: on construction, if a field breaks the schema (see the module docstring).
    """

    src: NodeId = attrs.field(validator=_node_id)
    """Sender."""
    dst: NodeId = attrs.field(validator=_node_id)
    """Receiver."""
    term: int = attrs.field(validator=_term)
    """The sender's term (see the class docstring for PreVote)."""
    last_log_index: int = attrs.field(validator=_index)
    """Index of the candidate's last log entry (0 if empty)."""
    last_log_term: int = attrs.field(validator=_term)
    """Term of the candidate's last log entry (0 if empty)."""
    pre_vote: bool = attrs.field(default=False, validator=_bool)
    """True for a PreVote probe: receivers neither change term nor record a vote."""
    transfer: bool = attrs.field(default=False, validator=_bool)
    """Sent in answer to :class:`TimeoutNow` (a leadership transfer): receivers ignore their
    lease for it. Never set on a PreVote."""

    def __attrs_post_init__(self) -> None:
        _check_vote(self)


@attrs.frozen(slots=True)
class VoteResponse:
    """The answer to a :class:`VoteRequest`.

    Raises:
        ValueError: on construction, if a field breaks the schema (see the module docstring).
    """

    src: NodeId = attrs.field(validator=_node_id)
    """Sender."""
    dst: NodeId = attrs.field(validator=_node_id)
    """Receiver."""
    term: int = attrs.field(validator=_term)
    """The voter's term; for a granted PreVote, the term of the request."""
    granted: bool = attrs.field(validator=_bool)
    """Whether the vote (or PreVote) is granted."""
    pre_vote: bool = attrs.field(default=False, validator=_bool)
    """Whether this answers a PreVote."""

    def __attrs_post_init__(self) -> None:
        _check_endpoints(self)


@attrs.frozen(slots=True)
class AppendRequest:
    """AppendEntries (Raft §5.3); a heartbeat is one with no entries.

    Raises:
        ValueError: on construction, if a field breaks the schema (see the module docstring).
    """

    src: NodeId = attrs.field(validator=_node_id)
    """Sender."""
    dst: NodeId = attrs.field(validator=_node_id)
    """Receiver."""
    term: int = attrs.field(validator=_term)
    """The sender's term (see the class docstring for PreVote)."""
    prev_index: int = attrs.field(validator=_index)
    """Index of the entry just before ``entries``."""
    prev_term: int = attrs.field(validator=_term)
    """Term of the entry at ``prev_index`` (0 when ``prev_index`` is 0)."""
    entries: tuple[Entry, ...] = attrs.field(validator=_entries)
    """Entries to append after ``prev_index``; empty for a heartbeat."""
    commit: int = attrs.field(validator=_index)
    """The leader's commit index, capped by the receiver to what it has verified."""
    seq: int = attrs.field(default=0, validator=_index)
    """The leader's heartbeat sequence when sent; echoed back to confirm leadership (ReadIndex)."""

    def __attrs_post_init__(self) -> None:
        _check_append(self)


@attrs.frozen(slots=True)
class AppendResponse:
    """The answer to an :class:`AppendRequest`.

    On success ``match_index`` is the last index the follower now shares with the leader. On
    rejection ``conflict_term``/``conflict_index`` let the leader skip a whole term per round trip
    (the fast back-up of Raft §5.3): ``conflict_term`` is the follower's term at the rejected
    ``prev_index`` (0 when its log is too short) and ``conflict_index`` the first index the leader
    should try next.

    Raises:
        ValueError: on construction, if a field breaks the schema (see the module docstring).
    """

    src: NodeId = attrs.field(validator=_node_id)
    """Sender."""
    dst: NodeId = attrs.field(validator=_node_id)
    """Receiver."""
    term: int = attrs.field(validator=_term)
    """The sender's term (see the class docstring for PreVote)."""
    success: bool = attrs.field(validator=_bool)
    """Whether the consistency check passed and the entries were appended."""
    match_index: int = attrs.field(default=0, validator=_index)
    """On success, the last index known to match the leader's log."""
    rejected_index: int = attrs.field(default=0, validator=_index)
    """The ``prev_index`` that was rejected; lets the leader discard stale rejections. 0 when
    the request was refused for its stale term, not for a log mismatch (``prev_index`` 0 always
    matches): the leader then only learns the higher ``term`` and steps down."""
    conflict_term: int = attrs.field(default=0, validator=_term)
    """On rejection, the follower's term at ``rejected_index`` (0 if its log is too short)."""
    conflict_index: int = attrs.field(default=0, validator=_index)
    """On rejection, the first index the leader should try next."""
    last_index: int = attrs.field(default=0, validator=_index)
    """The follower's last log index (a hint for the leader)."""
    seq: int = attrs.field(default=0, validator=_index)
    """The ``seq`` of the request answered."""

    def __attrs_post_init__(self) -> None:
        _check_endpoints(self)


@attrs.frozen(slots=True)
class SnapshotRequest:
    """InstallSnapshot (Raft §7): one chunk of the leader's snapshot, for a follower whose next
    entry the leader has already compacted away. Chunks go out in order; ``offset`` is the byte
    position of ``data`` in the snapshot.

    Raises:
        ValueError: on construction, if a field breaks the schema (see the module docstring).
    """

    src: NodeId = attrs.field(validator=_node_id)
    """Sender (the leader)."""
    dst: NodeId = attrs.field(validator=_node_id)
    """Receiver."""
    term: int = attrs.field(validator=_term)
    """The leader's term."""
    index: int = attrs.field(validator=_positive_index)
    """The last log index the snapshot covers."""
    snapshot_term: int = attrs.field(validator=_positive_term)
    """The term of the entry at ``index``."""
    offset: int = attrs.field(validator=_index)
    """Byte offset of ``data`` within the snapshot."""
    data: bytes = attrs.field(validator=_bytes)
    """This chunk."""
    done: bool = attrs.field(validator=_bool)
    """Whether this is the last chunk."""
    membership: Membership = attrs.field(validator=_membership)
    """The configuration in force at ``index`` (the snapshot's, sent with every chunk so that
    each chunk describes the snapshot whole)."""

    def __attrs_post_init__(self) -> None:
        _check_snapshot(self)


@attrs.frozen(slots=True)
class SnapshotResponse:
    """The answer to a :class:`SnapshotRequest`: how far the follower got.

    Raises:
        ValueError: on construction, if a field breaks the schema (see the module docstring).
    """

    src: NodeId = attrs.field(validator=_node_id)
    """Sender (the follower)."""
    dst: NodeId = attrs.field(validator=_node_id)
    """Receiver (the leader)."""
    term: int = attrs.field(validator=_term)
    """The follower's term."""
    index: int = attrs.field(validator=_positive_index)
    """The snapshot being acknowledged (its last index)."""
    offset: int = attrs.field(validator=_index)
    """Bytes of that snapshot received so far: the offset the leader should send next."""
    done: bool = attrs.field(validator=_bool)
    """The snapshot is durably installed: the follower's log now matches up to ``index``."""

    def __attrs_post_init__(self) -> None:
        _check_endpoints(self)


@attrs.frozen(slots=True)
class TimeoutNow:
    """Campaign now: the leader of ``term`` hands leadership to you (Raft thesis §3.10).

    Sent once by a leader transferring its leadership, when the receiver's log is as long as
    its own; the receiver starts an election at once, without PreVote, and its
    :class:`VoteRequest` carries ``transfer=True``.

    Raises:
        ValueError: on construction, if a field breaks the schema (see the module docstring).
    """

    src: NodeId = attrs.field(validator=_node_id)
    """Sender (the leader)."""
    dst: NodeId = attrs.field(validator=_node_id)
    """Receiver (the transfer's target)."""
    term: int = attrs.field(validator=_positive_term)
    """The leader's term."""

    def __attrs_post_init__(self) -> None:
        _check_endpoints(self)


Message: TypeAlias = (
    VoteRequest
    | VoteResponse
    | AppendRequest
    | AppendResponse
    | SnapshotRequest
    | SnapshotResponse
    | TimeoutNow
)
"""Any Raft RPC."""

MESSAGE_TYPES: tuple[type[Message], ...] = (
    VoteRequest,
    VoteResponse,
    AppendRequest,
    AppendResponse,
    SnapshotRequest,
    SnapshotResponse,
    TimeoutNow,
)
