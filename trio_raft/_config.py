"""Node configuration: one frozen, validated attrs class."""

from __future__ import annotations

import attrs


def _positive_float(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"Config.{attribute.name} must be > 0, got {value!r}")


def _positive_int(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"Config.{attribute.name} must be >= 1, got {value!r}")


def _non_negative_int(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"Config.{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class Config:
    """Tuning knobs of a node. The defaults suit a LAN (round trips well under 10 ms).

    Raises:
        ValueError: on construction, if a value is out of range or the timing values contradict
            each other (the message says which and why).
    """

    election_timeout_s_min: float = attrs.field(default=0.3, validator=_positive_float)
    """A follower that hears no leader for a random time in
    ``[election_timeout_s_min, election_timeout_s_max)`` starts an election."""
    election_timeout_s_max: float = attrs.field(default=0.6, validator=_positive_float)
    """Upper end of the randomized election timeout (exclusive)."""
    heartbeat_s: float = attrs.field(default=0.05, validator=_positive_float)
    """How often a leader contacts an idle follower. Must be well below the election timeout."""
    max_entries_per_append: int = attrs.field(default=256, validator=_positive_int)
    """At most this many entries in one AppendEntries."""
    max_bytes_per_append: int = attrs.field(default=1 << 20, validator=_positive_int)
    """At most this many bytes of commands in one AppendEntries (at least one entry is
    always sent), counting each command's CBOR encoding (as stored and sent; made once, at
    ``propose``). The pipelining window and the snapshot trigger count the same way."""
    max_inflight_appends: int = attrs.field(default=8, validator=_positive_int)
    """Pipelining window: AppendEntries sent to one follower and not yet answered."""
    max_inflight_bytes: int = attrs.field(default=8 << 20, validator=_positive_int)
    """Pipelining window in bytes per follower."""
    max_command_bytes: int = attrs.field(default=1 << 20, validator=_positive_int)
    """:meth:`Node.propose` refuses a command whose CBOR encoding is larger (it would have to
    fit in one message of the transport, whose limit must stay above it)."""
    max_uncommitted_entries: int = attrs.field(default=10_000, validator=_positive_int)
    """A leader refuses proposals (:class:`TooManyUncommittedError`) beyond this many uncommitted
    entries, so a leader cut off from its followers cannot grow without bound."""
    snapshot_entries: int = attrs.field(default=10_000, validator=_positive_int)
    """Take a snapshot once this many entries were applied since the last one (or
    :attr:`snapshot_bytes` of commands, whichever comes first), then compact the log. Only
    for state machines that implement ``snapshot``/``restore``
    (:class:`SnapshottingStateMachine`); other logs grow without bound."""
    snapshot_bytes: int = attrs.field(default=64 << 20, validator=_positive_int)
    """Also take a snapshot once the commands applied since the last one add up to this many
    bytes, and keep at most this many bytes of entries before a snapshot's index when
    compacting, so a log of large commands holds about twice this many bytes of commands (each
    kept both as a value and encoded, so about four times this much memory). Sizes are
    counted as for :attr:`max_bytes_per_append`."""
    snapshot_keep_entries: int = attrs.field(default=1_000, validator=_non_negative_int)
    """How many entries before a snapshot's index compaction keeps (at most
    :attr:`snapshot_bytes` of them), so that a follower that is only a little behind catches up
    from the log rather than by a whole snapshot. 0 keeps none."""
    snapshot_chunk_bytes: int = attrs.field(default=1 << 20, validator=_positive_int)
    """At most this many bytes of snapshot per InstallSnapshot message."""
    disk_stall_s: float = attrs.field(default=1.0, validator=_positive_float)
    """A leader whose storage write or sync has not returned after this long steps down, so a
    node with a healthy disk can take over (a stalled follower just stops answering)."""
    pre_vote: bool = True
    """PreVote (thesis §9.6): a node must learn it could win before it raises its term, so a node
    returning from a partition cannot depose a healthy leader."""
    check_quorum: bool = True
    """CheckQuorum (thesis §6.2): a leader that has not heard from a majority within an election
    timeout steps down; followers ignore vote requests while they hear from a live leader."""
    catch_up_entries: int = attrs.field(default=1_000, validator=_non_negative_int)
    """A learner within this many entries of the leader's last index counts as caught up (0:
    only a learner holding the whole log does); it may be promoted once it has stayed so for
    ``election_timeout_s_max``."""
    catch_up_timeout_s: float = attrs.field(default=60.0, validator=_positive_float)
    """How long :meth:`Node.promote` (and the other calls that add voters) wait by default
    for new voters to catch up before refusing with
    :exc:`~trio_raft.LearnerNotCaughtUpError`."""
    transfer_on_close: bool = True
    """A leader leaving :func:`~trio_raft.open_node`'s block gracefully (normally or by an
    exception of the body, not by a cancellation) first hands leadership to another voter,
    waiting at most ``election_timeout_s_max + election_timeout_s_min``; then the cluster
    elects no new leader from scratch."""

    def __attrs_post_init__(self) -> None:
        if self.election_timeout_s_max <= self.election_timeout_s_min:
            raise ValueError(
                "Config.election_timeout_s_max must be greater than election_timeout_s_min "
                f"(got {self.election_timeout_s_max} <= {self.election_timeout_s_min}); the "
                "randomized range is what keeps elections from splitting forever"
            )
        if self.heartbeat_s * 2 > self.election_timeout_s_min:
            raise ValueError(
                f"Config.heartbeat_s ({self.heartbeat_s}) must be at most half of "
                f"election_timeout_s_min ({self.election_timeout_s_min}), or followers will "
                "time out between heartbeats"
            )
