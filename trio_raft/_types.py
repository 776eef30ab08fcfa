"""Plain value types shared by every layer: ids, log entries, hard state.

Invariants (checked by the types' validators, i.e. at construction):

* terms and indexes are non-negative; index 0 / term 0 is the empty-log sentinel;
* an :class:`Entry` always has ``1 <= index <= MAX_INDEX`` and ``1 <= term <= MAX_TERM`` (plain
  ints, not bools), a :class:`EntryKind`, and no command if it is a no-op.
"""

from __future__ import annotations

import enum
from typing import Final, TypeAlias

import attrs

MAX_TERM: Final = 2**62
"""The largest term a node accepts, from the wire or from disk.

Terms only grow, so a term near the top of the 64-bit range the wire format carries would leave
the cluster no room for another election. Messages and stored state with a term above this are
refused; at one election per millisecond it would take 146 million years to get here honestly.
"""

MAX_INDEX: Final = 2**63 - 1
"""The largest log index, byte offset or sequence number a message carries (int64-compatible)."""

MAX_ID_CHARS: Final = 128
"""Node ids and cluster ids on the wire are 1 to this many characters long."""

NodeId: TypeAlias = str
"""A node's identity: a short, stable, non-empty string such as ``"n1"``."""


class FieldError(ValueError):
    """A value breaks the invariant of a field of a message or an :class:`Entry`.

    Raised on construction (the types validate themselves) and turned into
    :class:`~trio_raft.FrameError` by the codec. ``str(error)`` reads
    ``"<Type>.<path>: <reason>"``, e.g. ``"AppendRequest.term: expected an integer in [0,
    2**62 (MAX_TERM)], got -1"``; the codec prefixes the path with where the value sat.
    """

    def __init__(self, owner: str, path: str, reason: str) -> None:
        super().__init__(f"{owner}.{path}: {reason}")
        self.owner = owner
        """The type whose field is invalid."""
        self.path = path
        """The field, with an element position if it is inside a tuple (``entries[2].index``)."""
        self.reason = reason
        """What is wrong, with the offending value in bounded form."""


def short(value: object) -> str:
    """A bounded description of an untrusted value, for error messages."""
    if value is None or type(value) in (bool, float):
        return repr(value)
    if type(value) is int:
        assert isinstance(value, int)
        return repr(value) if abs(value) < 10**30 else "a huge int"
    if type(value) in (str, bytes):
        assert isinstance(value, (str, bytes))
        text = repr(value[:40])
        return text + "..." if len(value) > 40 else text
    return f"a {'null' if value is None else type(value).__name__}"


def _non_negative(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


def _positive(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value}")


def _entry_term(inst: object, attribute: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or not 1 <= value <= MAX_TERM:
        reason = f"expected an integer in [1, 2**62 (MAX_TERM)], got {short(value)}"
        raise FieldError(type(inst).__name__, attribute.name, reason)


def _entry_index(inst: object, attribute: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or not 1 <= value <= MAX_INDEX:
        reason = f"expected an integer in [1, 2**63 - 1], got {short(value)}"
        raise FieldError(type(inst).__name__, attribute.name, reason)


class EntryKind(enum.IntEnum):
    """What an :class:`Entry` carries."""

    COMMAND = 0
    """A user command: handed to :meth:`StateMachine.apply`."""
    NOOP = 1
    """The empty entry a new leader appends to commit its term (Raft §8); never applied."""


@attrs.frozen(slots=True)
class Entry:
    """One log entry.

    Entries are immutable and identified by ``(term, index)``: by the Log Matching property two
    logs holding an entry with the same index and term are identical up to that index.

    Raises:
        ValueError: on construction, if a field breaks the invariants in the module docstring
            (the message names the field and the rule). The command is not checked here: the
            codec and the WAL check it against the wire's data model when they encode it.
    """

    term: int = attrs.field(validator=_entry_term)
    """Term of the leader that created the entry, in ``[1, MAX_TERM]``."""
    index: int = attrs.field(validator=_entry_index)
    """Position in the log, in ``[1, MAX_INDEX]``."""
    command: object = None
    """The user's command (any CBOR-encodable value); ``None`` for a no-op."""
    kind: EntryKind = EntryKind.COMMAND
    """Whether the entry is a user command or a leader's no-op."""

    def __attrs_post_init__(self) -> None:
        kind = self.kind
        if type(kind) is not EntryKind:
            raise FieldError("Entry", "kind", f"expected an EntryKind, got {short(kind)}")
        if kind is EntryKind.NOOP and self.command is not None:
            raise FieldError("Entry", "command", "a no-op entry carries no command")


@attrs.frozen(slots=True)
class HardState:
    """What a node must persist before answering anyone: its term and its vote in that term."""

    term: int = attrs.field(default=0, validator=_non_negative)
    """The latest term this node has seen."""
    voted_for: NodeId | None = None
    """The candidate this node voted for in ``term``, if any."""


@attrs.frozen(slots=True)
class StoredState:
    """Everything :meth:`Storage.load` returns: the durable state a node restarts from."""

    hard_state: HardState = HardState()
    """Term and vote."""
    entries: tuple[Entry, ...] = ()
    """The log after the compacted prefix, in index order, starting at ``log_start_index + 1``."""
    log_start_index: int = attrs.field(default=0, validator=_non_negative)
    """Index of the last entry discarded by compaction (0 if none was)."""
    log_start_term: int = attrs.field(default=0, validator=_non_negative)
    """Term of the entry at ``log_start_index`` (0 if none)."""


@attrs.frozen(slots=True)
class SnapshotMeta:
    """Identifies a snapshot: the state machine after applying every entry up to ``index``."""

    index: int = attrs.field(validator=_positive)
    """The last log index the snapshot covers."""
    term: int = attrs.field(validator=_positive)
    """The term of that entry."""


class Role(enum.Enum):
    """The role a node plays in its current term."""

    FOLLOWER = "follower"
    """Answers the leader and votes; redirects clients."""
    PRE_CANDIDATE = "pre-candidate"
    """Asking peers whether they would vote, without raising the term (PreVote)."""
    CANDIDATE = "candidate"
    """Raised the term and asks for votes."""
    LEADER = "leader"
    """Accepts proposals and replicates the log."""
