"""The rules of :class:`RaftLog` (Raft §5.3, §5.4.1), one test per rule and its edge cases.

``last_index_of_term`` bisects; Hypothesis checks it against a dumb linear scan.
"""

from __future__ import annotations

from collections.abc import Sequence

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_raft._config import Config
from trio_raft._core._log import RaftLog, entry_size
from trio_raft._types import Entry, EntryKind


def entries(*terms: int, start: int = 1) -> list[Entry]:
    """Entries with the given terms at consecutive indexes from ``start``."""
    return [Entry(t, start + i, f"c{start + i}") for i, t in enumerate(terms)]


def log_of(*terms: int) -> RaftLog:
    return RaftLog(entries(*terms))


def terms_of(log: RaftLog) -> list[int]:
    return [log.entry(i).term for i in range(1, log.last_index + 1)]


# -- basics and the index-0 sentinel ----------------------------------------------------------


def test_empty_log() -> None:
    log = RaftLog()
    assert len(log) == 0
    assert log.last_index == 0
    assert log.last_term == 0
    assert log.term(0) == 0
    assert log.term(1) is None
    assert log.slice(1, 10) == []
    assert log.last_index_of_term(0) is None
    assert log.last_index_of_term(1) is None


def test_index_zero_is_the_sentinel_of_term_zero() -> None:
    log = log_of(1, 2)
    assert log.term(0) == 0
    assert log.match_term(0, 0)
    assert not log.match_term(0, 1)


def test_term_by_index() -> None:
    log = log_of(1, 1, 3)
    assert [log.term(i) for i in range(5)] == [0, 1, 1, 3, None]
    assert log.term(-1) is None
    assert log.last_index == 3
    assert log.last_term == 3
    assert log.entry(2) == Entry(1, 2, "c2")


def test_match_term() -> None:
    log = log_of(1, 2, 2)
    assert log.match_term(2, 2)
    assert log.match_term(3, 2)
    assert not log.match_term(2, 1)
    assert not log.match_term(4, 2)  # past the end never matches
    assert not log.match_term(4, 0)


def test_slice_is_half_open_and_clamped() -> None:
    log = log_of(1, 1, 2, 2)
    assert [e.index for e in log.slice(2, 4)] == [2, 3]
    assert [e.index for e in log.slice(0, 3)] == [1, 2]
    assert [e.index for e in log.slice(3, 100)] == [3, 4]
    assert log.slice(5, 9) == []
    assert log.slice(3, 3) == []


# -- append ----------------------------------------------------------------------------------


def test_append_continues_the_log() -> None:
    log = log_of(1)
    log.append(entries(1, 2, start=2))
    assert terms_of(log) == [1, 1, 2]


def test_append_nothing_is_a_no_op() -> None:
    log = log_of(1, 2)
    log.append([])
    assert terms_of(log) == [1, 2]


@pytest.mark.parametrize("index", [1, 2, 4])
def test_append_refuses_a_gap_or_overlap(index: int) -> None:
    log = log_of(1, 1)
    with pytest.raises(AssertionError, match="append of index"):
        log.append([Entry(1, index)])
    assert terms_of(log) == [1, 1]


def test_append_refuses_a_decreasing_term() -> None:
    log = log_of(2, 3)
    with pytest.raises(AssertionError, match="below its predecessor"):
        log.append([Entry(2, 3)])
    assert terms_of(log) == [2, 3]


def test_constructor_validates_like_append() -> None:
    with pytest.raises(AssertionError):
        RaftLog([Entry(1, 2)])
    with pytest.raises(AssertionError):
        RaftLog([Entry(2, 1), Entry(1, 2)])


# -- truncate_from ---------------------------------------------------------------------------


def test_truncate_from_drops_the_suffix() -> None:
    log = log_of(1, 1, 2, 2)
    log.truncate_from(3)
    assert terms_of(log) == [1, 1]
    assert log.last_term == 1
    log.append(entries(3, start=3))  # the log can grow again from the cut
    assert terms_of(log) == [1, 1, 3]


def test_truncate_from_one_empties_the_log() -> None:
    log = log_of(1, 2)
    log.truncate_from(1)
    assert len(log) == 0
    assert log.last_term == 0


def test_truncate_past_the_end_is_a_no_op() -> None:
    log = log_of(1, 2)
    log.truncate_from(3)
    log.truncate_from(10)
    assert terms_of(log) == [1, 2]


def test_truncate_from_zero_drops_everything_or_refuses() -> None:
    """The contract "drop every entry at ``index`` or later" means all of them at index 0.

    Refusing the index would be acceptable too; silently dropping just the last entry is not.
    """
    log = log_of(1, 1, 2)
    try:
        log.truncate_from(0)
    except (ValueError, AssertionError):
        assert terms_of(log) == [1, 1, 2]
        return
    assert len(log) == 0


# -- is_up_to_date (§5.4.1) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last_index", "last_term", "expected"),
    [
        (3, 2, True),  # identical
        (4, 2, True),  # same last term, longer
        (2, 2, False),  # same last term, shorter
        (1, 3, True),  # later last term wins even if much shorter
        (10, 1, False),  # earlier last term loses even if much longer
        (0, 0, False),  # an empty log is behind a non-empty one
    ],
)
def test_is_up_to_date(last_index: int, last_term: int, expected: bool) -> None:
    log = log_of(1, 2, 2)
    assert log.is_up_to_date(last_index, last_term) is expected


def test_anything_is_up_to_date_against_an_empty_log() -> None:
    log = RaftLog()
    assert log.is_up_to_date(0, 0)
    assert log.is_up_to_date(5, 1)


# -- find_conflict ---------------------------------------------------------------------------


def test_find_conflict_none_when_all_present() -> None:
    log = log_of(1, 1, 2)
    assert log.find_conflict([]) == 0
    assert log.find_conflict(entries(1, 1, 2)) == 0
    assert log.find_conflict(entries(1, 2, start=2)) == 0  # a sub-range
    assert log.find_conflict(entries(2, start=3)) == 0


def test_find_conflict_duplicate_and_reordered_entries() -> None:
    log = log_of(1, 1, 2)
    e = entries(1, 1, 2)
    assert log.find_conflict([e[2], e[0], e[1]]) == 0
    assert log.find_conflict([e[1], e[1], e[1]]) == 0


def test_find_conflict_first_new_entry() -> None:
    log = log_of(1, 1)
    assert log.find_conflict(entries(1, 1, 2, 2)) == 3
    assert log.find_conflict(entries(2, start=3)) == 3
    assert RaftLog().find_conflict(entries(1)) == 1


def test_find_conflict_first_disagreeing_entry() -> None:
    log = log_of(1, 1, 2, 2)
    assert log.find_conflict(entries(1, 3, 3, start=2)) == 3
    assert log.find_conflict(entries(3, 3, 3, 3)) == 1
    # A conflict before a missing entry is reported first.
    assert log.find_conflict(entries(1, 1, 3, 3, 3)) == 3


# -- first_index_of_term / last_index_of_term ------------------------------------------------


def test_first_index_of_term() -> None:
    log = log_of(1, 1, 2, 2, 2, 5)
    assert [log.first_index_of_term(i) for i in range(1, 7)] == [1, 1, 3, 3, 3, 6]


def test_last_index_of_term() -> None:
    log = log_of(1, 1, 2, 2, 2, 5)
    assert log.last_index_of_term(1) == 2
    assert log.last_index_of_term(2) == 5
    assert log.last_index_of_term(5) == 6
    assert log.last_index_of_term(3) is None  # a gap between terms
    assert log.last_index_of_term(4) is None
    assert log.last_index_of_term(6) is None  # past the last term
    assert log.last_index_of_term(0) is None  # before the first term


def last_index_of_term_reference(terms: Sequence[int], term: int) -> int | None:
    found = None
    for i, t in enumerate(terms, start=1):
        if t == term:
            found = i
    return found


def first_index_of_term_reference(terms: Sequence[int], index: int) -> int:
    term = terms[index - 1]
    return min(i for i, t in enumerate(terms, start=1) if t == term)


non_decreasing_terms = st.lists(st.integers(1, 6), max_size=30).map(sorted)


@settings(max_examples=200, deadline=None)
@given(terms=non_decreasing_terms, probe=st.integers(0, 8))
def test_last_index_of_term_matches_linear_scan(terms: list[int], probe: int) -> None:
    log = RaftLog(entries(*terms))
    assert log.last_index_of_term(probe) == last_index_of_term_reference(terms, probe)


@settings(max_examples=100, deadline=None)
@given(terms=non_decreasing_terms.filter(bool), data=st.data())
def test_first_index_of_term_matches_linear_scan(terms: list[int], data: st.DataObject) -> None:
    log = RaftLog(entries(*terms))
    index = data.draw(st.integers(1, len(terms)))
    assert log.first_index_of_term(index) == first_index_of_term_reference(terms, index)


@settings(max_examples=100, deadline=None)
@given(terms=non_decreasing_terms, data=st.data())
def test_find_conflict_is_zero_for_any_subset_of_the_log(
    terms: list[int], data: st.DataObject
) -> None:
    log = RaftLog(entries(*terms))
    picked = data.draw(st.lists(st.sampled_from(entries(*terms)), max_size=10)) if terms else []
    assert log.find_conflict(picked) == 0


def test_tail_start_keeps_at_most_so_many_entries_and_bytes() -> None:
    log = RaftLog([Entry(1, i, "x" * 9) for i in range(1, 11)])  # each command: 10 bytes
    assert entry_size(log.entry(1)) == 10  # CBOR: a 1-byte head and 9 bytes of text
    assert log.tail_start(10, max_entries=3, max_bytes=1000) == 7  # keeps 8..10
    assert log.tail_start(10, max_entries=100, max_bytes=25) == 8  # 2 entries fit in 25 bytes
    assert log.tail_start(10, max_entries=0, max_bytes=1000) == 10  # keeps none
    assert log.tail_start(10, max_entries=100, max_bytes=5) == 10  # not even one fits
    assert log.tail_start(6, max_entries=100, max_bytes=1000) == 0  # never below the start
    log.compact(4)
    assert log.tail_start(6, max_entries=100, max_bytes=1000) == 4


@pytest.mark.parametrize(
    ("entry", "size"),
    [
        (Entry(1, 1, b"v" * 16), 17),
        (Entry(1, 1, b"v" * 65536), 65541),
        (Entry(1, 1, ("put", "k", 7)), 8),
        (Entry(1, 1, None, EntryKind.NOOP), 1),
    ],
)
def test_entry_size_is_the_encoded_size_of_the_command(entry: Entry, size: int) -> None:
    assert entry_size(entry) == size == len(cbor2.dumps(entry.command))


def test_entry_size_of_a_command_outside_the_wire_model_is_its_repr() -> None:
    entry = Entry(1, 1, {1, 2})  # a set: only a storage used on its own can hold one
    assert entry_size(entry) == len(repr({1, 2}))


def test_config_validates_snapshot_bytes() -> None:
    assert Config().snapshot_bytes == 64 << 20
    with pytest.raises(ValueError, match="snapshot_bytes must be >= 1"):
        Config(snapshot_bytes=0)


def test_batch_respects_both_limits_but_sends_at_least_one() -> None:
    log = RaftLog([Entry(1, i, "x" * 10) for i in range(1, 11)])
    one = entry_size(log.entry(1))
    entries, size = log.batch(3, max_entries=4, max_bytes=10**6)
    assert [e.index for e in entries] == [3, 4, 5, 6] and size == 4 * one
    entries, size = log.batch(3, max_entries=100, max_bytes=2 * one)
    assert [e.index for e in entries] == [3, 4] and size == 2 * one
    entries, size = log.batch(10, max_entries=100, max_bytes=1)  # over the limit alone
    assert [e.index for e in entries] == [10] and size == one


@pytest.mark.parametrize("start", [0, 11])
def test_batch_outside_the_log_is_a_bug(start: int) -> None:
    log = RaftLog([Entry(1, i, None) for i in range(1, 11)])
    with pytest.raises(AssertionError, match="outside the log"):
        log.batch(start, 10, 10)


@pytest.mark.parametrize(
    ("prev_index", "commit", "expected"),
    [
        (9, 0, (0, 7)),  # past the end: resend from our end
        (0, 0, (0, 1)),
        (5, 0, (2, 3)),  # inside term 2 (indexes 3..5): back up to its first entry
        (5, 3, (2, 4)),  # never to a committed index
        (6, 0, (3, 6)),
    ],
)
def test_conflict_hint(prev_index: int, commit: int, expected: tuple[int, int]) -> None:
    """Fast back-up: the refused index's term and where that term starts, bounded below by
    the commit index and the log's start."""
    log = RaftLog([Entry(t, i, None) for i, t in enumerate([1, 1, 2, 2, 2, 3], start=1)])
    assert log.conflict_hint(prev_index, commit) == expected
