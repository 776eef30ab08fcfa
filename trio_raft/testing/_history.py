"""Recording what clients saw: the input of the linearizability checker.

A client calls :meth:`History.invoke` just before it sends a command and resolves the returned
handle exactly once, as soon as it knows the outcome:

- :meth:`History.complete`: the command took effect and returned ``result``;
- :meth:`History.fail`: the command definitely did **not** take effect (e.g. rejected before it
  was proposed), so it is dropped from the history;
- :meth:`History.unknown`: the command may or may not take effect, now or later (a timeout, a
  lost connection, a leader that crashed after receiving it). Its return time stays
  :data:`math.inf` and its result is not checked.

Times are whatever the caller passes, normally :func:`trio.current_time` on the simulator's
virtual clock; the recorder never reads a clock itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import final

import attrs

__all__ = ["History", "Operation", "OperationHandle"]


def _to_command(op: Sequence[object]) -> tuple[object, ...]:
    return tuple(op)


@final
@attrs.frozen
class Operation:
    """One client operation with its real-time interval ``[call, ret]``.

    Invariants (checked on construction): ``call`` is finite and ``call <= ret``; ``ok`` is
    true exactly when ``ret`` is finite; an operation whose outcome is unknown has
    ``result is None``.
    """

    client_id: int
    """The client that issued it. A client has at most one outstanding operation at a time."""
    op: tuple[object, ...] = attrs.field(converter=_to_command)
    """The command, e.g. ``("put", "k", "v")``; lists are converted to tuples."""
    call: float
    """When the client invoked it."""
    ret: float = math.inf
    """When the client got the result; :data:`math.inf` if the outcome is unknown."""
    result: object = None
    """What it returned; ``None`` (and not checked) when the outcome is unknown."""
    ok: bool = attrs.field()
    """Whether the result is known (``ret`` is finite). Defaults to ``math.isfinite(ret)``."""

    @ok.default
    def _ok_default(self) -> bool:
        return math.isfinite(self.ret)

    def __attrs_post_init__(self) -> None:
        if not math.isfinite(self.call):
            raise ValueError(f"call time must be finite, got {self.call!r}")
        if not self.call <= self.ret:
            raise ValueError(f"return time {self.ret!r} precedes call time {self.call!r}")
        if self.ok != math.isfinite(self.ret):
            raise ValueError(f"ok={self.ok!r} contradicts ret={self.ret!r}")
        if not self.ok and self.result is not None:
            raise ValueError(f"an operation with unknown outcome has no result: {self.result!r}")


@final
@attrs.frozen
class OperationHandle:
    """Opaque token from :meth:`History.invoke`, to resolve that invocation exactly once."""

    index: int
    """Position of the invocation in the history (invocation order)."""
    client_id: int
    """The client that issued it."""


@attrs.define
class _Pending:
    client_id: int
    op: tuple[object, ...]
    call: float


@final
@attrs.define
class History:
    """A client history under construction.

    Not thread-safe; meant for trio tasks in one run (all methods are sync and never block).
    """

    _records: dict[int, _Pending | Operation] = attrs.field(factory=dict, init=False)
    _outstanding: dict[int, int] = attrs.field(factory=dict, init=False)
    _next_index: int = attrs.field(default=0, init=False)

    def invoke(self, client_id: int, op: Sequence[object], now: float) -> OperationHandle:
        """Record that ``client_id`` invoked ``op`` at time ``now``.

        Returns:
            The handle to pass to exactly one of :meth:`complete`, :meth:`fail` or
            :meth:`unknown`.

        Raises:
            RuntimeError: ``client_id`` still has an unresolved operation (a client is
                sequential; model concurrency with more clients).
            ValueError: ``now`` is not finite.
        """
        if client_id in self._outstanding:
            pending = self._outstanding[client_id]
            raise RuntimeError(f"client {client_id} already has operation #{pending} outstanding")
        if not math.isfinite(now):
            raise ValueError(f"invocation time must be finite, got {now!r}")
        index = self._next_index
        self._next_index += 1
        self._records[index] = _Pending(client_id, tuple(op), now)
        self._outstanding[client_id] = index
        return OperationHandle(index, client_id)

    def complete(self, handle: OperationHandle, result: object, now: float) -> None:
        """Record that the operation took effect and returned ``result`` at time ``now``.

        Raises:
            RuntimeError: ``handle`` is not outstanding (it was already resolved).
            ValueError: ``now`` is not finite or precedes the invocation time.
        """
        pending = self._pending(handle)
        if not (math.isfinite(now) and now >= pending.call):
            raise ValueError(f"return time {now!r} must be finite and >= call {pending.call!r}")
        del self._outstanding[handle.client_id]
        self._records[handle.index] = Operation(
            pending.client_id, pending.op, pending.call, now, result
        )

    def fail(self, handle: OperationHandle) -> None:
        """Record that the operation definitely did not take effect: it is dropped.

        Only use this when the command can never be applied (it was never proposed, or the
        node rejected it before appending it to its log). When in doubt, use :meth:`unknown`.

        Raises:
            RuntimeError: ``handle`` is not outstanding.
        """
        self._pending(handle)
        del self._outstanding[handle.client_id]
        del self._records[handle.index]

    def unknown(self, handle: OperationHandle) -> None:
        """Record that the operation may or may not take effect, at any time after its call.

        The client is free to invoke its next operation afterwards.

        Raises:
            RuntimeError: ``handle`` is not outstanding.
        """
        pending = self._pending(handle)
        del self._outstanding[handle.client_id]
        self._records[handle.index] = Operation(pending.client_id, pending.op, pending.call)

    def operations(self) -> list[Operation]:
        """Return every recorded operation, in invocation order.

        Operations that are still outstanding are included as unknown (``ret`` =
        :data:`math.inf`, ``ok`` false) and stay outstanding in the history.
        """
        return [
            rec if isinstance(rec, Operation) else Operation(rec.client_id, rec.op, rec.call)
            for rec in self._records.values()
        ]

    def _pending(self, handle: OperationHandle) -> _Pending:
        if self._outstanding.get(handle.client_id) != handle.index:
            raise RuntimeError(f"operation #{handle.index} is not outstanding")
        record = self._records[handle.index]
        assert isinstance(record, _Pending)
        return record
