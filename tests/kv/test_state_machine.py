"""KVStateMachine on its own: every command, sessions, determinism, snapshots, refusals."""

from __future__ import annotations

import contextlib
import random

import pytest

from trio_raft.kv import (
    MAX_KEY_BYTES,
    MAX_LIST_LIMIT,
    MAX_VALUE_BYTES,
    KVStateMachine,
    SessionExpiredError,
    StaleSequenceError,
)

S1 = b"session-1"
S2 = b"session-2"


def opened(*sessions: bytes, max_sessions: int = 100) -> KVStateMachine:
    sm = KVStateMachine(max_sessions=max_sessions)
    for session in sessions:
        assert sm.apply(("open", session)) is None
    return sm


def state(sm: KVStateMachine) -> bytes:
    return b"".join(sm.snapshot())


def test_put_get_delete() -> None:
    sm = opened(S1)
    assert sm.apply(("get", "a")) is None
    assert sm.apply(("put", S1, 1, "a", b"1")) is None
    assert sm.apply(("get", "a")) == b"1"
    assert sm.query(("get", "a")) == b"1"
    assert sm.apply(("put", S1, 2, "a", b"2")) is None
    assert sm.query(("get", "a")) == b"2"
    assert sm.apply(("delete", S1, 3, "a")) is True
    assert sm.apply(("delete", S1, 4, "a")) is False
    assert sm.query(("get", "a")) is None
    assert sm.revision == 4
    assert sm.as_dict() == {}


def test_cas() -> None:
    sm = opened(S1)
    assert sm.apply(("cas", S1, 1, "k", b"x", b"1")) is False  # absent is not b"x"
    assert sm.apply(("cas", S1, 2, "k", None, b"1")) is True  # create if absent
    assert sm.apply(("cas", S1, 3, "k", None, b"2")) is False
    assert sm.apply(("cas", S1, 4, "k", b"1", b"2")) is True
    assert sm.apply(("cas", S1, 5, "k", b"1", b"3")) is False
    assert sm.query(("get", "k")) == b"2"
    assert sm.apply(("cas", S1, 6, "k", b"2", None)) is True  # delete if equal
    assert sm.query(("get", "k")) is None
    assert sm.revision == 6  # a failed cas is still an applied write


def test_list_by_prefix_with_limit_and_pages() -> None:
    sm = opened(S1)
    keys = ["b", "a/3", "a/1", "ab", "a/2", "a", "c/1"]
    for seq, key in enumerate(keys, 1):
        sm.apply(("put", S1, seq, key, key.encode()))
    assert sm.query(("list", "a/", 10, None)) == ["a/1", "a/2", "a/3"]
    assert sm.query(("list", "a", 10, None)) == ["a", "a/1", "a/2", "a/3", "ab"]
    assert sm.query(("list", "", 100, None)) == sorted(keys)
    assert sm.query(("list", "a/", 2, None)) == ["a/1", "a/2"]
    assert sm.query(("list", "a/", 2, "a/2")) == ["a/3"]
    assert sm.query(("list", "a/", 2, "0")) == ["a/1", "a/2"]  # start_after before the prefix
    assert sm.query(("list", "a/", 2, "a/9")) == []
    assert sm.query(("list", "zz", 5, None)) == []
    assert sm.apply(["list", "c", 1, None]) == ["c/1"]  # through the log, as a list
    sm.apply(("delete", S1, 8, "a/2"))
    assert sm.query(("list", "a/", 10, None)) == ["a/1", "a/3"]


def test_commands_as_lists_work_like_tuples() -> None:
    sm = opened()
    sm.apply(["open", S1])
    assert sm.apply(["put", S1, 1, "k", b"v"]) is None
    assert sm.apply(["put", S1, 1, "k", b"v"]) is None  # the retry, as decoded from CBOR
    assert sm.query(["get", "k"]) == b"v"
    assert sm.revision == 1


def test_retry_returns_first_outcome_and_applies_nothing() -> None:
    sm = opened(S1)
    sm.apply(("put", S1, 1, "k", b"1"))
    assert sm.apply(("cas", S1, 2, "k", b"1", b"2")) is True
    before = state(sm)
    # Applied again, the cas would now fail; the retry must answer as the first time.
    assert sm.apply(("cas", S1, 2, "k", b"1", b"2")) is True
    assert sm.query(("get", "k")) == b"2"
    assert sm.revision == 2
    assert state(sm) == before
    assert sm.apply(("delete", S1, 3, "k")) is True
    assert sm.apply(("delete", S1, 3, "k")) is True  # not False: the first outcome
    assert sm.revision == 3


def test_older_seq_is_refused_and_changes_nothing() -> None:
    sm = opened(S1)
    sm.apply(("put", S1, 5, "k", b"5"))  # gaps are fine: a client may give up on a write
    before = state(sm)
    with pytest.raises(StaleSequenceError, match="older than its last applied write"):
        sm.apply(("put", S1, 4, "k", b"4"))
    assert isinstance(StaleSequenceError("x"), ValueError)
    assert state(sm) == before


def test_sessions_are_independent() -> None:
    sm = opened(S1, S2)
    sm.apply(("put", S1, 1, "a", b"1"))
    sm.apply(("put", S2, 1, "b", b"1"))  # same seq, other session: applied
    assert sm.as_dict() == {"a": b"1", "b": b"1"}
    assert sm.sessions() == {S1: 1, S2: 1}


def test_write_on_unknown_session_is_refused() -> None:
    sm = opened()
    with pytest.raises(SessionExpiredError, match="open a new one"):
        sm.apply(("put", S1, 1, "k", b"v"))
    assert sm.as_dict() == {}
    assert sm.sessions() == {}
    assert sm.revision == 0


def test_open_is_idempotent() -> None:
    sm = opened(S1)
    sm.apply(("put", S1, 3, "k", b"v"))
    sm.apply(("open", S1))  # a retried open must not reset the session
    assert sm.sessions() == {S1: 3}
    assert sm.apply(("put", S1, 3, "k", b"other")) is None
    assert sm.query(("get", "k")) == b"v"


def test_session_eviction_is_lru_by_log_order() -> None:
    sm = opened(b"a", b"b", b"c", max_sessions=3)
    sm.apply(("put", b"a", 1, "k", b"1"))  # a is now the most recently used; b the least
    sm.apply(("open", b"d"))  # evicts b
    assert list(sm.sessions()) == [b"c", b"a", b"d"]
    with pytest.raises(SessionExpiredError):
        sm.apply(("put", b"b", 1, "k", b"2"))
    sm.apply(("put", b"c", 1, "k", b"3"))  # c survives
    sm.apply(("put", b"a", 1, "k", b"ignored"))  # a retry is a use too
    sm.apply(("open", b"e"))  # evicts d
    assert list(sm.sessions()) == [b"c", b"a", b"e"]
    assert sm.query(("get", "k")) == b"3"


def test_eviction_is_deterministic() -> None:
    rng = random.Random(7)
    commands: list[tuple[object, ...]] = []
    seqs: dict[bytes, int] = {}
    for _ in range(500):
        session = bytes([rng.randrange(12)])
        if session not in seqs or rng.random() < 0.1:
            commands.append(("open", session))
            seqs.setdefault(session, 0)
        else:
            seqs[session] += rng.choice([0, 1, 1, 2])  # retries and gaps
            commands.append(("put", session, max(seqs[session], 1), f"k{rng.randrange(5)}", b"v"))
    a, b = KVStateMachine(max_sessions=4), KVStateMachine(max_sessions=4)
    for command in commands:
        outcomes = []
        for sm in (a, b):
            try:
                outcomes.append(("ok", sm.apply(command)))
            except (ValueError, SessionExpiredError) as exc:
                outcomes.append(("error", f"{type(exc).__name__}: {exc}"))
        assert outcomes[0] == outcomes[1]
        assert len(a.sessions()) <= 4
    assert state(a) == state(b)


def random_commands(seed: int, n: int) -> list[object]:
    rng = random.Random(seed)
    sessions = [bytes([i]) * 8 for i in range(3)]
    seqs = dict.fromkeys(sessions, 0)
    commands: list[object] = [("open", s) for s in sessions]
    for _ in range(n):
        session = rng.choice(sessions)
        key = f"k{rng.randrange(6)}"
        value = rng.choice([None, b"", b"x", b"y"])
        if rng.random() < 0.8:
            seqs[session] += 1
        seq = max(seqs[session], 1)  # ~20% are retries of the previous write
        kind = rng.randrange(6)
        if kind == 0:
            commands.append(("put", session, seq, key, value or b"z"))
        elif kind == 1:
            commands.append(("delete", session, seq, key))
        elif kind == 2:
            commands.append(("cas", session, seq, key, value, rng.choice([None, b"x", b"y"])))
        elif kind == 3:
            commands.append(("get", key))
        elif kind == 4:
            commands.append(["list", "k", rng.randrange(1, 4), rng.choice([None, "k2"])])
        else:
            commands.append(("put", session, seq, 42, b"malformed"))
    return commands


@pytest.mark.parametrize("seed", range(5))
def test_deterministic(seed: int) -> None:
    a, b = KVStateMachine(), KVStateMachine()
    for command in random_commands(seed, 300):
        results = []
        for sm in (a, b):
            try:
                results.append(sm.apply(command))
            except ValueError as exc:
                results.append(str(exc))
        assert results[0] == results[1]
    assert state(a) == state(b)
    assert a.as_dict() == b.as_dict() and a.sessions() == b.sessions()


@pytest.mark.parametrize("seed", range(3))
def test_snapshot_restore_round_trip(seed: int) -> None:
    sm = KVStateMachine()
    commands = random_commands(seed, 200)
    for command in commands[:150]:
        with contextlib.suppress(ValueError):
            sm.apply(command)
    sm.apply(("open", b"big"))
    sm.apply(("put", b"big", 1, "big", b"\xff" * MAX_VALUE_BYTES))  # several chunks
    chunks = list(sm.snapshot())
    assert len(chunks) > 1
    blob = b"".join(chunks)
    copy = KVStateMachine()
    copy.apply(("open", b"old"))
    copy.restore([blob[i : i + 1000] for i in range(0, len(blob), 1000)])  # re-chunked
    assert copy.as_dict() == sm.as_dict()
    assert copy.sessions() == sm.sessions()  # LRU order included
    assert copy.revision == sm.revision
    assert state(copy) == blob
    # Both go on identically, dedup included (the sessions' last results came along).
    for command in commands[150:] + commands[140:150]:
        outcomes = []
        for machine in (sm, copy):
            try:
                outcomes.append(machine.apply(command))
            except ValueError as exc:
                outcomes.append(str(exc))
        assert outcomes[0] == outcomes[1]
    assert state(copy) == state(sm)


def test_snapshot_is_a_capture() -> None:
    sm = opened(S1)
    sm.apply(("put", S1, 1, "k", b"1"))
    chunks = sm.snapshot()
    sm.apply(("put", S1, 2, "k", b"2"))
    copy = KVStateMachine()
    copy.restore(chunks)
    assert copy.as_dict() == {"k": b"1"}


@pytest.mark.parametrize(
    "blob",
    [b"", b"\xff\xff", b"\xa0", b"\x80"],
)
def test_restore_rejects_garbage_and_keeps_state(blob: bytes) -> None:
    sm = opened(S1)
    sm.apply(("put", S1, 1, "k", b"v"))
    before = state(sm)
    with pytest.raises(ValueError):
        sm.restore([blob])
    assert state(sm) == before


def test_restore_rejects_bad_entries() -> None:
    import cbor2

    good = {"format": "trio_raft.kv/1", "revision": 0, "data": [], "sessions": []}
    bad_variants = [
        {**good, "format": "other"},
        {**good, "revision": -1},
        {**good, "data": [["k", "not bytes"]]},
        {**good, "data": [["k", b"1"], ["k", b"2"]]},
        {**good, "data": [[["unhashable"], b"1"]]},
        {**good, "sessions": [[b"s", 1, "result"]]},
        {**good, "sessions": [[b"s", True, None]]},
        {**good, "sessions": [[b"s", 1, None], [b"s", 2, None]]},
        {**good, "extra": 1},
    ]
    for variant in bad_variants:
        sm = KVStateMachine()
        with pytest.raises(ValueError):
            sm.restore([cbor2.dumps(variant)])
        assert state(sm) == state(KVStateMachine())


MALFORMED: list[object] = [
    None,
    "get",
    b"get",
    {"op": "get"},
    (),
    ("nope", "k"),
    ("get",),
    ("get", 1),
    ("get", ""),
    ("get", "k" * (MAX_KEY_BYTES + 1)),
    ("get", "\ud800"),
    ("put", S1, 1, "k"),
    ("put", S1, 1, "k", "str value"),
    ("put", S1, 1, "k", b"v" * (MAX_VALUE_BYTES + 1)),
    ("put", S1, 0, "k", b"v"),
    ("put", S1, True, "k", b"v"),
    ("put", S1, "1", "k", b"v"),
    ("put", "s1", 1, "k", b"v"),
    ("put", b"", 1, "k", b"v"),
    ("put", b"s" * 65, 1, "k", b"v"),
    ("put", S1, 1, "k", b"v", "extra"),
    ("delete", S1, 1, None),
    ("cas", S1, 1, "k", "x", b"v"),
    ("cas", S1, 1, "k", None),
    ("open", "not bytes"),
    ("open",),
    ("list", "p", 0, None),
    ("list", "p", MAX_LIST_LIMIT + 1, None),
    ("list", "p", 10),
    ("list", "p", 10, 5),
    ("list", 5, 10, None),
]


@pytest.mark.parametrize("command", MALFORMED, ids=repr)
def test_malformed_commands_raise_value_error_and_change_nothing(command: object) -> None:
    sm = opened(S1)
    sm.apply(("put", S1, 1, "k", b"v"))
    before = state(sm)
    with pytest.raises(ValueError):
        sm.apply(command)
    assert state(sm) == before


@pytest.mark.parametrize(
    "query", [("put", S1, 2, "k", b"v"), ("open", S1), ("get",), "get", None], ids=repr
)
def test_query_accepts_only_reads(query: object) -> None:
    sm = opened(S1)
    before = state(sm)
    with pytest.raises(ValueError):
        sm.query(query)
    assert state(sm) == before


def test_max_sessions_is_validated() -> None:
    with pytest.raises(ValueError):
        KVStateMachine(max_sessions=0)
