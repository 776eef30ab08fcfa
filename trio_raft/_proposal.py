"""The handle :meth:`Node.propose_nowait <trio_raft.Node.propose_nowait>` returns."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, final

import trio

from ._log_view import LogPosition
from ._sync import Waiter

logger: Final = logging.getLogger("trio_raft.node")


class _ResultWaiter(Waiter[object]):
    """The proposal's outcome; settling it also wakes :meth:`Proposal.appended` (a refusal
    settles the outcome without an append) and calls the proposal's ``on_done``, once."""

    __slots__ = ("_proposal",)

    def __init__(self, proposal: Proposal) -> None:
        super().__init__()
        self._proposal = proposal

    def set(self, result: object) -> None:
        if not self.done:
            super().set(result)
            self._proposal._settled()

    def fail(self, error: BaseException) -> None:
        if not self.done:
            super().fail(error)
            self._proposal._settled()


@final
class Proposal:
    """A command handed to a node by :meth:`~trio_raft.Node.propose_nowait`: await
    :meth:`appended` for where the leader put it in its log, :meth:`result` for its outcome.
    Do not instantiate directly."""

    __slots__ = ("_index", "_on_done", "_placed", "_term", "_waiter")

    def __init__(self, on_done: Callable[[Proposal], object] | None = None) -> None:
        self._placed = trio.Event()
        """Set once the command was appended, or its outcome is known without an append."""
        self._waiter: Waiter[object] = _ResultWaiter(self)
        self._index: int | None = None
        self._term: int | None = None
        self._on_done = on_done

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

    async def appended(self) -> LogPosition:
        """Wait until the leader has appended the command to its log, and return where: the
        entry's index and term. That is as soon as the node's dispatcher takes the command,
        before the entry is durable, replicated or committed; :meth:`result` waits for all
        three (and the apply). Whether the command commits at that position is known only
        from :meth:`result`: another leader may replace the entry (it then fails with
        :exc:`~trio_raft.ProposalDroppedError` or :exc:`~trio_raft.LeadershipLostError`).

        Cancelling the wait abandons the wait, not the proposal. It may be awaited again, and
        by several tasks; once appended it returns the same position at once, even after the
        outcome is known.

        Raises:
            NotLeaderError: the node is not the leader; nothing was appended.
            ProposalDroppedError: refused before the append (back-pressure,
                :exc:`~trio_raft.TooManyUncommittedError`, or the disk-space alarm,
                :exc:`~trio_raft.NoSpaceError`).
            NodeClosedError: the node shut down before taking the command.
            NodeCrashedError: the node stopped on an internal error before taking it.
        """
        await self._placed.wait()
        if self._index is None or self._term is None:
            await self._waiter.wait()  # the refusal: raises it
            raise AssertionError("a proposal settled without an append must have failed")
        return LogPosition(self._index, self._term)

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

    def result_nowait(self) -> object:
        """The outcome if it is known (:attr:`done`), without waiting: what :meth:`result`
        would return, or its exception raised.

        Raises:
            trio.WouldBlock: the outcome is not known yet.
            Exception: as :meth:`result`.
        """
        return self._waiter.result_nowait()

    def _settled(self) -> None:
        self._placed.set()
        on_done, self._on_done = self._on_done, None
        if on_done is None:
            return
        try:
            on_done(self)
        except Exception as exc:
            # A node task called it: its exception must not stop the node.
            logger.error(
                "the on_done callback of a proposal raised %s: %s; ignored (it must not raise)",
                type(exc).__name__, exc, exc_info=exc,
            )  # fmt: skip

    def _appended(self, index: int, term: int) -> None:
        self._index = index
        self._term = term
        self._placed.set()
