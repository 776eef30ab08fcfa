"""The wire format (``trio_raft._codec``): round trips, and every class of rejection.

Canonical form: commands come back with tuples as lists (CBOR has one array type), so expected
values go through :func:`canonical` before comparing.
"""

from __future__ import annotations

import contextlib
import datetime
import math
from typing import Any, cast

import attrs
import cbor2
import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings

from tests._strategies import commands, scalars
from trio_raft import Config
from trio_raft import _codec as codec
from trio_raft._codec import FrameError, check_command, decode, encode
from trio_raft._messages import (
    AppendRequest,
    AppendResponse,
    Message,
    SnapshotRequest,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from trio_raft._types import MAX_INDEX, MAX_TERM, Entry, EntryKind, FieldError, Membership
from trio_raft.testing import KVStateMachine, Verdict, open_simulated_cluster

CLUSTER = "test-cluster"
MAX = 1 << 20
UINT = st.integers(0, MAX_INDEX)
TERM = st.integers(0, MAX_TERM)


def canonical(value: object) -> object:
    """What a command looks like after a round trip."""
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    return value


def canonical_message(message: Message) -> Message:
    if isinstance(message, AppendRequest):
        entries = tuple(attrs.evolve(e, command=canonical(e.command)) for e in message.entries)
        return attrs.evolve(message, entries=entries)
    return message


def round_trip(message: Message) -> Message:
    return decode(encode(message, cluster_id=CLUSTER), cluster_id=CLUSTER, max_bytes=MAX)


# -- strategies -------------------------------------------------------------------------------

node_ids = st.text(min_size=1, max_size=8)
SRC, DST = "a", "b"
# Addresses without tuples, so that memberships round trip exactly.
addresses = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
) | st.builds(lambda h: {"peer": f"ws://{h}:1/raft", "client": f"ws://{h}:2/kv"}, node_ids)


@st.composite
def memberships(draw: st.DrawFn) -> Membership:
    pool = draw(st.lists(node_ids, min_size=1, max_size=6, unique=True))
    voters = draw(st.sets(st.sampled_from(pool), min_size=1))
    learners = draw(st.sets(st.sampled_from(pool))) - voters
    outgoing = draw(st.sets(st.sampled_from(pool)))
    if outgoing == voters:
        outgoing = set()
    members = sorted(voters | learners | outgoing)
    given = draw(st.none() | st.fixed_dictionaries({m: addresses for m in members}))
    return Membership(voters, learners, outgoing, given or {})


@st.composite
def broken_plains(draw: st.DrawFn) -> object:
    """Plain forms that :meth:`Membership.from_plain` refuses, most of them near misses."""
    plain: dict[str, Any] = draw(memberships()).to_plain()
    match draw(st.sampled_from(range(9))):
        case 0:
            del plain[draw(st.sampled_from(sorted(plain)))]
        case 1:
            plain["extra"] = []
        case 2:
            plain["voters"] = []
        case 3:
            plain["voters"] = plain["voters"] + plain["voters"]  # duplicates
        case 4:
            plain["learners"] = plain["learners"] + plain["voters"][:1]  # voter and learner
        case 5:
            plain["addresses"] = {**plain["addresses"], "stranger": None}
        case 6:
            plain["addresses"] = dict.fromkeys(plain["addresses"], b"x" * 1100)  # too big
        case 7:
            plain[draw(st.sampled_from(sorted(plain)))] = draw(wild_values)
        case _:
            return draw(wild_values)
    return plain


@st.composite
def endpoints(draw: st.DrawFn) -> dict[str, str]:
    src = draw(node_ids)
    dst = draw(node_ids.filter(lambda d: d != src))
    return {"src": src, "dst": dst}


@st.composite
def append_requests(draw: st.DrawFn) -> AppendRequest:
    term = draw(st.integers(1, MAX_TERM))
    prev_term = draw(st.integers(0, term))
    prev_index = draw(st.integers(0, 2**62))
    entries = []
    entry_term = max(prev_term, 1)
    for i in range(draw(st.integers(0, 5))):
        entry_term = draw(st.integers(entry_term, term))
        kind = draw(st.sampled_from(EntryKind))
        strategy = {
            EntryKind.COMMAND: commands,
            EntryKind.NOOP: st.none(),
            EntryKind.CONFIG: memberships(),
        }[kind]
        command = draw(strategy)
        entries.append(Entry(entry_term, prev_index + 1 + i, command, kind))
    return AppendRequest(
        **draw(endpoints()), term=term, prev_index=prev_index, prev_term=prev_term,
        entries=tuple(entries), commit=draw(UINT), seq=draw(UINT),
    )  # fmt: skip


@st.composite
def snapshot_requests(draw: st.DrawFn) -> SnapshotRequest:
    term = draw(st.integers(1, MAX_TERM))
    return SnapshotRequest(
        **draw(endpoints()), term=term, index=draw(st.integers(1, 2**63 - 1)),
        snapshot_term=draw(st.integers(1, term)), offset=draw(UINT),
        data=draw(st.binary(max_size=64)), done=draw(st.booleans()),
        membership=draw(memberships()),
    )  # fmt: skip


@st.composite
def vote_requests(draw: st.DrawFn) -> VoteRequest:
    pre_vote = draw(st.booleans())
    return VoteRequest(
        SRC, draw(node_ids.filter(lambda d: d != SRC)), draw(TERM), draw(UINT), draw(TERM),
        pre_vote=pre_vote, transfer=not pre_vote and draw(st.booleans()),
    )  # fmt: skip


messages = st.one_of(
    vote_requests(),
    st.builds(
        VoteResponse,
        src=node_ids.filter(lambda d: d != DST),
        dst=st.just(DST),
        term=TERM,
        granted=st.booleans(),
        pre_vote=st.booleans(),
    ),
    append_requests(),
    st.builds(
        AppendResponse,
        src=st.just(SRC),
        dst=node_ids.filter(lambda d: d != SRC),
        term=TERM,
        success=st.booleans(),
        match_index=UINT,
        rejected_index=UINT,
        conflict_term=TERM,
        conflict_index=UINT,
        last_index=UINT,
        seq=UINT,
    ),
    snapshot_requests(),
    st.builds(
        SnapshotResponse,
        src=node_ids.filter(lambda d: d != DST),
        dst=st.just(DST),
        term=TERM,
        index=st.integers(1, 2**63 - 1),
        offset=UINT,
        done=st.booleans(),
    ),
    st.builds(
        TimeoutNow,
        src=st.just(SRC),
        dst=node_ids.filter(lambda d: d != SRC),
        term=st.integers(1, MAX_TERM),
    ),
)


# -- round trips ------------------------------------------------------------------------------


@given(messages)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_every_message_round_trips(message: Message) -> None:
    assert round_trip(message) == canonical_message(message)


@given(messages)
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
def test_a_constructed_message_encodes_alike_without_revalidation(message: Message) -> None:
    """``checked=True`` (the transport's send of what the node built) skips only the re-check:
    the same bytes."""
    assert encode(message, cluster_id="c", checked=True) == encode(message, cluster_id="c")


@given(commands)
def test_commands_round_trip_in_canonical_form(command: object) -> None:
    check_command(command)
    message = AppendRequest("a", "b", 1, 0, 0, (Entry(1, 1, command),), 0)
    decoded = round_trip(message)
    assert isinstance(decoded, AppendRequest)
    assert decoded.entries[0].command == canonical(command)


def test_nan_round_trips_as_nan() -> None:
    message = AppendRequest("a", "b", 1, 0, 0, (Entry(1, 1, [math.nan]),), 0)
    decoded = round_trip(message)
    assert isinstance(decoded, AppendRequest)
    assert isinstance(decoded.entries[0].command, list)
    assert math.isnan(decoded.entries[0].command[0])


def test_envelope_layout() -> None:
    frame = encode(VoteRequest("n1", "n2", 5, 7, 4, pre_vote=True), cluster_id=CLUSTER)
    assert cbor2.loads(frame) == {
        "v": 2, "c": CLUSTER, "s": "n1", "d": "n2", "t": 1, "b": [5, 7, 4, True, False],
    }  # fmt: skip
    frame = encode(VoteRequest("n1", "n2", 5, 7, 4, transfer=True), cluster_id=CLUSTER)
    assert cbor2.loads(frame)["b"] == [5, 7, 4, False, True]
    assert cbor2.loads(encode(TimeoutNow("n1", "n2", 5), cluster_id=CLUSTER)) == {
        "v": 2, "c": CLUSTER, "s": "n1", "d": "n2", "t": 7, "b": [5],
    }  # fmt: skip
    membership = Membership({"n1", "n2"}, {"n3"}, (), {"n1": "ws://a", "n2": None, "n3": None})
    plain = {
        "voters": ["n1", "n2"], "learners": ["n3"], "outgoing": [],
        "addresses": {"n1": "ws://a", "n2": None, "n3": None},
    }  # fmt: skip
    frame = encode(
        SnapshotRequest("n1", "n2", 5, 9, 4, 0, b"ab", False, membership), cluster_id=CLUSTER
    )
    assert cbor2.loads(frame)["b"] == [5, 9, 4, 0, b"ab", False, plain]
    entries: tuple[Entry, ...] = (Entry(5, 10, membership, EntryKind.CONFIG),)
    frame = encode(AppendRequest("n1", "n2", 5, 9, 4, entries, 9), cluster_id=CLUSTER)
    assert cbor2.loads(frame)["b"][-1] == [[5, 10, 2, plain]]
    entries = (Entry(2, 5, ("put", "k", "v")), Entry(3, 6, None, EntryKind.NOOP))
    frame = encode(AppendRequest("n1", "n2", 3, 4, 2, entries, 4, 9), cluster_id=CLUSTER)
    assert cbor2.loads(frame)["b"] == [
        3,
        4,
        2,
        4,
        9,
        [[2, 5, 0, ["put", "k", "v"]], [3, 6, 1, None]],
    ]


async def test_real_cluster_traffic_round_trips(autojump_clock: trio.testing.MockClock) -> None:
    """Every message a simulated cluster sends, snapshots included, survives the codec."""
    seen: set[str] = set()

    def through_the_codec(message: Message) -> Verdict:
        assert round_trip(message) == canonical_message(message), message
        seen.add(type(message).__name__)
        return Verdict.DELIVER

    config = Config(snapshot_entries=20, snapshot_keep_entries=2, snapshot_chunk_bytes=64)
    async with open_simulated_cluster(3, seed=7, config=config) as cluster:
        cluster.network.hook = through_the_codec
        with trio.fail_after(60):
            await cluster.wait_leader()
            await cluster.crash("n3")
            for i in range(60):
                await cluster.propose(("put", f"k{i % 7}", f"v{i}"))
            await cluster.start("n3")
            await cluster.wait_converged()
    # Every type but TimeoutNow (no leadership transfer in this run).
    assert seen == {t.__name__ for t in codec.TYPE_CODES} - {"TimeoutNow"}


# -- rejections -------------------------------------------------------------------------------


def envelope(**changes: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "v": 2,
        "c": CLUSTER,
        "s": "n1",
        "d": "n2",
        "t": 1,
        "b": [5, 7, 4, False, False],
    }
    env.update(changes)
    return env


def vote_frame(*body: object) -> bytes:
    return cbor2.dumps(envelope(b=list(body)))


def append_body(*entries: list[Any], term: int = 5, prev_index: int = 3, prev_term: int = 2) -> Any:
    return [term, prev_index, prev_term, 0, 0, list(entries)]


PLAIN: dict[str, Any] = {
    "voters": ["n1", "n2"], "learners": [], "outgoing": [], "addresses": {"n1": 1, "n2": 2}
}  # fmt: skip


def plain(**changes: Any) -> dict[str, Any]:
    return {**PLAIN, **changes}


def snapshot_body(membership: object = PLAIN, *, term: int = 5, snapshot_term: int = 2) -> Any:
    return [term, 3, snapshot_term, 0, b"", False, membership]


def nested(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


def rejects(data: bytes, match: str, *, max_bytes: int = MAX) -> FrameError:
    with pytest.raises(FrameError, match=match) as info:
        decode(data, cluster_id=CLUSTER, max_bytes=max_bytes)
    return info.value


def test_valid_hand_built_frame_is_accepted() -> None:
    assert decode(cbor2.dumps(envelope()), cluster_id=CLUSTER, max_bytes=MAX) == VoteRequest(
        "n1", "n2", 5, 7, 4, pre_vote=False
    )
    assert decode(
        cbor2.dumps(envelope(t=5, b=snapshot_body())), cluster_id=CLUSTER, max_bytes=MAX
    ) == SnapshotRequest("n1", "n2", 5, 3, 2, 0, b"", False, Membership.from_plain(PLAIN))


def test_size_cap_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded an oversize frame")

    monkeypatch.setattr(cbor2, "CBORDecoder", no_decoding)
    rejects(b"\xff" * 101, r"^frame of 101 bytes exceeds the limit of 100 bytes$", max_bytes=100)
    rejects(b"\xff" * 100, r"decoded an oversize frame", max_bytes=100)  # the spy works


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", r"^not well-formed CBOR"),
        (b"\xff", r"^not well-formed CBOR"),
        (cbor2.dumps(envelope()) + b"\x00", r"^1 trailing bytes after the CBOR item$"),
        (cbor2.dumps(envelope())[:-1], r"^not well-formed CBOR"),
        (b"\xa2\x61v\x01\x61v\x01", r"^not well-formed CBOR: .*[Dd]uplicate"),  # {"v": 1, "v": 1}
        (b"\xbf\x61v\x01\xff", r"^not well-formed CBOR: .*indefinite"),  # indefinite-length map
        (b"\xa1\x01\x01", r"^not well-formed CBOR"),  # an integer map key
        (cbor2.dumps([1, 2]), r"^envelope: expected a map, got list$"),
        (cbor2.dumps(envelope(v=1)),
         r"^envelope: unsupported protocol version 1 \(this node speaks 2; all nodes of a "
         r"cluster must speak the same version\)$"),
        (cbor2.dumps(envelope(v=3)), r"^envelope: unsupported protocol version 3 "),
        (cbor2.dumps(envelope(v=True)), r"^envelope: unsupported protocol version True "),
        (cbor2.dumps({"c": CLUSTER}), r"^envelope: unsupported protocol version None "),
        (cbor2.dumps(envelope(x=1)),
         r"^envelope: unexpected key 'x' \(the keys are v, c, s, d, t, b\)$"),
        (cbor2.dumps({k: v for k, v in envelope().items() if k != "b"}),
         r"^envelope: missing key b \(the keys"),
        (cbor2.dumps(envelope(c="other")), r"^envelope: frame for cluster 'other', not 'test-"),
        (cbor2.dumps(envelope(c=b"test-cluster")), r"^envelope: frame for cluster b'test-"),
        (cbor2.dumps(envelope(s="")), r"^VoteRequest.src: expected a str of 1 to 128 "),
        (cbor2.dumps(envelope(d=7)), r"^VoteRequest.dst: expected a str of 1 to 128 .*got 7$"),
        (cbor2.dumps(envelope(s="x" * 129)), r"^VoteRequest.src: expected a str"),
        (cbor2.dumps(envelope(d="n1")), r"^VoteRequest.dst: sender and receiver are both 'n1'$"),
        (cbor2.dumps(envelope(t=9)), r"^envelope: unknown message type 9$"),
        (cbor2.dumps(envelope(t=8)), r"^envelope: unknown message type 8$"),
        (cbor2.dumps(envelope(t=True)), r"^envelope: unknown message type True$"),
        (cbor2.dumps(envelope(t="VoteRequest")), r"^envelope: unknown message type 'VoteReq"),
        (cbor2.dumps(envelope(b={"term": 1})), r"^VoteRequest: body must be an array, got dict$"),
        (vote_frame(5, 7, 4, False),
         r"^VoteRequest: body has 4 fields, expected 5 \(term, last_log_index, last_log_term, "
         r"pre_vote, transfer\)$"),
        (vote_frame(5, 7, 4, False, False, 0), r"^VoteRequest: body has 6 fields"),
        (vote_frame(5, 7, 4, False, 1),
         r"^VoteRequest.transfer: expected a bool, got 1$"),
        (vote_frame(5, 7, 4, True, True),
         r"^VoteRequest.transfer: a leadership transfer's vote request is never a PreVote$"),
        (cbor2.dumps(envelope(t=7, b=[0])),
         r"^TimeoutNow.term: expected an integer in \[1, 2\*\*62 \(MAX_TERM\)\], got 0$"),
        (cbor2.dumps(envelope(t=7, b=[5, 0])), r"^TimeoutNow: body has 2 fields, expected 1 "),
        (cbor2.dumps(envelope(t=7, d="n1", b=[5])), r"^TimeoutNow.dst: sender and receiver are "),
        (vote_frame(True, 7, 4, False, False),
         r"^VoteRequest.term: expected an integer in \[0, 2\*\*62 \(MAX_TERM\)\], got True$"),
        (vote_frame(2**62 + 1, 7, 4, False, False), r"^VoteRequest.term: .*, got 4611"),
        (vote_frame(2**63 - 1, 7, 4, False, False), r"^VoteRequest.term: .*, got 9223"),
        (vote_frame(5, 2**63, 4, False, False),
         r"^VoteRequest.last_log_index: expected an integer in \[0, 2\*\*63 - 1\], got 9223"),
        (cbor2.dumps(envelope(t=4, b=[5, False, 0, -1, 0, 0, 0, 0])),
         r"^AppendResponse.rejected_index: .*, got -1$"),
        (vote_frame(-1, 7, 4, False, False), r"^VoteRequest.term: .*, got -1$"),
        (vote_frame(2**63, 7, 4, False, False), r"^VoteRequest.term: .*, got 922337"),
        (vote_frame(2**64, 7, 4, False, False), r"^VoteRequest.term: .*, got 18446"),
        (vote_frame(10**400, 7, 4, False, False), r"^VoteRequest.term: .*a huge int$"),
        (vote_frame(5.0, 7, 4, False, False), r"^VoteRequest.term: .*, got 5.0$"),
        (vote_frame(5, None, 4, False, False), r"^VoteRequest.last_log_index: .*None$"),
        (vote_frame(5, 7, 4, 1, False), r"^VoteRequest.pre_vote: expected a bool, got 1$"),
        (cbor2.dumps(envelope(t=2, b=[5, "yes", False])), r"^VoteResponse.granted: expected a b"),
        (cbor2.dumps(envelope(t=6, b=[5, 0, 0, True])),
         r"^SnapshotResponse.index: expected an integer in \[1, 2\*\*63 - 1\], got 0$"),
        (cbor2.dumps(envelope(t=5, b=[5, 3, 2, 0, "data", False, PLAIN])),
         r"^SnapshotRequest.data: expected a byte string, got str$"),
        (cbor2.dumps(envelope(t=5, b=snapshot_body(snapshot_term=6))),
         r"^SnapshotRequest.snapshot_term: 6 exceeds the term 5$"),
        (cbor2.dumps(envelope(t=5, b=snapshot_body()[:-1])),
         r"^SnapshotRequest: body has 6 fields, expected 7 \(.*, done, membership\)$"),
    ],
)  # fmt: skip
def test_invalid_frames_are_rejected(data: bytes, match: str) -> None:
    rejects(data, match)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (append_body([2, 4, 0, "x"], [2, 6, 0, "y"]),
         r"^AppendRequest.entries\[1\].index: expected 5 \(contiguous after prev_index 3\), "
         r"got 6$"),
        (append_body([2, 5, 0, "x"]), r"^AppendRequest.entries\[0\].index: expected 4 "),
        (append_body([2, 0, 0, "x"]),
         r"^AppendRequest.entries\[0\].index: .*\[1, 2\*\*63 - 1\], got 0$"),
        (append_body([0, 4, 0, "x"]),
         r"^AppendRequest.entries\[0\].term: .*\[1, 2\*\*62 .*, got 0$"),
        (append_body([2**62 + 1, 4, 0, "x"], term=2**62 + 1),
         r"^AppendRequest.entries\[0\].term: .*got 4611"),
        (append_body(term=2**63 - 1),
         r"^AppendRequest.term: .*\(MAX_TERM\)\], got 9223372036854775807$"),
        (append_body([3, 4, 0, "x"], [2, 5, 0, "y"]),
         r"^AppendRequest.entries\[1\].term: 2 is outside \[3, 5\] \(log terms never decrease"),
        (append_body([6, 4, 0, "x"]), r"^AppendRequest.entries\[0\].term: 6 is outside \[2, 5\]"),
        (append_body([1, 4, 0, "x"]), r"^AppendRequest.entries\[0\].term: 1 is outside \[2, 5\]"),
        (append_body(prev_term=6), r"^AppendRequest.prev_term: 6 exceeds the term 5$"),
        (append_body([2, 4, 0]), r"^AppendRequest.entries\[0\]: expected an array \[term, "),
        (append_body({"term": 2}), r"^AppendRequest.entries\[0\]: expected an array"),  # type: ignore[arg-type]
        (append_body([2, 4, 7, "x"]), r"^AppendRequest.entries\[0\].kind: unknown entry kind 7$"),
        (append_body([2, 4, False, "x"]), r"^AppendRequest.entries\[0\].kind: unknown entry kin"),
        (append_body([2, 4, 1, "x"]),
         r"^AppendRequest.entries\[0\].command: a no-op entry carries no command$"),
        (append_body([2, 4, 0, 2**64]),
         r"^AppendRequest.entries\[0\].command: integer out of range \[-2\*\*64, 2\*\*64 - 1\]$"),
        (append_body([2, 4, 0, cbor2.CBORTag(1000, 1)]),
         r"^AppendRequest.entries\[0\].command: CBORTag is not allowed in a command"),
        (append_body([2, 4, 0, [datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)]]),
         r"^AppendRequest.entries\[0\].command\[0\]: datetime is not allowed"),
        (append_body([2, 4, 0, cbor2.CBORSimpleValue(99)]), r"CBORSimpleValue is not allowed"),
        (append_body([2, 4, 0, cbor2.undefined]), r"UndefinedType is not allowed"),
        (append_body([2, 4, 0, nested(33)]),
         r"^AppendRequest.entries\[0\].command(\[0\]){32}: nested deeper than 32 levels$"),
        (append_body([2, 4, 0, nested(35)]), r"^not well-formed CBOR: .*depth \(38\) exceeded"),
        ([5, 3, 2, 0, 0, "entries"], r"^AppendRequest.entries: expected an array, got str$"),
    ],
)  # fmt: skip
def test_invalid_append_requests_are_rejected(body: Any, match: str) -> None:
    rejects(cbor2.dumps(envelope(t=3, b=body)), match)


def test_commands_may_nest_32_deep() -> None:
    frame = cbor2.dumps(envelope(t=3, b=append_body([2, 4, 0, nested(32)])))
    message = decode(frame, cluster_id=CLUSTER, max_bytes=MAX)
    assert isinstance(message, AppendRequest)
    assert message.entries[0].command == nested(32)


def test_a_shared_reference_cycle_is_rejected() -> None:
    # tag 28 marks a shareable list whose only element (tag 29, reference 0) is itself
    cyclic = b"\xd8\x1c\x81\xd8\x1d\x00"
    prefix = cbor2.dumps(envelope(t=3, b=append_body([2, 4, 0, "PLACEHOLDER"])))
    placeholder = cbor2.dumps("PLACEHOLDER")
    data = prefix.replace(placeholder, cyclic)
    error = rejects(data, r"^AppendRequest.entries\[0\].command(\[0\])*: ")
    assert "deeper" in str(error) or "more values than the frame has bytes" in str(error)


def test_a_shared_reference_explosion_is_rejected() -> None:
    """A DAG of shared references (each level holds the previous one twice) has 2**25 leaves:
    a naive walk would never finish."""
    levels = 25
    cbor = b"\xd8\x1c\x82\x01\x02"  # level 0: shareable [1, 2]; shared indexes count outside-in
    for k in range(1, levels + 1):
        reference = b"\xd8\x1d" + cbor2.dumps(levels - (k - 1))  # the index of level k - 1
        cbor = b"\xd8\x1c\x82" + cbor + reference
    data = cbor2.dumps(envelope(t=3, b=append_body([2, 4, 0, "PLACEHOLDER"])))
    data = data.replace(cbor2.dumps("PLACEHOLDER"), cbor)
    rejects(data, r"^AppendRequest.entries\[0\].command.*: command has more values than the frame")


def test_text_frames_are_rejected() -> None:
    with pytest.raises(FrameError, match=r"^expected a binary frame, got str$"):
        decode("hello", cluster_id=CLUSTER, max_bytes=MAX)  # type: ignore[arg-type]


@given(st.binary(max_size=200))
@example(b"\xd8\x1c\x81\xd8\x1d\x00")
def test_random_bytes_raise_only_frame_error(data: bytes) -> None:
    with contextlib.suppress(FrameError):
        decode(data, cluster_id=CLUSTER, max_bytes=MAX)


@given(messages, st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_mutated_frames_raise_only_frame_error(message: Message, data: st.DataObject) -> None:
    frame = bytearray(encode(message, cluster_id=CLUSTER))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(frame) - 1))
        action = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if action == "flip":
            frame[position] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "delete":
            del frame[position]
        elif action == "insert":
            frame.insert(position, data.draw(st.integers(0, 255)))
        else:
            del frame[position:]
        if not frame:
            break
    try:
        decoded = decode(bytes(frame), cluster_id=CLUSTER, max_bytes=MAX)
    except FrameError:
        return
    assert type(decoded) in codec.TYPE_CODES  # still a whole, valid message


# -- encoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "match"),
    [
        ({1, 2}, r"^command: set is not allowed in a command \(allowed: None, bool, int"),
        ({"k": datetime.date(2020, 1, 1)}, r"^command\['k'\]: date is not allowed"),
        ({1: "x"}, r"^command: map key of type int \(only str or bytes keys\)$"),
        ({("a",): "x"}, r"^command: map key of type tuple"),
        ([2**64], r"^command\[0\]: integer out of range"),
        ([-(2**64) - 1], r"^command\[0\]: integer out of range"),
        (nested(33), r"^command(\[0\]){32}: nested deeper than 32 levels$"),
        (object(), r"^command: object is not allowed"),
    ],
)
def test_check_command_refuses_values_outside_the_model(command: object, match: str) -> None:
    with pytest.raises(FrameError, match=match):
        check_command(command)


def test_check_command_refuses_cycles() -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(FrameError, match=r"nested deeper than 32 levels"):
        check_command(cycle)


def test_encode_refuses_an_unencodable_command() -> None:
    message = AppendRequest("a", "b", 1, 0, 0, (Entry(1, 1, {"when": datetime.date.today()}),), 0)
    with pytest.raises(FrameError, match=r"^AppendRequest.entries\[0\].command\['when'\]: date"):
        encode(message, cluster_id=CLUSTER)
    message = AppendRequest("a", "b", 1, 0, 0, (Entry(1, 1, "\ud800"),), 0)
    with pytest.raises(
        FrameError, match=r"^AppendRequest.entries\[0\].command: cannot be encoded: "
    ):
        encode(message, cluster_id=CLUSTER)


def test_encode_refuses_a_message_type_without_a_code() -> None:
    @attrs.frozen
    class TimeoutNow:
        src: str
        dst: str
        term: int

    with pytest.raises(FrameError, match=r"^TimeoutNow has no wire encoding"):
        encode(TimeoutNow("a", "b", 1), cluster_id=CLUSTER)  # type: ignore[arg-type]


def test_encoded_kv_commands_are_applied_the_same() -> None:
    """The KV state machine accepts its commands in canonical (list) form."""
    sm = KVStateMachine()
    message = AppendRequest("a", "b", 1, 0, 0, (Entry(1, 1, ("put", "k", "v")),), 0)
    decoded = round_trip(message)
    assert isinstance(decoded, AppendRequest)
    sm.apply(decoded.entries[0].command)
    assert sm.as_dict() == {"k": "v"}


# -- one schema: construction, decode and encode agree ----------------------------------------

wild_values = st.one_of(
    st.integers(-2, 3),
    st.sampled_from([MAX_TERM, MAX_TERM + 1, MAX_INDEX, MAX_INDEX + 1, 2**64, -(2**63)]),
    st.booleans(),
    st.none(),
    st.sampled_from(["", "n1", "n2", "x" * 129]),
    st.binary(max_size=2),
)
wild_plains = memberships().map(Membership.to_plain) | broken_plains()
"""Membership plain forms, valid or not."""
raw_entries = st.lists(
    st.tuples(
        wild_values, wild_values, st.sampled_from([0, 1, 2]), st.none() | st.just("c") | wild_plains
    ).map(list),
    max_size=3,
)


_FLAGS = {"pre_vote", "transfer", "granted", "success", "done"}


def _plausible(name: str) -> st.SearchStrategy[object]:
    """Values of the right type, small enough to form valid messages often."""
    if name in _FLAGS:
        return st.booleans()
    if name == "data":
        return st.binary(max_size=3)
    if name == "membership":
        return memberships().map(Membership.to_plain)
    return st.integers(1, 4) if "term" in name else st.integers(0, 4)


def _plausible_entries(data: st.DataObject, body: dict[str, Any]) -> list[list[object]]:
    """Entries that follow prev_index and prev_term, of every kind (a CONFIG entry carries a
    plain form, valid or not), with an occasional wild value."""
    draw = data.draw
    entries: list[list[object]] = []
    term = max(body["prev_term"], 1) if type(body["prev_term"]) is int else 1
    top = body["term"] if type(body["term"]) is int and body["term"] >= term else term
    index = body["prev_index"] if type(body["prev_index"]) is int else 0
    for _ in range(draw(st.integers(0, 3))):
        term, index = draw(st.integers(term, top)), index + 1
        kind = draw(st.sampled_from([0, 1, 2]))
        command = {0: st.just("c"), 1: st.none(), 2: wild_plains}[kind]
        entry: list[object] = [term, index, kind, draw(command)]
        if draw(st.integers(0, 9)) == 0:  # a wild term or index (the kinds and commands
            entry[draw(st.integers(0, 1))] = draw(wild_values)  # are those of raw_entries)
        entries.append(entry)
    return entries


def _raw_body(data: st.DataObject, cls: type[Message]) -> dict[str, object]:
    """A body, each field wild or (mostly) plausible, so that both outcomes are common."""
    draw = data.draw
    body: dict[str, Any] = {}
    for name in codec.BODY_FIELDS[cls]:
        plausible = draw(st.integers(0, 5)) > 0
        if name == "entries":
            body[name] = _plausible_entries(data, body) if plausible else draw(raw_entries)
        elif name == "membership":
            body[name] = draw(_plausible(name) if plausible else wild_plains | wild_values)
        else:
            body[name] = draw(_plausible(name) if plausible else wild_values)
    return body


def _from_plain(command: object, kind: int) -> object:
    """What the constructor is given for a decoded command: a membership for a CONFIG entry
    (raises FieldError if the plain form is wrong), the value itself otherwise."""
    return Membership.from_plain(command) if kind == 2 else command


def _bypassed(cls: type[Any], **values: object) -> Any:
    """An instance built without running its validators (as object.__setattr__ allows)."""
    instance = object.__new__(cls)
    for name, value in values.items():
        object.__setattr__(instance, name, value)
    return instance


@given(st.sampled_from(list(codec.TYPE_CODES)), st.data())
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_construction_decode_and_encode_check_the_same_rules(
    cls: type[Message], data: st.DataObject
) -> None:
    """For arbitrary field values: the constructor accepts them iff a frame carrying them
    decodes, iff a message holding them (validators bypassed) encodes; and the errors name the
    same rule. This is what keeps the core from emitting anything the wire refuses."""
    src, dst = (n if data.draw(st.integers(0, 5)) else data.draw(wild_values) for n in ("n1", "n2"))
    body = _raw_body(data, cls)
    frame = cbor2.dumps(envelope(s=src, d=dst, t=codec.TYPE_CODES[cls], b=list(body.values())))
    decoded: Message | None
    try:
        decoded = decode(frame, cluster_id=CLUSTER, max_bytes=MAX)
        decode_error = None
    except FrameError as exc:
        decoded, decode_error = None, str(exc)

    values = dict(body)
    plain_error = None  # why a SnapshotRequest's membership is not a plain form
    if cls is AppendRequest:
        raw = values["entries"]
        assert isinstance(raw, list)
        try:
            values["entries"] = tuple(
                Entry(t, i, _from_plain(c, k), EntryKind(k)) for t, i, k, c in raw
            )
        except FieldError:
            assert decode_error is not None and ".entries[" in decode_error
            return
    elif cls is SnapshotRequest:
        try:
            values["membership"] = Membership.from_plain(values["membership"])
        except FieldError as exc:
            plain_error = f"SnapshotRequest.membership: {exc}"  # the decoder's precise reason
    failed_field = None
    try:
        built = cls(src=src, dst=dst, **values)  # type: ignore[arg-type]
        build_error = None
    except FieldError as exc:
        built, build_error, failed_field = None, str(exc), exc.path
    if plain_error is not None and failed_field == "membership":
        assert decode_error == plain_error
    else:
        assert build_error == decode_error
    assert built == decoded

    bypassed_entries = values.get("entries", ())
    if cls is AppendRequest:
        assert isinstance(raw, list)
        bypassed_entries = tuple(
            _bypassed(Entry, term=t, index=i, command=_from_plain(c, k), kind=EntryKind(k))
            for t, i, k, c in raw
        )
        values["entries"] = bypassed_entries
    forged = _bypassed(cls, src=src, dst=dst, **values)
    try:
        frame = encode(forged, cluster_id=CLUSTER)
    except FrameError as exc:
        assert decode_error is not None, f"encode refused a valid message: {exc}"
        assert str(exc) == build_error
        return
    assert decode_error is None, f"encode accepted what decode refuses: {decode_error}"
    assert decode(frame, cluster_id=CLUSTER, max_bytes=MAX) == decoded


@pytest.mark.parametrize("term", [MAX_TERM + 1, 2**63 - 1])
def test_terms_above_max_term_cannot_be_built_nor_decoded(term: int) -> None:
    """An insider's AppendEntries with term 2**63 - 1 once pinned the cluster at a term with no
    room for another election. Such a term is now refused everywhere."""
    with pytest.raises(ValueError, match=r"^AppendRequest.term: .*\(MAX_TERM\)\]"):
        AppendRequest("n1", "n2", term, 0, 0, (), 0)
    with pytest.raises(ValueError, match=r"^Entry.term: "):
        Entry(term, 1)
    frame = cbor2.dumps(envelope(t=3, b=append_body(term=term)))
    rejects(frame, r"^AppendRequest.term: expected an integer in \[0, 2\*\*62 \(MAX_TERM\)\]")


def test_max_term_itself_round_trips() -> None:
    message = AppendRequest("n1", "n2", MAX_TERM, 4, MAX_TERM, (Entry(MAX_TERM, 5, "x"),), 4)
    assert round_trip(message) == message


def test_stale_term_rejection_is_a_valid_message() -> None:
    """The regression: the answer to a stale-term AppendEntries used rejected_index=-1."""
    with pytest.raises(ValueError, match=r"rejected_index: .*got -1"):
        AppendResponse("n2", "n1", 7, False, rejected_index=-1)
    reply = AppendResponse("n2", "n1", 7, False, rejected_index=0)
    assert round_trip(reply) == reply


# -- protocol version 2: memberships, transfers -----------------------------------------------


def config_body(command: object, *, term: int = 2, index: int = 4) -> Any:
    return append_body([term, index, 2, command])


def deep_address(depth: int) -> dict[str, Any]:
    return plain(addresses={"n1": nested(depth), "n2": None})


@pytest.mark.parametrize(
    ("command", "match"),
    [
        (None, r"^Membership.plain: expected a map, got None$"),
        (["n1"], r"^Membership.plain: expected a map, got a list$"),
        ({k: v for k, v in PLAIN.items() if k != "outgoing"},
         r"^Membership.plain: expected the keys \['voters', 'learners', 'outgoing', 'addresses'\]"),
        (plain(extra=1), r"^Membership.plain: expected the keys "),
        (plain(voters=[]), r"^Membership.voters: a configuration needs at least one voter$"),
        (plain(voters=["n2", "n1"]), r"^Membership.voters: ids must be sorted and unique$"),
        (plain(voters=["n1", "n1"]), r"^Membership.voters: ids must be sorted and unique$"),
        (plain(voters=["n1", 2]), r"^Membership.voters: expected ids, got 2$"),
        (plain(voters="n1"), r"^Membership.voters: expected an array of at most 64 ids"),
        (plain(learners=["n1"], addresses={"n1": 1, "n2": 2}),
         r"^Membership.learners: n1 cannot be voter and learner$"),
        (plain(outgoing=["n1", "n2"]),
         r"^Membership.outgoing: a joint configuration must change the voters$"),
        (plain(voters=[f"n{i:03}" for i in range(65)]),
         r"^Membership.voters: expected an array of at most 64 ids"),
        (plain(addresses={"n1": 1}), r"^Membership.addresses: expected one per member; missing"),
        (plain(addresses={}), r"^Membership.addresses: expected a map with one address per memb"),
        (plain(addresses={"n1": b"x" * 1100, "n2": None}),
         r"^Membership.addresses\['n1'\]: 1103 bytes encoded \(at most 1024\)$"),
    ],
)  # fmt: skip
def test_malformed_memberships_in_frames_are_frame_errors(command: object, match: str) -> None:
    """The same plain forms are refused as a CONFIG entry's command and as a snapshot's
    membership, with Membership.from_plain's reason after the place they sat."""
    reason = match.removeprefix("^")
    rejects(cbor2.dumps(envelope(t=3, b=config_body(command))),
            rf"^AppendRequest.entries\[0\].command: {reason}")  # fmt: skip
    rejects(cbor2.dumps(envelope(t=5, b=snapshot_body(command))),
            rf"^SnapshotRequest.membership: {reason}")  # fmt: skip


@pytest.mark.parametrize(
    ("command", "match"),
    [
        (plain(addresses={"n1": cbor2.CBORTag(1000, 1), "n2": None}),
         r"\['addresses'\]\['n1'\]: CBORTag is not allowed in a command"),
        (plain(addresses={"n1": 2**64, "n2": None}),
         r"\['addresses'\]\['n1'\]: integer out of range"),
        (deep_address(33), r"\['addresses'\]\['n1'\](\[0\]){32}: nested deeper than 32 levels$"),
    ],
)  # fmt: skip
def test_memberships_in_frames_follow_the_command_model(command: object, match: str) -> None:
    # Too deep an address may instead exceed the decoder's container limit (as a too deep
    # command does), which is checked first: a FrameError all the same.
    too_deep = r"not well-formed CBOR: maximum container nesting depth \(38\) exceeded$"
    rejects(cbor2.dumps(envelope(t=3, b=config_body(command))),
            rf"^(AppendRequest.entries\[0\].command{match}|{too_deep})")  # fmt: skip
    rejects(cbor2.dumps(envelope(t=5, b=snapshot_body(command))),
            rf"^(SnapshotRequest.membership{match}|{too_deep})")  # fmt: skip


def test_addresses_may_nest_as_deep_as_commands() -> None:
    membership = Membership.from_plain(deep_address(32))
    for message in (
        AppendRequest("n1", "n2", 5, 3, 2, (Entry(2, 4, membership, EntryKind.CONFIG),), 0),
        SnapshotRequest("n1", "n2", 5, 3, 2, 0, b"", False, membership),
    ):
        assert round_trip(message) == message


def test_a_shared_reference_explosion_in_a_membership_is_rejected() -> None:
    levels = 25
    cbor = b"\xd8\x1c\x82\x01\x02"
    for k in range(1, levels + 1):
        cbor = b"\xd8\x1c\x82" + cbor + b"\xd8\x1d" + cbor2.dumps(levels - (k - 1))
    placeholder = cbor2.dumps("PLACEHOLDER")
    command = plain(addresses={"n1": "PLACEHOLDER", "n2": None})
    for t, body, where in (
        (3, config_body(command), r"AppendRequest.entries\[0\].command"),
        (5, snapshot_body(command), "SnapshotRequest.membership"),
    ):
        data = cbor2.dumps(envelope(t=t, b=body)).replace(placeholder, cbor)
        rejects(data, rf"^{where}\['addresses'\]\['n1'\].*: command has more values than the fr")


def test_a_bad_membership_is_reported_after_the_fields_before_it() -> None:
    """As the constructors check them: an entry's term and index first, a snapshot's other
    field checks first (so construction and decoding name the same rule)."""
    rejects(cbor2.dumps(envelope(t=3, b=config_body(None, term=0))),
            r"^AppendRequest.entries\[0\].term: ")  # fmt: skip
    rejects(cbor2.dumps(envelope(t=5, b=snapshot_body(None, term=-1))),
            r"^SnapshotRequest.term: .*, got -1$")  # fmt: skip


def test_construction_refuses_what_the_wire_refuses() -> None:
    with pytest.raises(ValueError, match=r"^VoteRequest.transfer: .* never a PreVote$"):
        VoteRequest("n1", "n2", 3, 0, 0, pre_vote=True, transfer=True)
    with pytest.raises(ValueError, match=r"^TimeoutNow.term: expected an integer in \[1, "):
        TimeoutNow("n1", "n2", 0)
    with pytest.raises(ValueError, match=r"^TimeoutNow.dst: sender and receiver are both"):
        TimeoutNow("n1", "n1", 1)
    with pytest.raises(ValueError, match=r"^SnapshotRequest.membership: expected a Membership, "):
        SnapshotRequest("n1", "n2", 5, 3, 2, 0, b"", False, PLAIN)  # type: ignore[arg-type]


def test_encode_refuses_a_membership_whose_checks_were_bypassed() -> None:
    membership = Membership({"n1"})
    object.__setattr__(membership, "voters", frozenset())
    with pytest.raises(FrameError, match=r"^SnapshotRequest.membership: Membership.voters: a c"):
        encode(SnapshotRequest("n1", "n2", 5, 3, 2, 0, b"", False, membership), cluster_id=CLUSTER)
    entry = Entry(2, 4, membership, EntryKind.CONFIG)
    with pytest.raises(FrameError, match=r"^AppendRequest.entries\[0\].command: Membership.vot"):
        encode(AppendRequest("n1", "n2", 5, 3, 2, (entry,), 0), cluster_id=CLUSTER)


def test_encode_refuses_a_command_entry_holding_a_membership() -> None:
    """validate()'s fast path for entries still sees a Membership in a COMMAND entry."""
    entry = Entry(2, 4, "x")
    object.__setattr__(entry, "command", Membership({"n1"}))
    message = AppendRequest("n1", "n2", 5, 3, 2, (entry,), 0)
    with pytest.raises(FrameError, match=r"only a configuration entry carries a Membership"):
        encode(message, cluster_id=CLUSTER)
    config = Entry(2, 4, Membership({"n1"}), EntryKind.CONFIG)
    object.__setattr__(config, "command", "x")
    message = AppendRequest("n1", "n2", 5, 3, 2, (config,), 0)
    with pytest.raises(FrameError, match=r"a configuration entry carries a Membership, got 'x'"):
        encode(message, cluster_id=CLUSTER)


def test_a_version_1_frame_names_both_versions() -> None:
    """What a node of the previous release would send (the handshake refuses such a peer
    first; this is the codec's own guard)."""
    old = {"v": 1, "c": CLUSTER, "s": "n1", "d": "n2", "t": 1, "b": [5, 7, 4, False]}
    error = rejects(cbor2.dumps(old), r"^envelope: unsupported protocol version 1 ")
    assert "this node speaks 2" in str(error)


# -- encoding each command once -----------------------------------------------------------------


def reference_frame(message: Message) -> bytes:
    """The frame as ``cbor2.dumps`` makes it of the whole envelope (how frames were built
    before commands were encoded once): the hand-built frames must be these bytes exactly."""
    cls = type(message)
    body: list[object] = [getattr(message, name) for name in codec.BODY_FIELDS[cls]]
    if isinstance(message, AppendRequest):
        body[-1] = [
            [
                e.term,
                e.index,
                int(e.kind),
                cast(Membership, e.command).to_plain() if e.kind is EntryKind.CONFIG else e.command,
            ]
            for e in message.entries
        ]
    elif isinstance(message, SnapshotRequest):
        body[-1] = message.membership.to_plain()
    envelope = {"v": 2, "c": CLUSTER, "s": message.src, "d": message.dst,
                "t": codec.TYPE_CODES[cls], "b": body}  # fmt: skip
    return cbor2.dumps(envelope)


def pre_encoded(message: Message) -> Message:
    """``message`` with every command encoded once up front, as a proposal's is."""
    if not isinstance(message, AppendRequest):
        return message
    entries = tuple(
        Entry(e.term, e.index, codec.encode_command(e.command), e.kind)
        if e.kind is EntryKind.COMMAND
        else e
        for e in message.entries
    )
    return attrs.evolve(message, entries=entries)


@given(messages)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_frames_are_byte_for_byte_those_of_the_whole_envelope(message: Message) -> None:
    expected = reference_frame(message)
    assert encode(message, cluster_id=CLUSTER) == expected  # fresh: encodes and caches
    assert encode(message, cluster_id=CLUSTER) == expected  # from the entries' caches
    assert encode(pre_encoded(message), cluster_id=CLUSTER) == expected  # proposed
    decoded = decode(expected, cluster_id=CLUSTER, max_bytes=MAX)
    assert encode(decoded, cluster_id=CLUSTER) == expected  # relayed after a decode


@pytest.mark.parametrize("n", [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
def test_cbor_heads_are_the_shortest_form(n: int) -> None:
    assert codec.cbor_uint(n) == cbor2.dumps(n)
    items = [None] * n if n < 70000 else None
    if items is not None:
        assert codec._head(4, n) + b"\xf6" * n == cbor2.dumps(items)


@given(commands)
def test_a_command_is_encoded_once_and_its_entry_keeps_the_bytes(command: object) -> None:
    encoded = codec.encode_command(command)
    assert encoded.data == cbor2.dumps(command)
    entry = Entry(1, 1, encoded)
    assert entry.command is command  # the entry holds the command, not the wrapper
    assert entry == Entry(1, 1, command)
    assert repr(entry) == repr(Entry(1, 1, command))
    assert codec.command_bytes(entry) is encoded.data


def test_the_cached_encoding_cannot_be_given_from_outside() -> None:
    with pytest.raises(TypeError):
        Entry(1, 1, "x", EntryKind.COMMAND, b"\xf6")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Entry(1, 1, "x", encoded=b"\xf6")  # type: ignore[call-arg]
    assert hash(Entry(1, 1, codec.encode_command("x"))) == hash(Entry(1, 1, "x"))
    shared = cbor2.dumps(["x", "x"], value_sharing=True)  # a shared reference, CBOR tag 28/29
    assert shared != cbor2.dumps(["x", "x"])
    frame = reference_frame(AppendRequest("a", "b", 1, 0, 0, (Entry(1, 1, "@"),), 0))
    frame = frame.replace(cbor2.dumps("@"), shared)
    decoded = decode(frame, cluster_id=CLUSTER, max_bytes=MAX)
    assert isinstance(decoded, AppendRequest)
    # The cache holds the decoded value's own encoding, never the received bytes.
    assert decoded.entries[0]._encoded == cbor2.dumps(["x", "x"])


def test_a_command_that_fails_its_check_caches_nothing() -> None:
    entry = Entry(1, 1, {"when": datetime.date.today()})
    for _ in range(2):
        with pytest.raises(FrameError, match=r"^entry.command\['when'\]: date"):
            codec.command_bytes(entry)
    assert entry._encoded is None


def test_a_bytes_subclass_is_framed_as_bytes() -> None:
    class Chunk(bytes):
        pass

    message = SnapshotRequest("a", "b", 2, 1, 1, 0, Chunk(b"abc"), True, Membership({"a"}))
    assert encode(message, cluster_id=CLUSTER) == reference_frame(message)
