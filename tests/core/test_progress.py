"""Every transition of :class:`Progress`: probe/replicate, the in-flight window, rejections."""

from __future__ import annotations

from trio_raft._core._progress import Progress, ProgressState

WINDOW = 4
WINDOW_BYTES = 1000


def replicating(match: int) -> Progress:
    pr = Progress(match=match, next=match + 1)
    pr.become_replicate()
    return pr


def test_new_progress_probes() -> None:
    pr = Progress(next=11)
    assert pr.state is ProgressState.PROBE
    assert (pr.match, pr.next) == (0, 11)
    assert pr.can_send_entries(WINDOW, WINDOW_BYTES)


def test_probe_sends_one_message_at_a_time() -> None:
    pr = Progress(next=11)
    pr.sent_entries(last_index=12, size=10, now=1.0)
    assert pr.probe_sent
    assert pr.next == 11  # a probe does not advance next optimistically
    assert not pr.inflight
    assert not pr.can_send_entries(WINDOW, WINDOW_BYTES)


def test_probe_becomes_replicate_on_success() -> None:
    pr = Progress(next=11)
    pr.sent_entries(last_index=12, size=10, now=1.0)
    assert pr.on_success(12, 0)
    assert pr.state is ProgressState.REPLICATE
    assert (pr.match, pr.next) == (12, 13)
    assert pr.can_send_entries(WINDOW, WINDOW_BYTES)


def test_stale_success_is_ignored() -> None:
    pr = replicating(5)
    pr.sent_entries(8, 10, 0.0)
    assert not pr.on_success(5, 0)
    assert not pr.on_success(3, 0)
    assert (pr.match, pr.next, len(pr.inflight)) == (5, 9, 1)


def test_replicate_streams_and_success_frees_the_window() -> None:
    pr = replicating(0)
    for last in (2, 4, 6, 8):
        assert pr.can_send_entries(WINDOW, WINDOW_BYTES)
        pr.sent_entries(last, 100, 0.0)
    assert pr.next == 9
    assert not pr.can_send_entries(WINDOW, WINDOW_BYTES)  # 4 messages in flight
    assert pr.on_success(4, 0)  # acknowledges the first two messages
    assert pr.match == 4
    assert [f.last_index for f in pr.inflight] == [6, 8]
    assert pr.inflight_bytes == 200
    assert pr.next == 9  # the success does not pull next back
    assert pr.can_send_entries(WINDOW, WINDOW_BYTES)


def test_success_beyond_next_moves_next() -> None:
    pr = replicating(0)
    pr.sent_entries(2, 1, 0.0)
    assert pr.on_success(5, 0)  # e.g. answering a message of an earlier probe
    assert (pr.match, pr.next) == (5, 6)
    assert not pr.inflight
    assert pr.inflight_bytes == 0


def test_window_limits_by_bytes() -> None:
    pr = replicating(0)
    pr.sent_entries(1, 600, 0.0)
    assert pr.can_send_entries(WINDOW, WINDOW_BYTES)
    pr.sent_entries(2, 600, 0.0)  # the one that crosses the limit still went out
    assert pr.inflight_bytes == 1200
    assert not pr.can_send_entries(WINDOW, WINDOW_BYTES)
    pr.on_success(1, 0)
    assert pr.inflight_bytes == 600
    assert pr.can_send_entries(WINDOW, WINDOW_BYTES)


def test_reject_backs_next_up_to_the_hint() -> None:
    pr = Progress(match=2, next=21)
    pr.sent_entries(21, 1, 0.0)
    assert pr.on_reject(rejected_index=20, hint=8)
    assert pr.state is ProgressState.PROBE
    assert pr.next == 8
    assert not pr.probe_sent  # a fresh probe may go out


def test_reject_never_backs_up_below_match_plus_one() -> None:
    pr = Progress(match=5, next=21)
    pr.sent_entries(21, 1, 0.0)
    assert pr.on_reject(rejected_index=20, hint=1)
    assert pr.next == 6


def test_reject_hint_above_the_rejected_index_is_capped() -> None:
    pr = Progress(match=0, next=11)
    pr.sent_entries(11, 1, 0.0)
    assert pr.on_reject(rejected_index=10, hint=50)
    assert pr.next == 10  # prev_index must go strictly below the rejected one


def test_reject_at_or_below_match_is_stale() -> None:
    pr = replicating(7)
    pr.sent_entries(9, 1, 0.0)
    assert not pr.on_reject(rejected_index=7, hint=1)
    assert not pr.on_reject(rejected_index=3, hint=1)
    assert pr.state is ProgressState.REPLICATE
    assert (pr.match, pr.next, len(pr.inflight)) == (7, 10, 1)


def test_reject_of_an_older_probe_is_stale() -> None:
    pr = Progress(next=21)
    pr.sent_entries(21, 1, 0.0)
    assert pr.on_reject(rejected_index=20, hint=10)  # next = 10, probing prev 9
    pr.sent_entries(10, 1, 0.0)
    assert not pr.on_reject(rejected_index=20, hint=3)  # a duplicate of the first answer
    assert pr.next == 10
    assert pr.probe_sent
    assert pr.on_reject(rejected_index=9, hint=3)
    assert pr.next == 3


def test_reject_in_replicate_falls_back_to_probe() -> None:
    pr = replicating(4)
    pr.sent_entries(6, 10, 0.0)
    pr.sent_entries(8, 10, 0.0)
    assert pr.on_reject(rejected_index=6, hint=5)
    assert pr.state is ProgressState.PROBE
    assert pr.next == 5
    assert not pr.inflight
    assert pr.inflight_bytes == 0


def test_stalled_probe() -> None:
    pr = Progress(next=3)
    assert not pr.stalled(100.0, 1.0)  # nothing outstanding
    pr.sent_entries(3, 1, now=10.0)
    assert not pr.stalled(10.5, 1.0)
    assert pr.stalled(11.0, 1.0)


def test_stalled_replicate_uses_the_oldest_message() -> None:
    pr = replicating(0)
    assert not pr.stalled(100.0, 1.0)
    pr.sent_entries(1, 1, now=10.0)
    pr.sent_entries(2, 1, now=10.8)
    assert not pr.stalled(10.9, 1.0)
    assert pr.stalled(11.0, 1.0)
    pr.on_success(1, 0)  # the oldest is answered; the next one is younger
    assert not pr.stalled(11.0, 1.0)
    assert pr.stalled(11.8, 1.0)
    pr.on_success(2, 0)
    assert not pr.stalled(1000.0, 1.0)


def test_become_probe_restarts_from_match() -> None:
    pr = replicating(3)
    pr.sent_entries(10, 5, 0.0)
    pr.become_probe()
    assert pr.state is ProgressState.PROBE
    assert pr.next == 4
    assert not pr.probe_sent
    assert not pr.inflight
    assert pr.inflight_bytes == 0


def test_stall_resends_a_probe_and_turns_a_lost_window_into_a_probe() -> None:
    pr = Progress(match=3, next=4)
    pr.sent_entries(last_index=5, size=10, now=0.0)
    pr.on_stall()
    assert (pr.state, pr.probe_sent, pr.next) == (ProgressState.PROBE, False, 4)
    pr = replicating(3)
    pr.sent_entries(9, 10, 0.0)
    pr.on_stall()
    assert (pr.state, pr.match, pr.next, len(pr.inflight)) == (ProgressState.PROBE, 3, 4, 0)


def test_stall_leaves_a_snapshot_stream_alone() -> None:
    pr = replicating(3)
    pr.become_snapshot()
    pr.pending_snapshot = 50
    pr.on_stall()
    assert (pr.state, pr.pending_snapshot) == (ProgressState.SNAPSHOT, 50)


def test_late_success_below_the_log_start_keeps_the_snapshot_stream() -> None:
    """A late AppendEntries success that still leaves the follower inside the compacted prefix
    must not abandon its snapshot stream (it would be switched straight back, stranding the
    follower's half-received download)."""
    pr = replicating(3)
    pr.become_snapshot()
    pr.pending_snapshot = 50
    assert pr.on_success(20, 40)
    assert (pr.state, pr.match, pr.next, pr.pending_snapshot) == (
        ProgressState.SNAPSHOT,
        20,
        21,
        50,
    )


def test_late_success_within_the_log_ends_the_snapshot_stream() -> None:
    pr = replicating(3)
    pr.become_snapshot()
    assert pr.on_success(45, 40)
    assert (pr.state, pr.match, pr.next) == (ProgressState.REPLICATE, 45, 46)
