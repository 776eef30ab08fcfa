"""Small private helpers."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import trio

T = TypeVar("T")


def fixup_module_metadata(module_name: str, namespace: dict[str, Any]) -> None:
    """Make re-exported public names report ``module_name`` as their ``__module__`` (as trio
    does), so tracebacks, docs and pickles show ``trio_raft.Node`` rather than a private path."""
    seen: set[int] = set()

    def fix_one(qualname: str, name: str, obj: object) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        mod = getattr(obj, "__module__", None)
        if mod is not None and mod.startswith("trio_raft."):
            try:
                obj.__module__ = module_name
            except (AttributeError, TypeError):
                return
            if isinstance(obj, type):
                obj.__name__ = name
                obj.__qualname__ = qualname
                for attr_name, attr_value in list(obj.__dict__.items()):
                    fix_one(f"{qualname}.{attr_name}", attr_name, attr_value)

    for name, obj in list(namespace.items()):
        if not name.startswith("_"):
            fix_one(name, name, obj)


@contextmanager
def unwrap_single_exception_group() -> Iterator[None]:
    """Re-raise a nursery's group of exactly one exception as that exception, so users of a
    context manager that owns a nursery see the error they caused, not an ``ExceptionGroup``."""
    try:
        yield
    except BaseExceptionGroup as group:
        inner: BaseException = group
        while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
            inner = inner.exceptions[0]
        if inner is group:
            raise
        raise inner from inner.__cause__


def bind_error(host: str, port: int) -> OSError | None:
    """Why ``port`` on ``host`` cannot be listened on right now, or ``None`` if it can.

    The probe binds with ``SO_REUSEADDR``, as the nodes do, so a port left in ``TIME_WAIT`` by an
    earlier run counts as free; it closes the socket again at once.
    """
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc
    return None


def move_queued(source: trio.MemoryReceiveChannel[T], target: trio.MemorySendChannel[T]) -> int:
    """Move what waits in ``source`` into ``target`` without blocking, in order; what does not
    fit (or finds ``target`` closed) is dropped: a transport handing its queue to a node
    (Raft resends lost messages). ``source`` is left empty. Returns how many were dropped."""
    dropped = 0
    while True:
        try:
            item = source.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return dropped
        try:
            target.send_nowait(item)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            dropped += 1
