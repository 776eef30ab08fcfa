"""Tests of the seeded in-memory network (``trio_raft.testing._network``).

Every async test runs on ``autojump_clock``, so delays are virtual and exact: a message sent at
``t`` over a link with delays in ``[lo, hi]`` must arrive in ``[t + lo, t + hi]``.
"""

from __future__ import annotations

import math
import random

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from trio_raft._abc import Transport
from trio_raft._messages import AppendRequest, Message, VoteRequest, VoteResponse
from trio_raft._types import Entry
from trio_raft.testing._network import MemoryNetwork, MemoryTransport, Verdict

SEED = 20240611


def vote(src: str, dst: str, term: int = 1) -> VoteRequest:
    return VoteRequest(src=src, dst=dst, term=term, last_log_index=0, last_log_term=0)


async def start(nursery: trio.Nursery, seed: int = SEED, **kwargs: int | float) -> MemoryNetwork:
    network = MemoryNetwork(random.Random(seed), **kwargs)  # type: ignore[arg-type]
    await nursery.start(network.run)
    return network


def pairs(spec: str) -> list[tuple[str, str]]:
    """``"ab ca"`` -> ``[("a", "b"), ("c", "a")]``: links written as src then dst."""
    return [(link[0], link[1]) for link in spec.split()]


def drain(transport: MemoryTransport) -> list[Message]:
    received: list[Message] = []
    while True:
        try:
            received.append(transport.receive_channel.receive_nowait())
        except trio.WouldBlock:
            return received


def record(network: MemoryNetwork, kind: str) -> list[tuple[float, Message]]:
    events: list[tuple[float, Message]] = []

    def on_event(time: float, event: str, message: Message) -> None:
        if event == kind:
            events.append((time, message))

    network.on_event = on_event
    return events


async def test_delays_lie_within_link_bounds(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    net = await start(nursery, delay_s_min=0.010, delay_s_max=0.020)
    a, b = net.transport("a"), net.transport("b")
    as_protocol: Transport = a  # MemoryTransport satisfies the Transport protocol (mypy)
    assert as_protocol is a
    delivered = record(net, "deliver")
    t0 = trio.current_time()
    for term in range(200):
        a.send(vote("a", "b", term))
    await trio.sleep(0.0099)
    assert drain(b) == []
    await trio.sleep(0.0102)
    assert len(drain(b)) == 200
    times = [t - t0 for t, _ in delivered]
    assert all(0.010 <= t <= 0.020 for t in times)
    assert max(times) - min(times) > 0.008  # spread over the range, not one fixed delay
    assert times == sorted(times)


async def test_drop_probability_extremes(autojump_clock: MockClock, nursery: trio.Nursery) -> None:
    net = await start(nursery)
    a, b = net.transport("a"), net.transport("b")
    net.set_default_link(drop=1.0)
    for term in range(100):
        a.send(vote("a", "b", term))
    await trio.sleep(1)
    assert drain(b) == []
    assert net.stats().total.dropped == 100
    net.set_default_link(drop=0.0)
    for term in range(100):
        a.send(vote("a", "b", term))
    await trio.sleep(1)
    assert sorted(m.term for m in drain(b)) == list(range(100))
    net.set_default_link(drop=0.5)
    for term in range(1000):
        a.send(vote("a", "b", term))
    await trio.sleep(1)
    assert 350 < len(drain(b)) < 650


async def test_duplicate_one_gives_exactly_two_copies(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    net = await start(nursery, queue_size=1000)
    a, b = net.transport("a"), net.transport("b")
    net.set_link("a", "b", duplicate=1.0)
    for term in range(50):
        a.send(vote("a", "b", term))
    await trio.sleep(1)
    terms = [m.term for m in drain(b)]
    assert sorted(terms) == sorted(list(range(50)) * 2)
    stats = net.stats().by_type["VoteRequest"]
    assert (stats.sent, stats.duplicated, stats.delivered, stats.dropped) == (50, 50, 100, 0)


@pytest.mark.parametrize("reorder", [0.0, 0.5])
async def test_reordering_only_when_enabled(
    autojump_clock: MockClock, nursery: trio.Nursery, reorder: float
) -> None:
    # Sends 5 ms apart, delays in [1, 5] ms: without the reorder fault order must be kept.
    net = await start(nursery, delay_s_min=0.001, delay_s_max=0.005)
    a, b = net.transport("a"), net.transport("b")
    net.set_default_link(reorder=reorder, reorder_delay_s_max=0.050)
    for term in range(100):
        a.send(vote("a", "b", term))
        await trio.sleep(0.005)
    await trio.sleep(1)
    terms = [m.term for m in drain(b)]
    assert sorted(terms) == list(range(100))
    assert (terms == list(range(100))) is (reorder == 0.0)


async def test_partition_blocks_both_ways_until_heal(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    net = await start(nursery)
    t = {n: net.transport(n) for n in "abcd"}
    net.partition(["a", "b"], ["c"])  # d is in no group: isolated from everyone
    for src, dst in pairs("ab ba ac ca bc cb da ad cd"):
        t[src].send(vote(src, dst))
    await trio.sleep(1)
    got = {n: [(m.src, m.dst) for m in drain(t[n])] for n in "abcd"}
    assert got == {"a": [("b", "a")], "b": [("a", "b")], "c": [], "d": []}
    net.heal()
    for src, dst in pairs("ac ca da"):
        t[src].send(vote(src, dst))
    await trio.sleep(1)
    assert [len(drain(t[n])) for n in "acd"] == [2, 1, 0]
    with pytest.raises(ValueError, match="more than one group"):
        net.partition(["a", "b"], ["b", "c"])


async def test_isolate_cuts_one_node_off(autojump_clock: MockClock, nursery: trio.Nursery) -> None:
    net = await start(nursery)
    t = {n: net.transport(n) for n in "abc"}
    net.isolate("b")
    for src, dst in pairs("ab ba ac cb"):
        t[src].send(vote(src, dst))
    await trio.sleep(1)
    assert [len(drain(t[n])) for n in "abc"] == [0, 0, 1]
    net.partition(["a", "b", "c"])
    net.isolate("c")  # on top of a partition
    for src, dst in pairs("ab ca"):
        t[src].send(vote(src, dst))
    await trio.sleep(1)
    assert [len(drain(t[n])) for n in "abc"] == [0, 1, 0]


async def test_detach_drops_and_reattach_works(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    net = await start(nursery)
    a, old_b = net.transport("a"), net.transport("b")
    a.send(vote("a", "b", 1))
    await trio.sleep(1)  # delivered, but never read: lost with the crash
    a.send(vote("a", "b", 2))  # still in flight when b goes down
    net.detach("b")
    a.send(vote("a", "b", 3))  # b is down
    old_b.send(vote("b", "a"))  # a crashed node cannot talk
    await trio.sleep(1)
    with pytest.raises(trio.EndOfChannel):
        old_b.receive_channel.receive_nowait()
    assert drain(a) == []
    stats = net.stats().total
    assert (stats.sent, stats.delivered, stats.dropped) == (4, 1, 4)
    new_b = net.transport("b")
    a.send(vote("a", "b", 4))
    new_b.send(vote("b", "a", 5))
    await trio.sleep(1)
    assert [m.term for m in drain(new_b)] == [4]
    assert [m.term for m in drain(a)] == [5]
    a.send(vote("a", "b", 6))  # in flight when b is re-attached: not for the new incarnation
    newest_b = net.transport("b")
    await trio.sleep(1)
    assert drain(newest_b) == []
    with pytest.raises(ValueError, match="cannot send"):
        a.send(vote("b", "a"))


async def test_hook_drop_hold_release_discard(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    net = await start(nursery)
    a, b = net.transport("a"), net.transport("b")
    net.hook = lambda m: {1: Verdict.DROP, 2: Verdict.HOLD, 3: Verdict.HOLD}.get(
        m.term, Verdict.DELIVER
    )
    for term in range(5):
        a.send(vote("a", "b", term))
    await trio.sleep(1)
    assert [m.term for m in drain(b)] == [0, 4]
    assert [m.term for m in net.held] == [2, 3]
    assert net.stats().held == 2
    assert net.release(vote("a", "b", 3)) == [vote("a", "b", 3)]
    assert net.release(vote("a", "b", 99)) == []
    await trio.sleep(1)
    assert [m.term for m in drain(b)] == [3]
    assert net.discard(lambda m: m.term == 2) == [vote("a", "b", 2)]
    assert net.held == ()
    net.hook = lambda m: Verdict.HOLD
    a.send(vote("a", "b", 7))
    a.send(vote("a", "b", 8))
    net.release()
    await trio.sleep(1)
    assert sorted(m.term for m in drain(b)) == [7, 8]
    stats = net.stats().total
    assert (stats.sent, stats.delivered, stats.dropped) == (7, 5, 2)


async def test_inject_bypasses_faults(autojump_clock: MockClock, nursery: trio.Nursery) -> None:
    net = await start(nursery)
    net.transport("a")
    b = net.transport("b")
    net.set_default_link(drop=1.0)
    net.partition(["a"], ["b"])
    delivered = record(net, "deliver")
    forged = VoteResponse(src="a", dst="b", term=9, granted=True)
    t0 = trio.current_time()
    net.inject(forged)
    await trio.testing.wait_all_tasks_blocked()  # the run task's next turn, no time passes
    assert drain(b) == [forged]
    assert delivered == [(t0, forged)]


async def test_stats_counts_and_bytes(autojump_clock: MockClock, nursery: trio.Nursery) -> None:
    # A fixed delay: delivery order is send order, so the queue overflows on the last two votes.
    net = await start(nursery, queue_size=2, delay_s_min=0.002, delay_s_max=0.002)
    a, b = net.transport("a"), net.transport("b")
    entries = (Entry(term=1, index=1, command="abc"), Entry(term=1, index=2))
    append = AppendRequest(
        src="a", dst="b", term=1, prev_index=0, prev_term=0, entries=entries, commit=0
    )
    a.send(append)  # 40 + (16 + len("'abc'")) + (16 + len("None")) = 81 bytes
    for term in range(3):
        a.send(vote("a", "b", term))
    await trio.sleep(1)
    stats = net.stats()
    assert stats.by_type["AppendRequest"] == (
        type(stats.total)(sent=1, delivered=1, dropped=0, duplicated=0, bytes_sent=81)
    )
    votes = stats.by_type["VoteRequest"]
    assert (votes.sent, votes.delivered, votes.dropped, votes.bytes_sent) == (3, 1, 2, 120)
    assert stats.total.sent == 4
    assert len(drain(b)) == 2
    net.reset_stats()
    assert net.stats().total.sent == 0
    assert stats.total.sent == 4  # a snapshot does not change


async def test_in_flight_is_bounded(autojump_clock: MockClock, nursery: trio.Nursery) -> None:
    net = await start(nursery, max_in_flight=3)
    a, b = net.transport("a"), net.transport("b")
    for term in range(5):
        a.send(vote("a", "b", term))
    assert (net.stats().in_flight, net.stats().total.dropped) == (3, 2)
    await trio.sleep(1)
    assert sorted(m.term for m in drain(b)) == [0, 1, 2]


def test_invalid_settings_are_rejected() -> None:
    net = MemoryNetwork(random.Random(0))
    for bad in ({"drop": 1.5}, {"duplicate": -0.1}, {"reorder": math.nan}, {"delay_s_min": -1.0}):
        with pytest.raises(ValueError):
            net.set_link("a", "b", **bad)
    with pytest.raises(ValueError, match="delay_s_min"):
        net.set_default_link(delay_s_min=0.5)  # above the default max of 5 ms
    assert net.link("a", "b") == net.link("x", "y")  # failed calls changed nothing
    with pytest.raises(ValueError):
        MemoryNetwork(random.Random(0), delay_s_max=math.inf)
    net.set_link("a", "b", drop=0.25)
    net.partition(["a"])
    net.reset_faults()
    assert net.link("a", "b").drop == 0.0


def _trace(seed: int) -> list[tuple[float, str, int, str]]:
    """One scenario with every fault on, run in a fresh trio run with a fresh clock."""
    trace: list[tuple[float, str, int, str]] = []

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            net = await start(nursery, seed, queue_size=10_000)
            net.set_default_link(drop=0.2, duplicate=0.2, reorder=0.3)
            net.on_event = lambda time, kind, m: trace.append((time, kind, m.term, m.dst))
            ts = [net.transport(n) for n in "abc"]
            for term in range(300):
                src, dst = ts[term % 3], "abc"[(term + 1) % 3]
                src.send(vote(src.node_id, dst, term))
                if term % 7 == 0:
                    await trio.sleep(0.001)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()

    trio.run(scenario, clock=MockClock(autojump_threshold=0))
    return trace


def test_same_seed_same_delivery_sequence() -> None:
    first = _trace(SEED)
    assert len([e for e in first if e[1] == "deliver"]) > 200
    assert {e[1] for e in first} == {"send", "drop", "dup", "deliver"}
    assert _trace(SEED) == first
    assert _trace(SEED + 1) != first
