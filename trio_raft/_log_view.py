"""A read-only view of a node's log (:attr:`Node.log <trio_raft.Node.log>`), and the
:class:`LogPosition` of an entry."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import attrs
import cbor2

from ._codec import FrameError, command_bytes
from ._errors import LogCompactedError, LogIndexError
from ._types import EncodedCommand, Entry, EntryKind

if TYPE_CHECKING:
    from ._core._state import RaftState


@attrs.frozen(slots=True)
class LogPosition:
    """Where an entry sits in the log: its index and the term of the leader that appended it.

    By the Log Matching property the pair identifies the entry: two logs holding an entry with
    the same index and term agree on every entry up to it.
    """

    index: int
    """The entry's log index (from 1)."""
    term: int
    """The term of the leader that appended it."""


@final
class LogView:
    """A read-only view of one node's log: :attr:`Node.log <trio_raft.Node.log>`.

    The log holds the entries after :attr:`compacted_index` (those before were compacted into
    a snapshot) up to :attr:`last_index`; the ones up to :attr:`commit_index` are committed
    and never change, the later ones may still be replaced by another leader's (or be
    appended and not yet durable on this node).

    The view is *live*: every attribute and call reads the node's state at that moment, and
    nothing is copied up front. Trio switches tasks only at checkpoints, so reads made without
    an ``await`` in between see one consistent log::

        log = node.log
        committed = log.entries(log.first_index, log.commit_index + 1)

    To follow the committed entries as they come (an audit trail), wait for the commit index
    to pass the last one read, then read from there::

        next_index = node.log.first_index
        while True:
            await node.wait_status(lambda s: s.commit_index >= next_index)
            log = node.log
            for entry in log.entries(next_index, log.commit_index + 1):
                audit(entry)
            next_index = log.commit_index + 1

    A :exc:`~trio_raft.LogCompactedError` there means the reader fell behind the
    compaction (see :attr:`Config.snapshot_keep_entries
    <trio_raft.Config.snapshot_keep_entries>`).

    Entries come back as new :class:`~trio_raft.Entry` values whose commands are decoded from
    their stored encoding: the copy is yours (mutating it changes nothing in the node), and it
    reads the same on every node (a leader's own entries hold the proposer's objects, a
    follower's the decoded ones: a tuple proposed reads as a list everywhere here). Nothing in
    the view can change the log. Do not instantiate directly.
    """

    __slots__ = ("_state",)

    def __init__(self, state: RaftState) -> None:
        self._state = state

    def __repr__(self) -> str:
        return (
            f"<LogView {self.first_index}..{self.last_index} commit={self.commit_index} "
            f"compacted={self.compacted_index}>"
        )

    @property
    def compacted_index(self) -> int:
        """The last index compacted into a snapshot (0 if none was): the log holds no entry
        up to it (:attr:`Status.compacted_index <trio_raft.Status.compacted_index>`)."""
        return self._state.log.start_index

    @property
    def compacted_term(self) -> int:
        """The term of the entry at :attr:`compacted_index` (0 if none was compacted)."""
        return self._state.log.start_term

    @property
    def first_index(self) -> int:
        """The index of the first entry the log holds: ``compacted_index + 1`` (the index of
        the next entry if it holds none)."""
        return self._state.log.start_index + 1

    @property
    def last_index(self) -> int:
        """The index of the last entry (``compacted_index`` if the log holds none)."""
        return self._state.log.last_index

    @property
    def last_term(self) -> int:
        """The term of the last entry (``compacted_term`` if the log holds none)."""
        return self._state.log.last_term

    @property
    def last(self) -> LogPosition:
        """:attr:`last_index` and :attr:`last_term` together."""
        log = self._state.log
        return LogPosition(log.last_index, log.last_term)

    @property
    def commit_index(self) -> int:
        """The highest index this node knows to be committed (never past
        :attr:`last_index`: a follower learns of a commit only with the entries it covers)."""
        return self._state.commit

    def __len__(self) -> int:
        """How many entries the log holds (``last_index - compacted_index``)."""
        return len(self._state.log)

    def term_at(self, index: int) -> int:
        """The term of the entry at ``index``, from :attr:`compacted_index` (whose term the
        node keeps) to :attr:`last_index`; 0 at index 0.

        Raises:
            LogCompactedError: ``index`` is below :attr:`compacted_index`.
            LogIndexError: ``index`` is past :attr:`last_index`, or negative.
        """
        if index == 0:
            return 0
        log = self._state.log
        self._check(index, lowest=log.start_index)
        term = log.term(index)
        assert term is not None
        return term

    def entry(self, index: int) -> Entry:
        """The entry at ``index`` (a copy; see the class docstring).

        Raises:
            LogCompactedError: ``index`` is at or below :attr:`compacted_index`.
            LogIndexError: ``index`` is past :attr:`last_index`, or below 1.
        """
        self._check(index, lowest=self._state.log.start_index + 1)
        return _copy(self._state.log.entry(index))

    def entries(self, start: int | None = None, stop: int | None = None) -> list[Entry]:
        """The entries with ``start <= index < stop``, in order (copies; see the class
        docstring). ``start`` defaults to :attr:`first_index`, ``stop`` to ``last_index + 1``;
        for the committed ones only, pass ``stop=log.commit_index + 1``. To follow the log as
        it grows, remember the last index read and ask from the next one: a
        :exc:`LogCompactedError` then means entries were compacted before they were read.

        Raises:
            LogCompactedError: ``start`` is at or below :attr:`compacted_index`.
            LogIndexError: ``stop`` is past ``last_index + 1``, or ``start`` below 1.
            ValueError: ``stop`` is below ``start``.
        """
        log = self._state.log
        if start is None:
            start = log.start_index + 1
        if stop is None:
            stop = log.last_index + 1
        if stop < start:
            raise ValueError(f"entries({start}, {stop}): stop must not be below start")
        if stop == start:
            return []
        self._check(start, lowest=log.start_index + 1)
        self._check(stop - 1, lowest=log.start_index + 1)
        return [_copy(entry) for entry in log.slice(start, stop)]

    def _check(self, index: int, *, lowest: int) -> None:
        """Raise the error for an ``index`` below ``lowest`` or past the last entry."""
        log = self._state.log
        first, last = log.start_index + 1, log.last_index
        held = f"the log holds {first}..{last}" if last >= first else f"it holds none after {last}"
        if index < 1:
            raise LogIndexError(
                f"log index {index} does not exist: indices start at 1 ({held})", index, first, last
            )
        if index < lowest:
            raise LogCompactedError(
                f"entry {index} was compacted into a snapshot ({held}); ask from {first} on, "
                "or read entries before they are compacted",
                index, first, last,
            )  # fmt: skip
        if index > last:
            raise LogIndexError(
                f"entry {index} is past the end of the log ({held}); ask up to {last}",
                index, first, last,
            )  # fmt: skip


def _copy(entry: Entry) -> Entry:
    """``entry`` with a command of its own, decoded from the entry's encoding (cached in the
    copy too); no-ops and configurations (immutable) as they are."""
    if entry.kind is not EntryKind.COMMAND:
        return entry
    try:
        data = command_bytes(entry)
    except FrameError:  # outside the wire's data model: only a bare storage can hold one
        return entry
    return Entry(entry.term, entry.index, EncodedCommand(cbor2.loads(data), data))
