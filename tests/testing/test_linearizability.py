"""Tests of the KV model, the history recorder and the linearizability checker.

Hand-made histories pin down each rule of the checker (see the module docstring of
``trio_raft.testing._linearizability``); Hypothesis checks it against histories built from a real
sequential execution, and a seeded simulated workload shows it stays tractable at the sizes the
cluster simulator produces.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_raft.testing._history import History, Operation
from trio_raft.testing._kv import KVStateMachine, command_key, is_read_only, kv_step
from trio_raft.testing._linearizability import check_linearizable

INF = math.inf


def op(
    client: int, command: Sequence[object], call: float, ret: float = INF, result: object = None
) -> Operation:
    return Operation(client, command, call, ret, result)


# --------------------------------------------------------------------------------------------
# KV model


def test_kv_step_semantics() -> None:
    assert kv_step(None, ("get", "k")) == (None, None)
    assert kv_step("v", ("get", "k")) == ("v", "v")
    assert kv_step("v", ("put", "k", "w")) == ("w", None)
    assert kv_step(None, ("append", "k", "ab")) == ("ab", "ab")
    assert kv_step("x", ("append", "k", "y")) == ("xy", "xy")
    assert kv_step(None, ("cas", "k", None, "a")) == ("a", True)
    assert kv_step("a", ("cas", "k", None, "b")) == ("a", False)
    assert kv_step("a", ("cas", "k", "a", "b")) == ("b", True)
    assert kv_step("", ("cas", "k", None, "b")) == ("", False)  # "" is present, not absent
    assert kv_step("a", ("delete", "k")) == (None, None)
    assert kv_step("a", ["put", "k", "z"]) == ("z", None)  # lists, as CBOR decodes them


@pytest.mark.parametrize(
    "bad",
    [
        ("get",),
        ("get", 1),
        ("put", "k"),
        ("put", "k", 3),
        ("cas", "k", "a"),
        ("cas", "k", "a", None),
        ("frobnicate", "k"),
        ("get", "k", "extra"),
        "get k",
        (),
    ],
)
def test_kv_rejects_malformed(bad: Sequence[object]) -> None:
    with pytest.raises(ValueError, match="malformed KV command"):
        kv_step(None, bad)
    with pytest.raises(ValueError):
        KVStateMachine().apply(bad)


def test_kv_state_machine() -> None:
    sm = KVStateMachine()
    assert sm.apply(("put", "a", "1")) is None
    assert sm.apply(["append", "a", "2"]) == "12"
    assert sm.apply(("cas", "b", None, "x")) is True
    assert sm.apply(("cas", "b", None, "y")) is False
    assert sm.apply(("get", "b")) == "x"
    assert sm.query(("get", "a")) == "12"
    assert sm.query(("get", "zz")) is None
    assert sm.apply(("delete", "a")) is None
    assert sm.as_dict() == {"b": "x"}
    with pytest.raises(ValueError, match="query must be"):
        sm.query(("put", "a", "1"))
    with pytest.raises(ValueError):
        sm.apply(None)
    assert sm.as_dict() == {"b": "x"}
    assert command_key(("cas", "q", None, "v")) == "q"
    assert is_read_only(("get", "q")) and not is_read_only(("delete", "q"))


# --------------------------------------------------------------------------------------------
# History


def test_history_records_outcomes() -> None:
    h = History()
    a = h.invoke(1, ["put", "x", "a"], 0.0)
    b = h.invoke(2, ("get", "x"), 0.5)
    c = h.invoke(3, ("put", "x", "c"), 0.6)
    d = h.invoke(4, ("put", "x", "d"), 0.7)
    h.complete(b, "a", 2.0)
    h.complete(a, None, 1.0)
    h.fail(c)
    h.unknown(d)
    e = h.invoke(4, ("get", "x"), 3.0)  # free again after an unknown outcome
    assert h.operations() == [
        Operation(1, ("put", "x", "a"), 0.0, 1.0, None),
        Operation(2, ("get", "x"), 0.5, 2.0, "a"),
        Operation(4, ("put", "x", "d"), 0.7, INF, None, ok=False),
        Operation(4, ("get", "x"), 3.0),  # still pending: reported as unknown
    ]
    h.complete(e, "d", 4.0)
    assert h.operations()[-1] == Operation(4, ("get", "x"), 3.0, 4.0, "d", ok=True)


def test_history_rejects_misuse() -> None:
    h = History()
    a = h.invoke(1, ("get", "x"), 1.0)
    with pytest.raises(RuntimeError, match="already has operation"):
        h.invoke(1, ("get", "y"), 1.5)
    with pytest.raises(ValueError, match="must be finite and >= call"):
        h.complete(a, None, 0.5)
    h.complete(a, None, 2.0)  # the failed complete left it outstanding
    with pytest.raises(RuntimeError, match="not outstanding"):
        h.complete(a, None, 3.0)
    with pytest.raises(RuntimeError, match="not outstanding"):
        h.fail(a)
    with pytest.raises(RuntimeError, match="not outstanding"):
        h.unknown(a)
    with pytest.raises(ValueError, match="finite"):
        h.invoke(2, ("get", "x"), INF)


def test_operation_invariants() -> None:
    with pytest.raises(ValueError, match="precedes"):
        op(1, ("get", "x"), 2.0, 1.0)
    with pytest.raises(ValueError, match="contradicts"):
        Operation(1, ("get", "x"), 0.0, 1.0, None, ok=False)
    with pytest.raises(ValueError, match="no result"):
        op(1, ("get", "x"), 0.0, INF, "v")


# --------------------------------------------------------------------------------------------
# Checker: hand-made histories


def test_empty_and_sequential() -> None:
    assert check_linearizable([]).ok is True
    history = [
        op(1, ("put", "x", "a"), 0, 1, None),
        op(1, ("get", "x"), 2, 3, "a"),
        op(2, ("append", "x", "b"), 4, 5, "ab"),
        op(1, ("delete", "x"), 6, 7, None),
        op(2, ("get", "x"), 8, 9, None),
    ]
    result = check_linearizable(history)
    assert (result.ok, result.key) == (True, None)
    assert "5 operations over 1 keys" in result.explanation


def test_concurrent_order_forced_by_reads() -> None:
    # The two puts overlap everything; the reads force: put b, get=b, put a, get=a.
    history = [
        op(1, ("put", "x", "a"), 0, 10, None),
        op(2, ("put", "x", "b"), 0, 10, None),
        op(3, ("get", "x"), 1, 2, "b"),
        op(3, ("get", "x"), 3, 4, "a"),
        op(3, ("get", "x"), 11, 12, "a"),
    ]
    assert check_linearizable(history).ok is True
    history[-1] = op(3, ("get", "x"), 11, 12, "b")
    result = check_linearizable(history)
    assert (result.ok, result.key) == (False, "x")


def test_stale_read_after_completed_write() -> None:
    history = [
        op(1, ("put", "x", "a"), 0, 1, None),
        op(1, ("put", "x", "b"), 2, 3, None),
        op(2, ("get", "x"), 4, 5, "a"),
    ]
    result = check_linearizable(history)
    assert (result.ok, result.key) == (False, "x")
    text = result.explanation
    # A readable table in call order, the longest prefix and the offending read.
    assert "#  client" in text and "command" in text
    assert text.index("put 'x' 'a'") < text.index("put 'x' 'b'") < text.index("get 'x'")
    assert "Longest linearizable prefix found (2 operations): #0 -> #1" in text
    assert "#2 get 'x': model gives 'b', got 'a'" in text


def test_read_of_a_write_not_yet_called() -> None:
    history = [
        op(2, ("get", "x"), 0, 1, "a"),
        op(1, ("put", "x", "a"), 2, 3, None),
    ]
    assert check_linearizable(history).ok is False


def test_touching_intervals_are_concurrent() -> None:
    # Lenient ties: the put returns exactly when the get is called, so either order is allowed.
    history = [op(1, ("put", "x", "a"), 0, 1, None), op(2, ("get", "x"), 1, 2, None)]
    assert check_linearizable(history).ok is True
    history = [op(1, ("put", "x", "a"), 0, 1, None), op(2, ("get", "x"), 1.001, 2, None)]
    assert check_linearizable(history).ok is False


def test_cas_semantics() -> None:
    history = [
        op(1, ("cas", "x", None, "a"), 0, 2, True),
        op(2, ("cas", "x", None, "b"), 1, 3, False),
        op(1, ("cas", "x", "a", "c"), 4, 5, True),
        op(2, ("cas", "x", "a", "d"), 6, 7, False),
        op(1, ("get", "x"), 8, 9, "c"),
    ]
    assert check_linearizable(history).ok is True
    both_won = [
        op(1, ("cas", "x", None, "a"), 0, 2, True),
        op(2, ("cas", "x", None, "b"), 1, 3, True),
    ]
    assert check_linearizable(both_won).ok is False
    truthy_int = [op(1, ("cas", "x", None, "a"), 0, 2, 1)]  # 1 is not True
    assert check_linearizable(truthy_int).ok is False


def test_append_order() -> None:
    ok = [op(1, ("append", "x", "a"), 0, 5, "ba"), op(2, ("append", "x", "b"), 1, 2, "b")]
    assert check_linearizable(ok).ok is True
    neither_saw_other = [
        op(1, ("append", "x", "a"), 0, 5, "a"),
        op(2, ("append", "x", "b"), 1, 2, "b"),
    ]
    assert check_linearizable(neither_saw_other).ok is False
    reordered_later = [
        op(1, ("append", "x", "a"), 0, 5, "a"),
        op(2, ("append", "x", "b"), 1, 6, "ab"),
        op(3, ("get", "x"), 7, 8, "ba"),
    ]
    assert check_linearizable(reordered_later).ok is False


def test_unknown_outcome_may_take_effect_late_or_never() -> None:
    took_effect = [
        op(1, ("put", "x", "a"), 0),
        op(2, ("get", "x"), 1, 2, None),  # not yet
        op(2, ("get", "x"), 50, 51, "a"),  # long after the client gave up
        op(2, ("get", "x"), 60, 61, "a"),
    ]
    assert check_linearizable(took_effect).ok is True
    never = [op(1, ("put", "x", "a"), 0), op(2, ("get", "x"), 50, 51, None)]
    assert check_linearizable(never).ok is True
    # ... but it cannot take effect twice, nor be undone.
    flicker = [*took_effect, op(2, ("get", "x"), 70, 71, None)]
    assert check_linearizable(flicker).ok is False


def test_unknown_outcome_cannot_precede_its_call() -> None:
    history = [
        op(2, ("get", "x"), 0, 1, "a"),
        op(1, ("put", "x", "a"), 2),  # unknown outcome, called after the read returned
    ]
    result = check_linearizable(history)
    assert (result.ok, result.key) == (False, "x")
    assert "? (unknown)" in result.explanation


def test_partitions_report_the_failing_key() -> None:
    history = [
        op(1, ("put", "a", "1"), 0, 1, None),
        op(2, ("put", "b", "1"), 0, 1, None),
        op(3, ("get", "a"), 2, 3, "1"),
        op(3, ("get", "b"), 4, 5, "stale"),
        op(1, ("put", "c", "1"), 0, 1, None),
        op(2, ("get", "c"), 2, 3, "1"),
    ]
    result = check_linearizable(history)
    assert (result.ok, result.key) == (False, "b")
    assert "key 'b' is not linearizable (2 operations)" in result.explanation
    assert "'a'" not in result.explanation and "'c'" not in result.explanation


def test_budget_exhaustion_is_undecided() -> None:
    # Ten overlapping unknown puts, then a read no order can produce: the full search has to
    # try every subset of the puts (times the last value) before it can say no.
    history = [op(i, ("put", "x", str(i)), 0) for i in range(10)]  # outcomes unknown
    history.append(op(99, ("get", "x"), 2, 3, "impossible"))
    small = check_linearizable(history, max_states=50)
    assert (small.ok, small.key) == (None, "x")
    assert small.states_explored == 50
    assert "budget exhausted" in small.explanation
    full = check_linearizable(history)
    assert (full.ok, full.key) == (False, "x")
    assert full.states_explored > 1000
    # An undecided key does not hide a definite violation on another one.
    other = [*history, op(1, ("put", "y", "a"), 0, 1, None), op(2, ("get", "y"), 2, 3, "b")]
    assert check_linearizable(other, max_states=50).key == "y"
    with pytest.raises(ValueError, match="max_states"):
        check_linearizable(history, max_states=0)


def test_malformed_command_in_history() -> None:
    with pytest.raises(ValueError, match="malformed KV command"):
        check_linearizable([op(1, ("incr", "x"), 0, 1, 1)])


# --------------------------------------------------------------------------------------------
# Checker: generated histories

_KEYS = st.sampled_from(["x", "y", "z"])
_VALUES = st.text(alphabet="abc", min_size=1, max_size=2)
_COMMANDS = st.one_of(
    st.tuples(st.just("get"), _KEYS),
    st.tuples(st.just("put"), _KEYS, _VALUES),
    st.tuples(st.just("append"), _KEYS, _VALUES),
    st.tuples(st.just("cas"), _KEYS, st.none() | _VALUES, _VALUES),
    st.tuples(st.just("delete"), _KEYS),
)


def _apply(state: dict[str, str], command: Sequence[object]) -> object:
    key = command_key(command)
    new, result = kv_step(state.get(key), command)
    if new is None:
        state.pop(key, None)
    else:
        state[key] = new
    return result


def _widened(commands: Sequence[Sequence[object]], rnd: random.Random) -> list[Operation]:
    """Run ``commands`` sequentially (operation i takes effect at time i, unless its outcome is
    unknown and it never takes effect), then give each an interval around that point."""
    state: dict[str, str] = {}
    history = []
    for i, command in enumerate(commands):
        fate = rnd.choice(["known"] * 8 + ["unknown-applied", "unknown-lost"])
        call = i - rnd.randint(0, 3)  # integer times: many exact ties
        if fate == "unknown-lost":
            history.append(op(i, command, call + rnd.randint(0, 6)))
            continue
        result = _apply(state, command)
        if fate == "known":
            history.append(op(i, command, call, i + rnd.randint(0, 3), result))
        else:
            history.append(op(i, command, call))
    rnd.shuffle(history)
    return history


@settings(max_examples=150, deadline=None)
@given(commands=st.lists(_COMMANDS, max_size=30), rnd=st.randoms(use_true_random=False))
def test_widened_sequential_execution_is_linearizable(
    commands: list[tuple[object, ...]], rnd: random.Random
) -> None:
    result = check_linearizable(_widened(commands, rnd))
    assert result.ok is True, result.explanation


@settings(max_examples=150, deadline=None)
@given(
    commands=st.lists(_COMMANDS, max_size=30),
    last=_KEYS,
    rnd=st.randoms(use_true_random=False),
)
def test_read_of_a_value_never_written_is_caught(
    commands: list[tuple[object, ...]], last: str, rnd: random.Random
) -> None:
    history = _widened([*commands, ("get", last)], rnd)
    reads = [i for i, o in enumerate(history) if o.ok and o.op[0] == "get"]
    if not reads:  # the final read drew an unknown outcome
        history.append(op(-1, ("get", last), 100, 101, None))
        reads = [len(history) - 1]
    victim = history[rnd.choice(reads)]
    history[history.index(victim)] = op(victim.client_id, victim.op, victim.call, victim.ret, "Z")
    result = check_linearizable(history)
    assert (result.ok, result.key) == (False, victim.op[1]), result.explanation


def _simulated_workload(seed: int, n_ops: int, n_clients: int, n_keys: int) -> list[Operation]:
    """Sequential clients with overlapping operations; each takes effect at a random point of
    its interval, and about 2% time out with an unknown outcome (half of those took effect)."""
    rnd = random.Random(seed)
    keys = [f"k{i}" for i in range(n_keys)]
    free_at = [0.0] * n_clients
    planned = []
    for _ in range(n_ops):
        client = min(range(n_clients), key=free_at.__getitem__)
        call = free_at[client] + rnd.uniform(0, 0.5)
        ret = call + rnd.uniform(0.1, 3.0)
        free_at[client] = ret
        key = rnd.choice(keys)
        value = rnd.choice("abc")
        command = rnd.choice(
            [("get", key)] * 4
            + [("put", key, value)] * 2
            + [("append", key, value)] * 2
            + [("cas", key, rnd.choice([None, "a", "b", "c"]), value)] * 2
        )
        fate = "known" if rnd.random() > 0.02 else rnd.choice(["applied", "lost"])
        planned.append((rnd.uniform(call, ret), client, command, call, ret, fate))
    state: dict[str, str] = {}
    history = []
    for _, client, command, call, ret, fate in sorted(planned):
        if fate == "lost":
            history.append(op(client, command, call))
            continue
        result = _apply(state, command)
        history.append(
            op(client, command, call, ret, result) if fate == "known" else op(client, command, call)
        )
    return history


def test_simulator_sized_history_is_decided() -> None:
    history = _simulated_workload(seed=7, n_ops=2000, n_clients=5, n_keys=10)
    assert sum(not o.ok for o in history) >= 20
    result = check_linearizable(history)
    assert result.ok is True, result.explanation
    # The same history with one read corrupted.
    i = next(i for i, o in enumerate(history) if o.ok and o.op[0] == "get" and o.call > 500)
    victim = history[i]
    history[i] = op(victim.client_id, victim.op, victim.call, victim.ret, "Z")
    result = check_linearizable(history)
    assert (result.ok, result.key) == (False, victim.op[1])


def _brute_force(history: Sequence[Operation]) -> bool:
    """The definition, by enumeration: some order of all known operations plus any subset of
    the unknown ones respects real time (closed intervals) and the model's results."""
    known = [o for o in history if o.ok]
    unknown = [o for o in history if not o.ok]
    for r in range(len(unknown) + 1):
        for subset in itertools.combinations(unknown, r):
            for order in itertools.permutations([*known, *subset]):
                if any(
                    later.ret < earlier.call
                    for a, earlier in enumerate(order)
                    for later in order[a + 1 :]
                ):
                    continue
                state: dict[str, str] = {}
                if all(_same_result(_apply(state, o.op), o.result) or not o.ok for o in order):
                    return True
    return False


def _same_result(a: object, b: object) -> bool:
    return type(a) is type(b) and a == b


@st.composite
def _small_histories(draw: st.DrawFn) -> list[Operation]:
    """Up to 6 operations on two keys with tiny value sets, results from a real sequential run
    but often corrupted, so that both verdicts are common."""
    keys = st.sampled_from(["x", "x", "y"])
    values = st.sampled_from(["a", "b"])
    commands = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("get"), keys),
                st.tuples(st.just("put"), keys, values),
                st.tuples(st.just("append"), keys, values),
                st.tuples(st.just("cas"), keys, st.none() | values, values),
                st.tuples(st.just("delete"), keys),
            ),
            min_size=1,
            max_size=6,
        )
    )
    state: dict[str, str] = {}
    history = []
    for i, command in enumerate(commands):
        result = _apply(state, command)
        call = draw(st.integers(0, 6))
        if draw(st.integers(0, 4)) == 0:
            history.append(op(i, command, call))
            continue
        if draw(st.integers(0, 2)) == 0:
            result = draw(st.sampled_from([None, True, False, "a", "b", "ab", "ba", "aa"]))
        history.append(op(i, command, call, call + draw(st.integers(0, 4)), result))
    return history


@settings(max_examples=300, deadline=None)
@given(history=_small_histories())
def test_agrees_with_brute_force(history: list[Operation]) -> None:
    expected = _brute_force(history)
    result = check_linearizable(history)
    assert result.ok is expected, result.explanation
