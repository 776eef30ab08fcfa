"""Plain value types shared by every layer: ids, log entries, hard state.

Invariants (checked by the types' validators, i.e. at construction):

* terms and indexes are non-negative; index 0 / term 0 is the empty-log sentinel;
* an :class:`Entry` always has ``index >= 1`` and ``term >= 1``.
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

NodeId: TypeAlias = str
"""A node's identity: a short, stable, non-empty string such as ``"n1"``."""


def _non_negative(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


def _positive(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value}")


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
    """

    term: int = attrs.field(validator=_positive)
    """Term of the leader that created the entry."""
    index: int = attrs.field(validator=_positive)
    """Position in the log, starting at 1."""
    command: object = None
    """The user's command (any CBOR-encodable value); ``None`` for a no-op."""
    kind: EntryKind = EntryKind.COMMAND
    """Whether the entry is a user command or a leader's no-op."""


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
