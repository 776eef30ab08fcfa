"""What one batch of inputs to :class:`~trio_raft._core._state.RaftState` asks the node to do."""

from __future__ import annotations

import attrs

from .._messages import Message
from .._types import Entry, HardState, Role, RoleChangeReason


@attrs.define
class Ready:
    """Effects of the inputs since the last `RaftState.take_ready`, in the order to do them."""

    hard_state: HardState | None = None
    """A new term/vote to persist, or ``None`` if unchanged."""
    truncate_from: int | None = None
    """Persisted entries at this index and after must be dropped."""
    entries: list[Entry] = attrs.Factory(list)
    """New entries to persist, after the truncation."""
    messages: list[Message] = attrs.Factory(list)
    """To send only once the writes above are durable."""
    role_changed: bool = False
    """The role or term changed: the node must cancel the current role's scope."""
    transitions: list[tuple[Role, int, RoleChangeReason]] = attrs.Factory(list)
    """Every role or term change, in order: the new role, the new term and why (one input can
    make several, e.g. a single voter's pre-vote, vote and election)."""
    reset_election_timer: bool = False
    """Draw a fresh randomized election deadline."""
    confirmed_reads: list[tuple[int, int]] = attrs.Factory(list)
    """``(read_id, read_index)`` pairs whose leadership check passed."""
    failed_reads: list[int] = attrs.Factory(list)
    """Read ids that can no longer be confirmed (this node stopped leading)."""
    membership_changed: bool = False
    """The configuration in force changed (appended, rolled back or installed): the node
    resizes its replicators and tells its transport."""
    replicas_changed: bool = False
    """A leader stopped replicating to a removed peer (it learned of its removal)."""

    @property
    def must_sync(self) -> bool:
        return self.hard_state is not None or self.truncate_from is not None or bool(self.entries)

    def __bool__(self) -> bool:
        """Whether there is anything to do."""
        return bool(
            self.must_sync or self.messages or self.role_changed or self.reset_election_timer
            or self.confirmed_reads or self.failed_reads or self.membership_changed
            or self.replicas_changed
        )  # fmt: skip
