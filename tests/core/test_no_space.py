"""RaftState when the storage refuses appends for disk space: the refused entries stay in the
log and go out again with the next Ready; a leader in the alarm accepts only ``frees_space``
proposals; a snapshot that covers kept entries drops them."""

from __future__ import annotations

import pytest

from trio_raft._config import Config
from trio_raft._core._state import RaftState
from trio_raft._errors import NoSpaceError, ProposalDroppedError
from trio_raft._messages import AppendRequest, AppendResponse, VoteResponse
from trio_raft._types import Entry, HardState, Role, SnapshotMeta, StoredState

CFG = Config(pre_vote=False, check_quorum=False)


def follower(terms: list[int], term: int = 1) -> RaftState:
    entries = tuple(Entry(t, i, f"c{i}") for i, t in enumerate(terms, start=1))
    return RaftState("n1", ["n1", "n2", "n3"], CFG, StoredState(HardState(term, None), entries))


def leader() -> RaftState:
    st = RaftState("n1", ["n1", "n2", "n3"], CFG, StoredState())
    st.on_election_timeout(0.0)
    st.step(VoteResponse("n2", "n1", st.term, True), 0.0)
    assert st.role is Role.LEADER
    st.take_ready()
    st.on_persisted(st.log.last_index)
    return st


def append(
    term: int, prev: int, prev_term: int, terms: list[int], commit: int = 0
) -> AppendRequest:
    entries = tuple(Entry(t, prev + 1 + i, f"x{prev + 1 + i}") for i, t in enumerate(terms))
    return AppendRequest("n2", "n1", term, prev, prev_term, entries, commit, 0)


def test_refused_entries_are_saved_again_with_the_next_ready() -> None:
    st = follower([1, 1])
    st.step(append(1, 2, 1, [1, 1]), 0.0)
    ready = st.take_ready()
    assert [e.index for e in ready.entries] == [3, 4]
    st.on_persist_refused(ready.entries)
    assert st.log.last_index == 4  # still in the log
    assert st.has_ready()
    again = st.take_ready()
    assert [e.index for e in again.entries] == [3, 4]
    assert again.truncate_from is None
    # The leader resends (its progress never moved); the follower already has them.
    st.on_persist_refused(again.entries)
    st.step(append(1, 2, 1, [1, 1, 1]), 0.0)
    third = st.take_ready()
    assert [e.index for e in third.entries] == [3, 4, 5]
    ack = [m for m in third.messages if isinstance(m, AppendResponse)]
    assert ack and ack[-1].success and ack[-1].match_index == 5


def test_a_truncation_after_a_refusal_drops_the_kept_entries_it_covers() -> None:
    st = follower([1, 1])
    st.step(append(1, 2, 1, [1, 1, 1]), 0.0)  # 3, 4, 5 of term 1
    ready = st.take_ready()
    st.on_persist_refused(ready.entries)
    # A new leader of term 2 overwrites from index 4.
    st.step(append(2, 3, 1, [2]), 0.0)
    again = st.take_ready()
    assert [(e.index, e.term) for e in again.entries] == [(3, 1), (4, 2)]
    # Storage never had 3..5, so no truncation reaches it (or it is past its end).
    assert again.truncate_from is None or again.truncate_from > 2


def test_leader_in_the_alarm_accepts_only_space_freeing_commands() -> None:
    st = leader()
    st.no_space = True
    last = st.log.last_index
    with pytest.raises(NoSpaceError, match="frees_space=True") as info:
        st.propose(["put"])
    assert isinstance(info.value, ProposalDroppedError)  # definitely not applied: retry is safe
    assert st.log.last_index == last
    (entry,) = st.propose(["delete"], frees_space=True)
    assert entry.index == last + 1
    st.no_space = False
    assert st.propose(["put"])[0].index == last + 2


def test_a_snapshot_covering_kept_entries_drops_them() -> None:
    st = follower([1, 1])
    st.step(append(1, 2, 1, [1, 1, 1]), 0.0)
    ready = st.take_ready()
    st.on_persist_refused(ready.entries)
    assert st.install_snapshot(SnapshotMeta(4, 1))  # the log held (4, 1): suffix kept
    again = st.take_ready()
    assert [e.index for e in again.entries] == [5]
    assert st.log.start_index == 4


def test_compaction_past_kept_entries_drops_them() -> None:
    """A follower applies committed entries it could not save (a majority has them); its own
    snapshot may then cover them, and they must not be saved behind the compacted log (this
    crashed a node in chaos seed 96 with 'entry 105 does not follow the last saved entry 111')."""
    st = follower([1, 1])
    st.step(append(1, 2, 1, [1, 1, 1, 1], commit=6), 0.0)
    ready = st.take_ready()
    st.on_persist_refused(ready.entries)
    assert st.commit == 6
    assert st.compact(4) == 1
    again = st.take_ready()
    assert [e.index for e in again.entries] == [5, 6]
    assert again.truncate_from is None
