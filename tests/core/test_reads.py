"""The leader's queue of ReadIndex reads (thesis §6.4), by itself."""

from __future__ import annotations

from trio_raft._core._reads import ReadQueue


def test_reads_confirm_in_order_once_their_round_is_acknowledged() -> None:
    q = ReadQueue()
    assert not q
    a, b, c = q.add(seq=1, index=10), q.add(seq=2, index=10), q.add(seq=2, index=12)
    assert len({a, b, c}) == 3 and q
    assert q.confirm(0) == []
    assert q.confirm(1) == [(a, 10)]
    assert q.confirm(5) == [(b, 10), (c, 12)]
    assert not q and q.confirm(9) == []


def test_a_read_behind_an_unconfirmed_one_waits() -> None:
    """Reads are answered in order: a later read never overtakes an earlier one."""
    q = ReadQueue()
    first = q.add(seq=3, index=1)
    q.add(seq=1, index=1)  # lower round, but queued behind round 3
    assert q.confirm(2) == []
    assert q.confirm(3)[0][0] == first


def test_fail_all_returns_every_waiting_read_and_ids_stay_unique() -> None:
    q = ReadQueue()
    ids = [q.add(seq=i, index=i) for i in range(1, 4)]
    assert q.fail_all() == ids and not q
    assert q.add(seq=9, index=9) not in ids
