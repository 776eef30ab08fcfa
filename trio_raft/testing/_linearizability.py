"""Linearizability checking of a key-value client history.

The search follows Wing & Gong, with Lowe's memoization and the entry list of porcupine:

1. **Partition by key.** Every command touches one key and keys are independent, so a history is
   linearizable iff each key's sub-history is (linearizability is compositional). Each partition
   is checked on its own, in sorted key order.
2. **Entries.** An operation with a known outcome contributes a *call* and a *return* entry,
   kept sorted by time in a doubly linked list. The candidates to linearize next are the
   operations whose call entry comes before the first remaining return entry; reaching that
   return entry means its operation should already be linearized. This is the pruning "an
   operation that returned precedes every operation called after it returned". Operations
   with an unknown outcome only have a call entry, in a second list: they never force anything.
3. **Depth-first search** with an explicit stack (no recursion limit), linearizing one
   candidate at a time against :func:`~trio_raft.testing._kv.kv_step` and unlinking its entries
   ("dancing links"); backtracking relinks them. Known candidates are tried before unknown ones.
4. **Memoization** of dead ends by ``(known operations linearized, unknown operations
   linearized, value of the key)``, as bitmasks. A state is also skipped when a dead end with
   the same known set and value used a *subset* of its unknown operations: that one had every
   option this one has.
5. **Unknown operations** are only tried where they change the value (linearizing a no-op is
   the same as leaving it out); of identical unknown commands only the earliest unused one is
   tried; unknown reads are dropped up front.

Semantics of the history:

- **Ties are lenient.** Intervals are closed: if one operation returns at exactly the time
  another is called, they count as concurrent and may be linearized in either order (call
  entries sort before return entries of the same time). Virtual clocks make equal timestamps
  common, and a client cannot observe an order finer than its clock.
- **Unknown outcomes** (``ret`` = :data:`math.inf`, see :meth:`History.unknown
  <trio_raft.testing._history.History.unknown>`): the operation may take effect at any point
  after its call, or never; its result is not checked. The search succeeds once every
  operation with a known outcome is linearized. An unknown operation is only tried where it
  changes the value, since linearizing a no-op is the same as leaving it out.
- **Known results** must equal the model's, type included (so ``1`` is not ``True``).

The search is exponential in the worst case, so it has a budget (``max_states``): if a partition
exhausts it, that partition is *undecided*, reported as ``ok=None``. Linearizable histories are
usually cheap (the search rarely backtracks far). Proving a violation costs roughly the number of
reachable states before it, which grows with the operations concurrently in flight on the key and,
most of all, with the unknown-outcome operations on it that never took effect (they stay
candidates forever). For instance, 2,000 operations by 5 clients over 10 keys, 2% of them unknown,
take milliseconds either way; the same on a single key can take seconds to prove a violation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Final, final

import attrs

from ._history import Operation
from ._kv import command_key, is_read_only, kv_step

__all__ = ["DEFAULT_MAX_STATES", "LinearizabilityResult", "check_linearizable"]

DEFAULT_MAX_STATES: Final = 2_000_000
"""Default search budget: search states visited per key partition (about 10 s of CPU)."""


@final
@attrs.frozen
class LinearizabilityResult:
    """The verdict of :func:`check_linearizable`."""

    ok: bool | None
    """``True``: linearizable. ``False``: not linearizable. ``None``: undecided, because the
    search budget ran out on some partition and no other partition was found not linearizable."""
    key: str | None
    """The key of the partition the verdict is about when ``ok`` is not ``True`` (the first
    one, in sorted key order, that is not linearizable, else the first undecided one); ``None``
    when ``ok`` is ``True``."""
    explanation: str
    """Human-readable detail. For a violation: the partition's operations as a table in call
    order, the longest linearizable prefix found, and what each candidate to extend it gives."""
    states_explored: int
    """Number of distinct search states visited, summed over the partitions checked."""


def check_linearizable(
    operations: Iterable[Operation], *, max_states: int = DEFAULT_MAX_STATES
) -> LinearizabilityResult:
    """Decide whether a KV client history is linearizable.

    Args:
        operations: The history, in any order, e.g. :meth:`History.operations
            <trio_raft.testing.History.operations>`. Commands are those of
            :func:`~trio_raft.testing.kv_step`; every key starts absent.
        max_states: Search budget per key partition, in search states visited (see the module
            docstring); a partition that needs more is undecided. Time and memory grow with it.

    Returns:
        The verdict. Partitions are checked in sorted key order; the first one that is not
        linearizable ends the check, while an undecided one does not (a later partition may
        still give a definite ``False``).

    Raises:
        ValueError: An operation holds a malformed command, or ``max_states < 1``.
    """
    if max_states < 1:
        raise ValueError(f"max_states must be >= 1, got {max_states!r}")
    partitions: dict[str, list[Operation]] = {}
    count = 0
    for operation in operations:
        partitions.setdefault(command_key(operation.op), []).append(operation)
        count += 1
    total_states = 0
    undecided: LinearizabilityResult | None = None
    for key in sorted(partitions):
        ops = sorted(partitions[key], key=lambda o: (o.call, o.ret))
        search = _Search(ops, max_states)
        verdict = search.run()
        total_states += search.states
        if verdict is False:
            text = _explain_violation(key, ops, search)
            return LinearizabilityResult(False, key, text, total_states)
        if verdict is None and undecided is None:
            text = (
                f"key {key!r}: undecided, search budget exhausted after {search.states} states "
                f"(max_states={max_states}); raise max_states or shorten the history.\n"
                + _table(ops)
            )
            undecided = LinearizabilityResult(None, key, text, 0)
    if undecided is not None:
        return attrs.evolve(undecided, states_explored=total_states)
    text = (
        f"linearizable: {count} operations over {len(partitions)} keys "
        f"({total_states} states explored)"
    )
    return LinearizabilityResult(True, None, text, total_states)


def _same(a: object, b: object) -> bool:
    return type(a) is type(b) and a == b


class _Search:
    """The search over one key partition; ``ops`` must be that partition, sorted by call."""

    def __init__(self, ops: Sequence[Operation], max_states: int) -> None:
        self.ops = ops
        self.max_states = max_states
        self.states = 0
        self.best: list[int] = []
        """Longest linearizable prefix found, as indices into ``ops``."""
        self.best_value: str | None = None
        """The key's value after ``best``."""

    def run(self) -> bool | None:
        """Return ``True`` / ``False`` (linearizable or not) or ``None`` (budget exhausted).

        One long function on purpose: the loop is the hot path, so it works on local lists.
        """
        ops = self.ops
        # Two doubly linked lists share the node arrays. The main list holds the call and return
        # entries of known operations, sorted by (time, kind) with call = 0 < return = 1, so
        # calls come first on ties (lenient). The side list holds the call entries of unknown
        # operations, sorted by call; one is a candidate iff its call <= the first return.
        main = sorted(
            [(o.call, 0, i) for i, o in enumerate(ops) if o.ok]
            + [(o.ret, 1, i) for i, o in enumerate(ops) if o.ok]
        )
        # Unknown reads are left out altogether: they never change the value.
        side = [(o.call, 0, i) for i, o in enumerate(ops) if not (o.ok or is_read_only(o.op))]
        head, tail = 0, len(main) + 1
        side_head = tail + 1  # the side tail is the last node
        nodes = [(0.0, 1, -1), *main, (math.inf, 1, -1), (0.0, 1, -1), *side, (math.inf, 1, -1)]
        size = len(nodes)
        nxt = [*range(1, size), -1]
        prv = [-1, *range(0, size - 1)]
        nxt[tail], prv[side_head] = -1, -1
        time = [t for t, _, _ in nodes]
        op_of = [i for _, _, i in nodes]
        is_call = [kind == 0 for _, kind, _ in nodes]
        ret_node = [0] * len(ops)
        for k, (_, kind, i) in enumerate(nodes):
            if kind == 1 and i >= 0:
                ret_node[i] = k
        match = [ret_node[op_of[k]] if is_call[k] and ops[op_of[k]].ok else 0 for k in range(size)]
        known = [o.ok for o in ops]
        expected = [o.result for o in ops]
        commands = [o.op for o in ops]
        # Known and unknown operations get separate bitmasks (bit[i] in the one of its kind).
        # twin[i]: the previous unknown operation with the same command, or -1. Identical
        # unknown operations are interchangeable once called, so only the earliest unlinearized
        # one of each command is tried: the linearized ones always form a prefix of the chain.
        bit = [0] * len(ops)
        twin = [-1] * len(ops)
        last_twin: dict[tuple[object, ...], int] = {}
        n_known = n_unknown = 0
        for i, o in enumerate(ops):
            if o.ok:
                bit[i] = 1 << n_known
                n_known += 1
            else:
                bit[i] = 1 << n_unknown
                n_unknown += 1
                twin[i] = last_twin.get(o.op, -1)
                last_twin[o.op] = i

        value: str | None = None
        done = 0  # known operations linearized
        used = 0  # unknown operations linearized
        # A finished state (done, used, value) has no completion, so a later state (done,
        # used2, value) with used2 ⊇ used, having fewer options, has none either: skip it. Per
        # (done, value) `finished` keeps the minimal `used` masks. Known candidates are tried
        # before unknown ones so that the states without an unknown operation finish first.
        finished: dict[tuple[int, str | None], list[int]] = {}
        stack: list[tuple[int, str | None, float]] = []  # (call node, value before, deadline)
        deadline = math.inf  # time of the first remaining return entry, once the scan found it
        all_known = (1 << n_known) - 1
        k = nxt[head]
        while done != all_known:
            if is_call[k] and time[k] <= deadline:
                i = op_of[k]
                new_value, result = kv_step(value, commands[i])
                if known[i]:
                    accept = _same(result, expected[i])
                    new_done, new_used = done | bit[i], used
                else:
                    # Only worth trying if it changes the value (else leaving it out is the
                    # same) and no identical earlier twin is still available.
                    t = twin[i]
                    accept = new_value != value and (t < 0 or used & bit[t] != 0)
                    new_done, new_used = done, used | bit[i]
                if accept and not any(
                    f & ~new_used == 0 for f in finished.get((new_done, new_value), ())
                ):
                    if self.states >= self.max_states:
                        return None
                    self.states += 1
                    stack.append((k, value, deadline))
                    done, used, value = new_done, new_used, new_value
                    # Unlink the call entry, then its return entry (if any).
                    nxt[prv[k]] = nxt[k]
                    prv[nxt[k]] = prv[k]
                    m = match[k]
                    if m:
                        nxt[prv[m]] = nxt[m]
                        prv[nxt[m]] = prv[m]
                    if len(stack) > len(self.best):
                        self.best = [op_of[c] for c, _, _ in stack]
                        self.best_value = value
                    k, deadline = nxt[head], math.inf
                    continue
                k = nxt[k]
            elif k < side_head and deadline == math.inf:
                # The first return entry: an operation that must be linearized by now. Next,
                # try the unknown operations called no later than it.
                deadline = time[k]
                k = nxt[side_head]
            else:
                # Dead end: record the current state as finished, then backtrack.
                if not stack:
                    return False
                masks = finished.setdefault((done, value), [])
                masks[:] = [f for f in masks if used & ~f != 0]  # drop supersets of `used`
                masks.append(used)
                k, value, deadline = stack.pop()
                i = op_of[k]
                if known[i]:
                    done ^= bit[i]
                else:
                    used ^= bit[i]
                # Relink in the reverse order of unlinking.
                m = match[k]
                if m:
                    nxt[prv[m]] = m
                    prv[nxt[m]] = m
                nxt[prv[k]] = k
                prv[nxt[k]] = k
                k = nxt[k]
        return True


def _fmt_time(t: float) -> str:
    return f"{t:.6f}" if t != float("inf") else "?"


def _fmt_command(op: Sequence[object]) -> str:
    return " ".join([str(op[0]), *(repr(arg) for arg in op[1:])])


def _table(ops: Sequence[Operation]) -> str:
    """Render a partition's operations (already in call order) as an aligned table."""
    rows = [("#", "client", "call", "ret", "command", "result")]
    for i, o in enumerate(ops):
        result = repr(o.result) if o.ok else "? (unknown)"
        rows.append(
            (
                str(i),
                str(o.client_id),
                _fmt_time(o.call),
                _fmt_time(o.ret),
                _fmt_command(o.op),
                result,
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    right = {0, 1, 2, 3}
    lines = [
        "  ".join(
            cell.rjust(width) if c in right else cell.ljust(width)
            for c, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    return "\n".join("    " + line for line in lines)


def _explain_violation(key: str, ops: Sequence[Operation], search: _Search) -> str:
    best = search.best
    value = search.best_value
    in_best = set(best)
    left_known = [i for i, o in enumerate(ops) if o.ok and i not in in_best]
    deadline = min(ops[i].ret for i in left_known)
    first = next(i for i in left_known if ops[i].ret == deadline)
    prefix = " -> ".join(f"#{i}" for i in best) if best else "(empty)"
    lines = [
        f"key {key!r} is not linearizable ({len(ops)} operations).",
        "Operations in call order (ret '?': outcome unknown, may or may not have taken effect):",
        _table(ops),
        f"Longest linearizable prefix found ({len(best)} operations): {prefix}",
        f"  value of {key!r} after it: {value!r}",
        f"  #{first} must come next at the latest (it returned at {_fmt_time(deadline)});"
        " the candidates until then:",
    ]
    dead_end = "consistent here, but every continuation fails later"
    for i, o in enumerate(ops):
        if i in in_best or o.call > deadline or (not o.ok and is_read_only(o.op)):
            continue
        new_value, result = kv_step(value, o.op)
        if not o.ok:
            effect = "no effect here" if new_value == value else dead_end
            lines.append(f"    #{i} {_fmt_command(o.op)} (unknown outcome): {effect}")
        elif _same(result, o.result):
            lines.append(f"    #{i} {_fmt_command(o.op)}: {dead_end}")
        else:
            lines.append(f"    #{i} {_fmt_command(o.op)}: model gives {result!r}, got {o.result!r}")
    return "\n".join(lines)
