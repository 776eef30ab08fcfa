"""Plain value types shared by every layer: ids, log entries, hard state.

Invariants (checked by the types' validators, i.e. at construction):

* terms and indexes are non-negative; index 0 / term 0 is the empty-log sentinel;
* an :class:`Entry` always has ``1 <= index <= MAX_INDEX`` and ``1 <= term <= MAX_TERM`` (plain
  ints, not bools), a :class:`EntryKind`, and no command if it is a no-op.
"""

from __future__ import annotations

import enum
import itertools
import types
from collections.abc import Iterable, Mapping
from typing import Final, TypeAlias, final

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

MAX_MEMBERS: Final = 64
"""The most members (voters, outgoing voters and learners together) a :class:`Membership` holds."""

MAX_ADDRESS_BYTES: Final = 1024
"""The largest a member's address may be, CBOR-encoded."""

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
    CONFIG = 2
    """The cluster's membership from this entry on (it takes effect when appended, on every
    node); ``command`` is a :class:`Membership`. Never handed to the state machine."""


@final
class EncodedCommand:
    """A proposed command and its CBOR encoding, made once by the leader's check of a proposal
    (``trio_raft._codec.encode_command``, private): an :class:`Entry` built with it as its
    command keeps ``value`` as the command and ``data`` as its cached encoding, which the WAL,
    the wire and the size accounting then reuse. Only the codec makes one, after checking
    ``value`` against the wire's data model and encoding it; decoders never do."""

    __slots__ = ("data", "value")

    def __init__(self, value: object, data: bytes) -> None:
        self.value = value
        self.data = data

    def __repr__(self) -> str:
        return f"EncodedCommand({self.value!r:.100}, {len(self.data)} bytes)"


@attrs.frozen(slots=True)
class Entry:
    """One log entry.

    Entries are immutable and identified by ``(term, index)``: by the Log Matching property two
    logs holding an entry with the same index and term are identical up to that index.

    Raises:
        ValueError: on construction, if a field breaks the invariants in the module docstring
            (the message names the field and the rule). The command is not checked here: the
            codec and the WAL check it against the wire's data model when they encode it.

    An entry keeps its command's CBOR encoding once it is made (by ``propose``, which checks
    and encodes each command once, or by the first encoder), so the WAL, every AppendEntries
    and the size accounting reuse the same bytes. The cache is private and not part of the
    value (equality, hashing and ``repr`` ignore it); commands are treated as immutable, as
    entries are.
    """

    term: int = attrs.field(validator=_entry_term)
    """Term of the leader that created the entry, in ``[1, MAX_TERM]``."""
    index: int = attrs.field(validator=_entry_index)
    """Position in the log, in ``[1, MAX_INDEX]``."""
    command: object = None
    """The user's command (any CBOR-encodable value); ``None`` for a no-op."""
    kind: EntryKind = EntryKind.COMMAND
    """Whether the entry is a user command or a leader's no-op."""
    _encoded: bytes | None = attrs.field(default=None, init=False, eq=False, hash=False, repr=False)
    # The command's CBOR encoding, once the command was checked against the wire's data model
    # (private; see ``trio_raft._codec.command_bytes``, the only reader and writer). Not part of
    # the value: equality, hashing and repr ignore it, and nothing from outside sets it.

    def __attrs_post_init__(self) -> None:
        if type(self.command) is EncodedCommand:  # a proposal checked and encoded once
            object.__setattr__(self, "_encoded", self.command.data)
            object.__setattr__(self, "command", self.command.value)
        kind = self.kind
        if type(kind) is not EntryKind:
            raise FieldError("Entry", "kind", f"expected an EntryKind, got {short(kind)}")
        if kind is EntryKind.NOOP and self.command is not None:
            raise FieldError("Entry", "command", "a no-op entry carries no command")
        if (kind is EntryKind.CONFIG) != isinstance(self.command, Membership):
            reason = (
                f"a configuration entry carries a Membership, got {short(self.command)}"
                if kind is EntryKind.CONFIG
                else "only a configuration entry carries a Membership"
            )
            raise FieldError("Entry", "command", reason)


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
    membership: Membership | None = None
    """The configuration in force at ``log_start_index``: that of the snapshot the log starts
    after (``None`` when there is no snapshot, or it was written by a release without
    membership changes)."""


@attrs.frozen(slots=True)
class SnapshotMeta:
    """Identifies a snapshot: the state machine after applying every entry up to ``index``."""

    index: int = attrs.field(validator=_positive)
    """The last log index the snapshot covers."""
    term: int = attrs.field(validator=_positive)
    """The term of that entry."""
    membership: Membership | None = None
    """The configuration in force at ``index`` (committed, since ``index`` is). ``None`` only
    for snapshots written by releases without membership changes, which mean "the bootstrap
    configuration"."""


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


class RoleChangeReason(enum.Enum):
    """Why a node's role or term changed (in logs, and in the node's events and statistics)."""

    ELECTION_TIMEOUT = "election timeout"
    """No leader was heard for an election timeout: the node started an election."""
    PRE_VOTE_WON = "pre-vote won"
    """A majority would vote for it: it raised its term and asked for votes."""
    TRANSFER = "leadership transfer"
    """The leader handed over (TimeoutNow): the node campaigned at once."""
    ELECTION_WON = "election won"
    """A majority voted for it."""
    ELECTION_LOST = "election lost"
    """A majority refused its (pre-)vote request."""
    HIGHER_TERM = "higher term seen"
    """A message carried a higher term."""
    LEADER_FOUND = "leader found"
    """A (pre-)candidate heard from the leader of its term."""
    CHECK_QUORUM = "check quorum"
    """A leader heard from no majority within an election timeout (CheckQuorum)."""
    REMOVED = "removed"
    """The node is no longer a voter (a leader that committed its own removal hands over)."""
    STEPPED_DOWN = "stepped down"
    """The node layer made a leader step down (its disk stalled)."""


def _ids(value: Iterable[NodeId]) -> frozenset[NodeId]:
    if isinstance(value, (str, bytes)):
        # a lone id would otherwise become a set of characters
        raise FieldError("Membership", "ids", f"expected a collection of ids, got {short(value)}")
    return frozenset(value)


def _addresses(value: Mapping[NodeId, object]) -> Mapping[NodeId, object]:
    return types.MappingProxyType(dict(value))


_PLAIN_KEYS: Final = ("voters", "learners", "outgoing", "addresses")


@attrs.frozen(eq=True, hash=False, repr=False)
class Membership:
    """A cluster's configuration: who votes, who only learns, and how to reach each member.

    Raft keeps it in the log (an entry of kind :attr:`EntryKind.CONFIG` carries the complete
    value, never a delta) and in every snapshot; a node uses the last one in its log, committed
    or not. During a change of the voters the configuration is *joint* (Raft thesis §4.3):
    elections and commitment then need a majority of ``voters`` **and** a majority of
    ``outgoing``.

    Equal values compare equal (addresses by content); instances are immutable and unhashable.

    Raises:
        ValueError: (a ``FieldError``) on construction, if the value breaks one of these
            rules, naming the field: ``voters`` is not empty and disjoint from ``learners``; a
            joint configuration (non-empty ``outgoing``) changes the voters; every id is a str
            of 1 to 128 characters; at most 64 members; ``addresses`` is empty (every member
            gets ``None``) or has exactly one key per member, each value in the wire's command
            data model and at most 1024 bytes encoded.
    """

    voters: frozenset[NodeId] = attrs.field(converter=_ids)
    """The voters of the configuration being entered (C_new), or of the configuration in force
    when not joint. Never empty."""
    learners: frozenset[NodeId] = attrs.field(default=frozenset(), converter=_ids)
    """Members that receive the log and snapshots but never vote, never count for a quorum and
    never campaign. Disjoint from ``voters``; may overlap ``outgoing`` (a voter being demoted)."""
    outgoing: frozenset[NodeId] = attrs.field(default=frozenset(), converter=_ids)
    """While joint: the voters of the configuration being left (C_old). Empty otherwise."""
    addresses: Mapping[NodeId, object] = attrs.field(factory=dict, converter=_addresses)
    """One value per member, opaque to Raft: what a transport needs to reach it (trio-raft's
    own tools use ``{"peer": URL, "client": URL}``). A read-only copy."""

    def __attrs_post_init__(self) -> None:
        members = self.voters | self.outgoing | self.learners
        for field, ids in (
            ("voters", self.voters), ("learners", self.learners), ("outgoing", self.outgoing)
        ):  # fmt: skip
            for node_id in ids:
                if type(node_id) is not str or not 1 <= len(node_id) <= MAX_ID_CHARS:
                    reason = f"expected ids of 1 to {MAX_ID_CHARS} characters, got {short(node_id)}"
                    raise FieldError("Membership", field, reason)
        if not self.voters:
            raise FieldError("Membership", "voters", "a configuration needs at least one voter")
        if self.voters & self.learners:
            both = ", ".join(sorted(self.voters & self.learners))
            raise FieldError("Membership", "learners", f"{both} cannot be voter and learner")
        if self.outgoing == self.voters:
            raise FieldError(
                "Membership", "outgoing", "a joint configuration must change the voters"
            )
        if len(members) > MAX_MEMBERS:
            raise FieldError(
                "Membership", "voters", f"{len(members)} members (at most {MAX_MEMBERS})"
            )
        if not self.addresses:
            object.__setattr__(self, "addresses", types.MappingProxyType(dict.fromkeys(members)))
            return
        if self.addresses.keys() != members:
            extra = sorted(map(short, self.addresses.keys() - members))
            missing = sorted(members - self.addresses.keys())
            raise FieldError(
                "Membership",
                "addresses",
                f"expected one per member; missing {missing}, not members {extra}",
            )
        from ._codec import FrameError, address_size  # the codec imports this module

        for node_id, address in self.addresses.items():
            try:
                size = address_size(address, where="address")
            except FrameError as exc:
                raise FieldError("Membership", f"addresses[{node_id!r}]", str(exc)) from None
            if size > MAX_ADDRESS_BYTES:
                raise FieldError(
                    "Membership",
                    f"addresses[{node_id!r}]",
                    f"{size} bytes encoded (at most {MAX_ADDRESS_BYTES})",
                )

    def __repr__(self) -> str:
        parts = [f"voters={sorted(self.voters)}"]
        if self.learners:
            parts.append(f"learners={sorted(self.learners)}")
        if self.outgoing:
            parts.append(f"outgoing={sorted(self.outgoing)}")
        if any(a is not None for a in self.addresses.values()):
            parts.append(f"addresses={dict(sorted(self.addresses.items()))!r:.300}")
        return f"Membership({', '.join(parts)})"

    @property
    def is_joint(self) -> bool:
        """Whether a change of the voters is in progress (``outgoing`` is not empty)."""
        return bool(self.outgoing)

    @property
    def members(self) -> frozenset[NodeId]:
        """Every member: ``voters | outgoing | learners``."""
        return self.voters | self.outgoing | self.learners

    @property
    def all_voters(self) -> frozenset[NodeId]:
        """The nodes that may vote and campaign: ``voters | outgoing``."""
        return self.voters | self.outgoing

    def leave(self) -> Membership:
        """The configuration a joint one leaves to (C_new): its voters and learners, with their
        addresses. Raises :exc:`ValueError` if this configuration is not joint."""
        if not self.outgoing:
            raise ValueError("leave() of a configuration that is not joint")
        kept = self.voters | self.learners
        return Membership(
            self.voters, self.learners, (), {m: a for m, a in self.addresses.items() if m in kept}
        )

    def to_plain(self) -> dict[str, object]:
        """The canonical plain form stored in the log and sent on the wire: a map with exactly
        the keys ``voters``, ``learners``, ``outgoing`` (sorted arrays of ids) and
        ``addresses`` (a map from id to address, in id order)."""
        return {
            "voters": sorted(self.voters),
            "learners": sorted(self.learners),
            "outgoing": sorted(self.outgoing),
            "addresses": {m: self.addresses[m] for m in sorted(self.addresses)},
        }

    @classmethod
    def from_plain(cls, value: object) -> Membership:
        """Build a membership from its plain form, as decoded from the wire or the disk.

        Raises:
            ValueError: (a ``FieldError``) the value is not exactly a
                plain form: a key missing or unknown, an array unsorted or with duplicates,
                or anything the constructor refuses.
        """
        if type(value) is not dict:
            raise FieldError("Membership", "plain", f"expected a map, got {short(value)}")
        if set(value) != set(_PLAIN_KEYS):
            got = sorted(map(short, value))
            raise FieldError(
                "Membership", "plain", f"expected the keys {list(_PLAIN_KEYS)}, got {got}"
            )
        sets: list[list[NodeId]] = []
        for key in _PLAIN_KEYS[:3]:
            ids = value[key]
            if type(ids) is not list or len(ids) > MAX_MEMBERS:
                reason = f"expected an array of at most {MAX_MEMBERS} ids, got {short(ids)}"
                raise FieldError("Membership", key, reason)
            for node_id in ids:
                if type(node_id) is not str:
                    raise FieldError("Membership", key, f"expected ids, got {short(node_id)}")
            if any(a >= b for a, b in itertools.pairwise(ids)):
                raise FieldError("Membership", key, "ids must be sorted and unique")
            sets.append(ids)
        addresses = value["addresses"]
        if type(addresses) is not dict or not addresses:
            reason = f"expected a map with one address per member, got {short(addresses)}"
            raise FieldError("Membership", "addresses", reason)
        voters, learners, outgoing = sets
        return cls(voters, learners, outgoing, addresses)
