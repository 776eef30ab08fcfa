"""``LogView`` (``Node.log``) over a node's Raft state: bounds, typed errors, copies."""

from __future__ import annotations

import pytest

from trio_raft import (
    Entry,
    EntryKind,
    LogCompactedError,
    LogIndexError,
    LogPosition,
    LogView,
    Membership,
    RaftError,
)
from trio_raft._config import Config
from trio_raft._core._state import RaftState
from trio_raft._messages import AppendRequest
from trio_raft._types import HardState, StoredState

MEMBERS = Membership(["n1", "n2", "n3"])


def compacted_state() -> RaftState:
    """A follower whose log was compacted up to 10 (term 2) and holds 11..14."""
    entries = (
        Entry(2, 11, ("put", "k", "v")),
        Entry(3, 12, None, EntryKind.NOOP),
        Entry(3, 13, MEMBERS, EntryKind.CONFIG),
        Entry(3, 14, {"op": ["a", "b"]}),
    )
    stored = StoredState(HardState(3, "n2"), entries, 10, 2, MEMBERS)
    return RaftState("n1", None, Config(), stored)


def test_bounds_of_a_compacted_log() -> None:
    st = compacted_state()
    st.step(AppendRequest("n2", "n1", 3, 14, 3, (), 12, 0), 0.0)  # commit up to 12
    log = LogView(st)
    assert (log.compacted_index, log.compacted_term) == (10, 2)
    assert (log.first_index, log.last_index, log.last_term) == (11, 14, 3)
    assert log.last == LogPosition(14, 3)
    assert log.commit_index == 12
    assert len(log) == 4
    assert [log.term_at(i) for i in (0, 10, 11, 12, 14)] == [0, 2, 2, 3, 3]
    assert "11..14" in repr(log)


def test_entries_are_copies_decoded_from_their_encoding() -> None:
    st = compacted_state()
    log = LogView(st)
    entries = log.entries()
    assert [(e.index, e.term, e.kind) for e in entries] == [
        (11, 2, EntryKind.COMMAND),
        (12, 3, EntryKind.NOOP),
        (13, 3, EntryKind.CONFIG),
        (14, 3, EntryKind.COMMAND),
    ]
    assert entries[0].command == ["put", "k", "v"]  # as every node reads it: a list
    assert entries[2].command == MEMBERS
    assert entries == log.entries(11, 15) == [log.entry(i) for i in range(11, 15)]
    command = entries[3].command
    assert isinstance(command, dict)
    command["op"].append("c")  # the copy is the caller's: the log is unchanged
    assert st.log.entry(14).command == {"op": ["a", "b"]}
    assert log.entry(14).command == {"op": ["a", "b"]}
    assert log.entries(12, 14) == entries[1:3]
    assert log.entries(12, 12) == []
    assert log.entries(stop=12) == entries[:1]


def test_compacted_and_out_of_range_indexes_raise_typed_errors() -> None:
    log = LogView(compacted_state())
    with pytest.raises(LogCompactedError, match="ask from 11 on") as compacted:
        log.entry(10)
    assert (compacted.value.index, compacted.value.first_index) == (10, 11)
    assert compacted.value.last_index == 14
    assert isinstance(compacted.value, IndexError) and isinstance(compacted.value, RaftError)
    with pytest.raises(LogCompactedError):
        log.entries(5)
    with pytest.raises(LogCompactedError):
        log.term_at(9)
    with pytest.raises(LogIndexError, match=r"past the end of the log.*ask up to 14") as past:
        log.entry(15)
    assert not isinstance(past.value, LogCompactedError)
    with pytest.raises(LogIndexError, match="past the end"):
        log.entries(11, 16)
    with pytest.raises(LogIndexError, match="past the end"):
        log.term_at(15)
    with pytest.raises(LogIndexError, match="indices start at 1"):
        log.term_at(-1)
    with pytest.raises(ValueError, match="stop must not be below start"):
        log.entries(13, 12)


def test_an_empty_log() -> None:
    log = LogView(RaftState("n1", ["n1"], Config(), StoredState()))
    assert (log.first_index, log.last_index, log.commit_index, len(log)) == (1, 0, 0, 0)
    assert log.last == LogPosition(0, 0)
    assert log.entries() == []
    assert log.term_at(0) == 0
    with pytest.raises(LogIndexError, match="it holds none after 0"):
        log.entry(1)
    with pytest.raises(LogIndexError, match="indices start at 1"):
        log.entry(0)


def test_the_view_cannot_change_the_log() -> None:
    log = LogView(compacted_state())
    with pytest.raises(AttributeError):
        log.last_index = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        log.extra = 1  # type: ignore[attr-defined]
    entry = log.entry(11)
    with pytest.raises(AttributeError):
        entry.index = 3  # type: ignore[misc]
