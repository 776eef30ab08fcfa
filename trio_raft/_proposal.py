"""The handle :meth:`Node.propose_nowait <trio_raft.Node.propose_nowait>` returns."""

from __future__ import annotations

from typing import final

from ._sync import Waiter


@final
class Proposal:
    """A command handed to a node by :meth:`~trio_raft.Node.propose_nowait`; await
    :meth:`result` for its outcome. Do not instantiate directly."""

    __slots__ = ("_index", "_term", "_waiter")

    def __init__(self) -> None:
        self._waiter: Waiter[object] = Waiter()
        self._index: int | None = None
        self._term: int | None = None

    @property
    def index(self) -> int | None:
        """The log index of the command's entry once the leader appended it; ``None`` before,
        and if it was refused."""
        return self._index

    @property
    def term(self) -> int | None:
        """The term of the command's entry once the leader appended it; ``None`` before, and
        if it was refused."""
        return self._term

    @property
    def done(self) -> bool:
        """Whether the outcome is known (:meth:`result` then returns at once)."""
        return self._waiter.done

    async def result(self) -> object:
        """Wait for the outcome: what :meth:`StateMachine.apply <trio_raft.StateMachine.apply>`
        returned for the command once it is committed and applied on this node.

        Cancelling the wait abandons the wait, not the proposal: it may still commit. It may be
        awaited again, and by several tasks.

        Raises:
            Exception: the same errors as :meth:`Node.propose <trio_raft.Node.propose>` (not
                the leader, back-pressure, lost leadership, the state machine's own, ...),
                except ``ValueError``, which :meth:`~trio_raft.Node.propose_nowait` raises.
        """
        return await self._waiter.wait()

    def _appended(self, index: int, term: int) -> None:
        self._index = index
        self._term = term
