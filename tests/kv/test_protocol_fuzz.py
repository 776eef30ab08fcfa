"""Whatever a stranger sends, ``decode_request`` raises only the protocol's typed errors.

This is the class of test that would have caught the bignum bug (a ``repr()`` of an int over
4,300 digits raised ``ValueError`` on the error path, uncaught up to the server, and one frame
ended the node): Hypothesis throws arbitrary bytes, arbitrary CBOR (tags, bignums, shared
references, deep nesting), request-shaped maps with hostile fields, and mutations of valid
requests at the decoder. The only outcomes allowed are a valid request, :class:`FrameError`
(close the connection) or :class:`BadRequest` (answer it), each with a short message.
"""

from __future__ import annotations

import cbor2
import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from trio_raft.kv._protocol import (
    MAX_REQUEST_BYTES,
    AddLearner,
    BadRequest,
    FrameError,
    Get,
    Hello,
    Promote,
    Put,
    TransferLeader,
    decode_request,
    decode_response,
    encode_request,
)
from trio_raft.kv._strict import StructureError, check_structure, describe

MAX_MESSAGE_CHARS = 1000
"""Error messages are bounded: they go into close reasons, answers and logs."""

HUGE = 10**5000  # over the 4,300 digits int -> str conversions allow
OPS = ["hello", "open_session", "get", "list", "put", "delete", "cas", "status"]
OPS += ["members", "add_learner", "promote", "demote", "remove", "transfer_leader"]
FIELDS = ["id", "op", "key", "value", "session", "seq", "token", "v", "prefix", "limit"]
FIELDS += ["start_after", "consistency", "expected", "new"]
FIELDS += ["node", "peer", "client", "catch_up_timeout_s", "to"]


def power_of_ten(digits: int) -> int:
    power: int = 10**digits  # int ** int is typed Any (a negative exponent makes a float)
    return power


# Drawn, not st.just(HUGE): Hypothesis itself would repr() the constant.
bignums = st.integers(min_value=4301, max_value=6000).map(power_of_ten)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    bignums,
    bignums.map(lambda n: -n),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.sampled_from(OPS + FIELDS),
)


def tagged(children: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    tags = st.one_of(st.integers(min_value=0, max_value=2**64 - 1), st.sampled_from(range(40)))
    return st.builds(cbor2.CBORTag, tags, children)


keys = st.one_of(st.text(max_size=8), st.integers(), bignums)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(keys, children, max_size=5),
        tagged(children),
        st.frozensets(st.integers(), max_size=5),
    ),
    max_leaves=20,
)

requests = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(min_value=0, max_value=2**63 - 1), values)},
    optional={
        "op": st.one_of(st.sampled_from(OPS), values),
        **{name: st.one_of(scalars, values) for name in FIELDS[2:]},
        "extra": values,
    },
)


def encode_any(value: object, sharing: bool) -> bytes:
    try:
        return cbor2.dumps(value, value_sharing=sharing)
    except (cbor2.CBOREncodeError, ValueError, TypeError, OverflowError):
        return b"\xa0"  # not encodable (e.g. a tag number cbor2 refuses): any valid map


def check_outcome(data: bytes | str) -> None:
    try:
        decode_request(data)
    except (FrameError, BadRequest) as exc:
        assert len(str(exc)) < MAX_MESSAGE_CHARS


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes(data: bytes) -> None:
    check_outcome(data)


@settings(max_examples=400, deadline=None)
@given(values, st.booleans())
def test_arbitrary_cbor(value: object, sharing: bool) -> None:
    check_outcome(encode_any(value, sharing))


@settings(max_examples=300, deadline=None)
@given(requests, st.booleans())
def test_request_shaped_maps(message: dict[str, object], sharing: bool) -> None:
    check_outcome(encode_any(message, sharing))


VALID = [
    encode_request(7, Get(key="k")),
    encode_request(8, Put(session=b"s" * 16, seq=3, key="key", value=b"v" * 30)),
    encode_request(9, Hello(token="t")),
    encode_request(10, AddLearner(node="n4", peer="ws://10.0.0.4:7100/raft", client="ws://h/kv")),
    encode_request(11, Promote(node="n4", catch_up_timeout_s=12.5)),
    encode_request(12, TransferLeader(to="n2")),
]


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(VALID), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255))))
def test_mutated_valid_requests(frame: bytes, flips: list[tuple[int, int]]) -> None:
    data = bytearray(frame)
    for position, byte in flips:
        if data:
            data[position % len(data)] = byte
    check_outcome(bytes(data))


@settings(max_examples=300, deadline=None)
@given(values, st.booleans())
def test_arbitrary_responses(value: object, sharing: bool) -> None:
    """The client decodes what a server (or anyone on the path) sends just as strictly."""
    for message in (value, {"id": 1, "ok": value}, {"id": 1, "error": value}):
        try:
            decode_response(encode_any(message, sharing))
        except FrameError as exc:
            assert len(str(exc)) < MAX_MESSAGE_CHARS


# -- the worst frames, by name -----------------------------------------------------------------


def shared_reference_bomb(levels: int) -> bytes:
    """Each level is a list holding the previous level twice (tag 28 marks, tag 29 refers):
    a few bytes per level, 2**levels leaves once expanded."""
    data = b"\xd8\x1c\x82\x00\x00"  # 28([0, 0]), shared as index 0
    for i in range(1, levels):
        data = b"\xd8\x1c\x82" + data + b"\xd8\x1d" + bytes([i - 1 if i - 1 < 24 else 0])
    return data


COLLIDING_INT_KEYS: dict[object, object] = {
    "id": 1,
    "op": "get",
    **{(2**61 - 1) * i: 0 for i in range(1, 2000)},
}

WORST: dict[str, bytes] = {
    "bignum op": cbor2.dumps({"id": 1, "op": HUGE}),
    "bignum map key": cbor2.dumps({"id": 1, "op": "get", HUGE: 1}),
    "bignum field": cbor2.dumps({"id": 1, "op": "get", "key": HUGE}),
    "bignum id": cbor2.dumps({"id": HUGE, "op": "get"}),
    "colliding int keys": cbor2.dumps(COLLIDING_INT_KEYS),
    "set of colliding ints": cbor2.dumps(
        {"id": 1, "op": "get", "key": frozenset((2**61 - 1) * i for i in range(1, 2000))}
    ),
    "shared references": b"\xa3\x62id\x01\x62op\x63get\x63key" + shared_reference_bomb(20),
    "deep nesting": b"\xa3\x62id\x01\x62op\x63get\x63key" + b"\x81" * 10_000 + b"\x00",
    "date tag": cbor2.dumps({"id": 1, "op": "get", "key": cbor2.CBORTag(1, 10**30)}),
    "indefinite map": b"\xbf\x62id\x01\xff",
    "many items": cbor2.dumps({"id": 1, "op": "get", "key": [0] * 100_000}),
    "huge declared length": b"\xa3\x62id\x01\x62op\x63get\x63key\x9b" + b"\xff" * 8,
    "oversize": b"\x00" * (MAX_REQUEST_BYTES + 1),
}


@pytest.mark.parametrize("name", sorted(WORST))
def test_worst_frames_are_refused_as_unanswerable(name: str) -> None:
    with pytest.raises(FrameError) as info:
        decode_request(WORST[name])
    assert len(str(info.value)) < MAX_MESSAGE_CHARS, name


def test_a_nested_value_is_still_answered() -> None:
    with pytest.raises(BadRequest, match="key must be a str, got list"):
        decode_request(cbor2.dumps({"id": 5, "op": "get", "key": [1]}))
    with pytest.raises(BadRequest, match="unknown fields") as info:
        decode_request(cbor2.dumps({"id": 5, "op": "get", "key": "k", "x" * 10_000: 1}))
    assert len(str(info.value)) < 200


def test_describe_is_bounded_and_never_raises() -> None:
    cyclic: list[object] = []
    cyclic.append(cyclic)
    for value in (HUGE, -HUGE, "x" * 10**6, b"y" * 10**6, cyclic, {1: cyclic}, object(), 5):
        assert len(describe(value)) < 80
    assert describe(HUGE) == f"an int of {HUGE.bit_length()} bits"
    assert describe(12) == "12"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xa1\x61a\xc2\x41\x01", "tag 2"),
        (b"\x82\x01", "truncated"),
        (b"\x01\x02", "trailing"),
        (b"\x9f\xff", "indefinite"),
        (b"\xf7", "simple value 23"),
        (b"\x1c", "reserved"),
        (b"\x81\x81\x81\x00", "deeper than 2"),
        (b"\x85\x00\x00\x00\x00\x00", "more than 4"),
    ],
)
def test_check_structure_refusals(data: bytes, message: str) -> None:
    with pytest.raises(StructureError, match=message):
        check_structure(data, max_items=4, max_depth=2)


def test_check_structure_accepts_plain_items() -> None:
    check_structure(cbor2.dumps({"a": [1, -2, 1.5, None, True, b"x"]}), max_items=9, max_depth=2)
