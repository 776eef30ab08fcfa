"""Events for embedders: ``async with node.events() as events: async for event in events``.

A node publishes what an application reacts to (its role, the leader, the configuration) into a
bounded buffer per subscriber without ever waiting: a subscriber that falls behind loses events
and is told how many with one :class:`EventsDropped` before the next event it receives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, TypeAlias, final

import attrs
import trio

from ._types import Membership, NodeId, Role, RoleChangeReason

DEFAULT_BUFFER: Final = 256
"""Events a subscriber can fall behind by before it loses some."""


@final
@attrs.frozen
class RoleChanged:
    """This node's role or term changed."""

    term: int
    role: Role
    reason: RoleChangeReason
    """Why (see :class:`RoleChangeReason`)."""


@final
@attrs.frozen
class LeaderChanged:
    """The leader this node knows changed."""

    term: int
    leader_id: NodeId | None
    """The new leader (this node's own id when it leads), or ``None``: no leader known."""


@final
@attrs.frozen
class MembershipChanged:
    """The configuration in force on this node changed, or became committed."""

    membership: Membership | None
    index: int
    """The log index of its entry (see :attr:`Status.membership_index`)."""
    committed: bool


@final
@attrs.frozen
class EventsDropped:
    """The subscriber fell behind: this many events were not delivered before the next one."""

    count: int


Event: TypeAlias = RoleChanged | LeaderChanged | MembershipChanged | EventsDropped
"""What :meth:`Node.events` yields."""


class _Subscriber:
    __slots__ = ("dropped", "send")

    def __init__(self, send: trio.MemorySendChannel[Event]) -> None:
        self.send = send
        self.dropped = 0


class EventHub:
    """The node's subscribers and the one way to reach them (never blocking)."""

    def __init__(self) -> None:
        self._subscribers: list[_Subscriber] = []
        self._closed = False

    def publish(self, event: Event) -> None:
        """Offer ``event`` to every subscriber; a full buffer counts a drop instead."""
        for sub in self._subscribers:
            try:
                if sub.dropped:
                    sub.send.send_nowait(EventsDropped(sub.dropped))
                    sub.dropped = 0
                sub.send.send_nowait(event)
            except trio.WouldBlock:
                sub.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the subscriber is leaving; its context removes it

    def close(self) -> None:
        """The node shut down: every subscriber's iteration ends."""
        self._closed = True
        for sub in self._subscribers:
            sub.send.close()

    @asynccontextmanager
    async def subscribe(
        self, buffer: int = DEFAULT_BUFFER
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Event]]:
        """Events published from now on until the context exits or the node shuts down."""
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise ValueError(f"buffer must be a positive int, not {buffer!r}")
        send, receive = trio.open_memory_channel[Event](buffer)
        sub = _Subscriber(send)
        if self._closed:
            send.close()
        else:
            self._subscribers.append(sub)
        try:
            async with receive:
                yield receive
        finally:
            if sub in self._subscribers:
                self._subscribers.remove(sub)
            send.close()
