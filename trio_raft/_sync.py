"""Tiny synchronization helpers used inside a node (private)."""

from __future__ import annotations

from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Signal:
    """A level-triggered wake-up for one waiting task: ``set()`` any number of times, and the
    next (or current) ``wait()`` returns once; then it re-arms."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


class Broadcast:
    """Wakes every current waiter on ``notify()`` (a condition without a lock)."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class Waiter(Generic[T]):
    """A one-shot slot: one side sets a result or an exception, the other awaits it."""

    __slots__ = ("_error", "_event", "_result")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._result: T | None = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def set(self, result: T) -> None:
        if not self._event.is_set():
            self._result = result
            self._event.set()

    def fail(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._error = error
            self._event.set()

    async def wait(self) -> T:
        await self._event.wait()
        return self.result_nowait()

    def result_nowait(self) -> T:
        """The result (or the error raised) once set; :exc:`trio.WouldBlock` before."""
        if not self._event.is_set():
            raise trio.WouldBlock
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


class WriteLock:
    """A fair (FIFO) lock whose ``async with`` takes no checkpoint when the lock is free: its
    holders await I/O right away, which is their checkpoint."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = trio.Lock()

    async def __aenter__(self) -> None:
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()
