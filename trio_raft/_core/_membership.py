"""Configuration changes as pure functions: which targets are valid, the step that reaches one,
and the edits the node API applies to the configuration in force.

A change of the voters always goes through a joint configuration (Raft thesis §4.3): from C_old
the leader appends ``next_step(C_old, C_new)``, the joint C_old,new, and once that commits, its
``leave()``, C_new. A change that leaves the voters alone (a learner added or removed, an address
changed) is *simple*: one entry with the target itself. These functions only compute values and
raise typed errors; :func:`check_change` decides whether a change may start (one at a time,
caught-up learners, live quorums) from facts :class:`~trio_raft._core._state.RaftState` gathers.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping
from typing import Final

import attrs

from .._config import Config
from .._errors import (
    InvalidMembershipError,
    LearnerNotCaughtUpError,
    MembershipChangeInProgressError,
    QuorumUnavailableError,
)
from .._types import Entry, EntryKind, FieldError, Membership, NodeId


class _Keep(enum.Enum):
    KEEP = "keep"


KEEP: Final = _Keep.KEEP
"""Sentinel of :func:`with_learner`: keep a member's address (``None`` for a new member)."""


class Step(enum.Enum):
    """How one configuration follows another in a log."""

    SIMPLE = "simple"
    """Same voters, neither joint: learners or addresses changed."""
    ENTER = "enter"
    """From a configuration that is not joint into a joint one leaving it."""
    LEAVE = "leave"
    """From a joint configuration to its ``leave()``, the only way out of it."""


def step_kind(previous: Membership, following: Membership) -> Step | None:
    """How ``following`` follows ``previous``, or ``None`` if it may not (one change at a time:
    every configuration entry is a simple, enter or leave step from the one before)."""
    if previous.is_joint:
        return Step.LEAVE if following == previous.leave() else None
    if not following.is_joint:
        return Step.SIMPLE if following.voters == previous.voters else None
    return Step.ENTER if following.outgoing == previous.voters else None


def settled(membership: Membership) -> Membership:
    """The configuration a change is computed from: ``membership`` itself, or where a joint one
    is going (its ``leave()``)."""
    return membership.leave() if membership.is_joint else membership


def already_in_force(current: Membership, target: Membership) -> bool:
    """Whether there is nothing to append for ``target``: it is the configuration in force, or
    the configuration in force is joint and already leaving toward it. Such a request succeeds
    once the configuration in force commits, which makes every change idempotent."""
    return target == current or (current.is_joint and current.leave() == target)


def check_target(current: Membership, target: Membership) -> None:
    """Refuse a target that no change from ``current`` may reach.

    Raises:
        InvalidMembershipError: ``target`` is joint (rule ``"joint_target"``), or it has a voter
            that is neither a voter nor a learner of ``current`` (``"not_a_learner"``: a node
            becomes a voter only after catching up as a learner).
    """
    if target.is_joint:
        raise InvalidMembershipError(
            f"the target {target!r} is joint; ask for the configuration to end in",
            "joint_target",
        )
    strangers = sorted(target.voters - current.all_voters - current.learners)
    if strangers:
        raise InvalidMembershipError(
            f"{', '.join(strangers)} {'is' if len(strangers) == 1 else 'are'} not a learner: add "
            "new members with add_learner first (they become voters once caught up)",
            "not_a_learner",
        )


def next_step(current: Membership, target: Membership) -> Membership:
    """The configuration to append to move from ``current`` (not joint) toward ``target``:
    ``target`` itself if the voters do not change, otherwise the joint configuration entering
    ``target`` and leaving ``current.voters`` (with their current addresses for those that go)."""
    if current.is_joint:
        raise ValueError(f"next_step from the joint configuration {current!r}")
    if target.voters == current.voters:
        return target
    addresses = dict(target.addresses)
    for node_id in current.voters - target.members:
        addresses[node_id] = current.addresses[node_id]
    return Membership(target.voters, target.learners, current.voters, addresses)


def _build(
    voters: Collection[NodeId],
    learners: Collection[NodeId],
    addresses: Mapping[NodeId, object],
) -> Membership:
    if not voters:
        raise InvalidMembershipError(
            "the change would leave no voter; a cluster needs at least one (add and promote "
            "another node before removing or demoting the last voter)",
            "last_voter",
        )
    try:
        return Membership(voters, learners, (), addresses)
    except FieldError as exc:
        raise InvalidMembershipError(f"invalid configuration: {exc}", "limits") from None


def with_learner(m: Membership, node_id: NodeId, address: object = KEEP) -> Membership:
    """Add ``node_id`` as a learner, or change a member's address (a voter stays a voter)."""
    m = settled(m)
    addresses = dict(m.addresses)
    if address is not KEEP:
        addresses[node_id] = address
    elif node_id not in addresses:
        addresses[node_id] = None
    learners = m.learners if node_id in m.voters else m.learners | {node_id}
    return _build(m.voters, learners, addresses)


def _require_member(m: Membership, node_id: NodeId) -> None:
    if node_id not in m.members:
        raise InvalidMembershipError(
            f"{node_id} is not a member (members: {', '.join(sorted(m.members))})",
            "not_a_member",
        )


def promoted(m: Membership, node_id: NodeId) -> Membership:
    """Make learner ``node_id`` a voter (a voter stays as it is)."""
    m = settled(m)
    _require_member(m, node_id)
    return _build(m.voters | {node_id}, m.learners - {node_id}, m.addresses)


def demoted(m: Membership, node_id: NodeId) -> Membership:
    """Make voter ``node_id`` a learner (a learner stays as it is)."""
    m = settled(m)
    _require_member(m, node_id)
    if node_id in m.learners:
        return m
    return _build(m.voters - {node_id}, m.learners | {node_id}, m.addresses)


def without(m: Membership, node_id: NodeId) -> Membership:
    """Remove ``node_id``, voter or learner (a stranger: nothing changes)."""
    m = settled(m)
    if node_id not in m.members:
        return m
    addresses = {k: v for k, v in m.addresses.items() if k != node_id}
    return _build(m.voters - {node_id}, m.learners - {node_id}, addresses)


def replaced(m: Membership, old: NodeId, new: NodeId) -> Membership:
    """Swap voter ``old`` for learner ``new`` in one change (the way to replace a machine)."""
    m = settled(m)
    if old not in m.voters:
        raise InvalidMembershipError(f"{old} is not a voter", "not_a_voter")
    if new not in m.learners and new not in m.voters:
        raise InvalidMembershipError(
            f"{new} is not a learner: add it with add_learner first", "not_a_learner"
        )
    addresses = {k: v for k, v in m.addresses.items() if k != old}
    return _build((m.voters - {old}) | {new}, m.learners - {new, old}, addresses)


def exactly(
    m: Membership,
    voters: Collection[NodeId],
    learners: Collection[NodeId],
    addresses: Mapping[NodeId, object] | None,
) -> Membership:
    """The configuration with exactly these voters and learners; addresses from ``addresses``,
    else the current ones, else ``None``."""
    if isinstance(voters, str) or isinstance(learners, str):
        raise InvalidMembershipError("voters and learners are collections of ids", "limits")
    m = settled(m)
    given = dict(addresses or {})
    merged = {
        node_id: given[node_id] if node_id in given else m.addresses.get(node_id)
        for node_id in set(voters) | set(learners)
    }
    return _build(frozenset(voters), frozenset(learners), merged)


def unreachable_voters(
    current: Membership, target: Membership, live: Collection[NodeId]
) -> frozenset[NodeId] | None:
    """The voters not in ``live`` if the voters of ``current`` or of ``target`` lack a live
    majority (the change could then get stuck half-way), else ``None``."""
    for voters in (current.voters, target.voters):
        alive = sum(1 for v in voters if v in live)
        if alive < len(voters) // 2 + 1:
            return frozenset((current.voters | target.voters) - set(live))
    return None


def choose_successor(
    m: Membership, match: Mapping[NodeId, int], live: Collection[NodeId], exclude: NodeId
) -> NodeId | None:
    """The voter of ``m`` (other than ``exclude``) that is live and holds the most of the log;
    ties go to the lower id. ``None`` if no other voter is live."""
    candidates = [v for v in m.voters if v != exclude and v in live]
    if not candidates:
        return None
    return min(candidates, key=lambda v: (-match.get(v, 0), v))


@attrs.frozen
class LeaderFacts:
    """What :func:`check_change` needs to know about the leader proposing a change."""

    index: int
    """The index of the configuration in force."""
    commit: int
    """The leader's commit index."""
    ready: bool
    """Whether it has committed an entry of its own term."""
    transfer_target: NodeId | None
    """The target of a leadership transfer in progress."""
    caught_up: Mapping[NodeId, tuple[float, int | None]]
    """For each would-be voter that is not one now: how long it has been caught up (seconds)
    and how many entries it is behind (``None``: unknown)."""
    live: frozenset[NodeId]
    """The leader and the peers heard from within the minimum election timeout."""


def check_change(
    current: Membership, target: Membership, leader: LeaderFacts, config: Config
) -> None:
    """Every check a leader runs before appending the configuration toward ``target`` (see
    membership.rst, "The checks"), in order; returns if the change may start.

    Raises:
        InvalidMembershipError: ``target`` is not reachable from ``current``.
        MembershipChangeInProgressError: a change or a transfer is in flight, or the leader
            has not committed an entry of its term.
        LearnerNotCaughtUpError: a new voter has not kept up for an election timeout.
        QuorumUnavailableError: the current or the target voters lack a live majority.
    """
    check_target(current, target)
    if leader.transfer_target is not None:
        raise MembershipChangeInProgressError(
            f"a leadership transfer to {leader.transfer_target!r} is in progress; retry after it"
        )
    if current.is_joint or leader.index > leader.commit:
        raise MembershipChangeInProgressError(
            f"a membership change is in flight ({current!r} at index {leader.index}, "
            f"committed up to {leader.commit}); wait for it to finish and retry",
            current,
            leader.index,
        )
    if not leader.ready:
        raise MembershipChangeInProgressError(
            "the leader was just elected and has not committed an entry of its term yet; "
            "retry in a moment"
        )
    for voter in sorted(target.voters - current.all_voters):
        waited, lag = leader.caught_up.get(voter, (0.0, None))
        if waited < config.election_timeout_s_max:
            raise LearnerNotCaughtUpError(
                f"learner {voter!r} is not caught up ({lag} entries behind, caught up for "
                f"{waited:.3f} s of the {config.election_timeout_s_max} s needed); wait or "
                "check the learner",
                voter,
                -1 if lag is None else lag,
                0.0,
            )
    unreachable = unreachable_voters(current, target, leader.live)
    if unreachable is not None:
        raise QuorumUnavailableError(
            f"the current voters ({', '.join(sorted(current.voters))}) or the new ones "
            f"({', '.join(sorted(target.voters))}) lack a majority that answered within "
            f"{config.election_timeout_s_min} s (unreachable: {', '.join(sorted(unreachable))}); "
            "bring them back first",
            unreachable,
        )


class MembershipLog:
    """Which configuration is in force, at the end of the log and at any index (thesis §4.1:
    a configuration takes effect when its entry is appended, committed or not).

    It keeps the configuration at the start of the log (from a snapshot, or the bootstrap one)
    and the configuration entries of the uncompacted log. :class:`RaftState` tells it about
    every change of the log: append, truncate, compact, install a snapshot.
    """

    def __init__(
        self,
        bootstrap: Membership | None,
        stored: Membership | None,
        start_index: int,
        entries: Iterable[Entry],
    ) -> None:
        self.bootstrap = bootstrap
        """The configuration a node uses when its log and snapshot hold none (``None``: join
        mode, until the leader replicates one)."""
        self._base: tuple[int, Membership | None] = (
            (start_index, stored) if stored is not None else (0, bootstrap)
        )
        self._configs: list[tuple[int, Membership]] = [
            (e.index, e.command) for e in entries if isinstance(e.command, Membership)
        ]

    @property
    def current(self) -> Membership | None:
        """The configuration in force: the last in the log, else the base."""
        return self._configs[-1][1] if self._configs else self._base[1]

    @property
    def index(self) -> int:
        """The index of the entry ``current`` came from; for a configuration from a snapshot,
        the snapshot's index; 0 for a bootstrap configuration (in no log and no snapshot)."""
        return self._configs[-1][0] if self._configs else self._base[0]

    def at(self, index: int) -> Membership | None:
        """The configuration in force at ``index`` (at or after the start of the log)."""
        for config_index, membership in reversed(self._configs):
            if config_index <= index:
                return membership
        return self._base[1]

    def entries(self) -> list[tuple[int, Membership]]:
        """The configuration entries of the uncompacted log, ascending (a copy)."""
        return list(self._configs)

    def appended(self, entries: Iterable[Entry]) -> bool:
        """Entries were appended; returns whether the configuration in force changed."""
        changed = False
        for e in entries:
            if e.kind is EntryKind.CONFIG:
                assert isinstance(e.command, Membership)
                self._configs.append((e.index, e.command))
                changed = True
        return changed

    def truncated(self, index: int) -> bool:
        """The log was cut at ``index`` (that entry and after are gone); an uncommitted
        configuration goes with its entry. Returns whether the configuration in force changed."""
        before = len(self._configs)
        while self._configs and self._configs[-1][0] >= index:
            self._configs.pop()
        return len(self._configs) != before

    def compacted(self, index: int) -> None:
        """The log up to ``index`` was compacted: fold its configurations into the base."""
        folded = [c for c in self._configs if c[0] <= index]
        if folded:
            self._base = folded[-1]
            self._configs = self._configs[len(folded) :]

    def installed(self, index: int, membership: Membership | None, *, kept: bool) -> bool:
        """A snapshot up to ``index`` carrying ``membership`` was installed; ``kept`` says the
        log's suffix after it was kept. Returns whether the configuration in force changed.

        Raises:
            AssertionError: the log was kept (it matches the snapshot up to ``index``) but
                its configuration there, read from its own entries, differs from the
                snapshot's: Log Matching is broken.
        """
        before = self.current
        if kept:
            from_log = any(c[0] <= index for c in self._configs) or self._base[0] > 0
            local = self.at(index)
            if membership is not None and from_log and local != membership:
                raise AssertionError(
                    f"snapshot at {index} carries {membership!r} but the matching log has "
                    f"{local!r} there: Log Matching is broken"
                )
            self.compacted(index)
            if membership is not None and not from_log:
                self._base = (index, membership)  # replaces a bootstrap configuration
        else:
            self._configs = []
            self._base = (index, membership) if membership is not None else (0, self.bootstrap)
        return self.current is not before
