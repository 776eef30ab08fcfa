"""A deterministic, seeded in-memory network: :class:`MemoryNetwork` and :class:`MemoryTransport`.

Every node of a simulated cluster gets a :class:`MemoryTransport` from one :class:`MemoryNetwork`.
``send`` never blocks: the network decides each message's fate at once and, if it survives, files
it in a heap ordered by ``(deliver_at, sequence_number)``. One task, :meth:`MemoryNetwork.run`,
sleeps until the earliest delivery time and pushes due messages into the destination's bounded
receive channel.

Determinism: every random draw comes from the :class:`random.Random` given to the constructor and
time only from :func:`trio.current_time` (a :class:`trio.testing.MockClock` in the simulator). The
same seed, fault settings and sequence of calls therefore give the same delivery times and order;
ties in delivery time are broken by the order in which messages entered the heap.

A message's fate, decided when it is sent, in this order:

1. sent through a transport that was detached or replaced: dropped;
2. :attr:`MemoryNetwork.hook` (if set): ``DROP`` drops it, ``HOLD`` parks it in
   :attr:`MemoryNetwork.held` until :meth:`~MemoryNetwork.release` or
   :meth:`~MemoryNetwork.discard`;
3. source and destination on different sides of a partition, or destination not attached: dropped;
4. the link's faults (:class:`LinkFaults`): drop, then duplicate (each copy gets its own delay),
   then a delay uniform in ``[delay_s_min, delay_s_max]`` plus, with probability ``reorder``, an
   extra one uniform in ``[0, reorder_delay_s_max]``;
5. more than ``max_in_flight`` messages already queued: dropped.

At delivery time a message is dropped if its destination is gone or its receive channel is full
or closed. A partition started while a message is in flight does not affect it (it is past the
cut), but detaching its destination does.

With ``wire_codec=True`` every message sent through a transport is first framed by the real
codec (:func:`trio_raft._codec.encode`) and the frame decoded again, as a real transport does.
A message that fails to encode or decode, or comes back different (commands compared in the
codec's canonical form, tuples as lists), raises ``WireCodecError`` (an
:exc:`AssertionError`) in the sender: the simulation stops loudly instead of a real cluster
dropping connections. The message delivered
is the original one.
"""

from __future__ import annotations

import enum
import heapq
import math
import random
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Literal, NoReturn, TypedDict, Unpack, final

import attrs
import trio

from .._codec import FrameError, decode, encode
from .._messages import AppendRequest, Message, SnapshotRequest
from .._types import Membership, NodeId
from .._util import move_queued

__all__ = [
    "EventKind",
    "LinkChanges",
    "LinkFaults",
    "MemoryNetwork",
    "MemoryTransport",
    "MessageStatistics",
    "NetworkStatistics",
    "Verdict",
    "WireCodecError",
]

EventKind = Literal["send", "drop", "deliver", "dup"]
"""What :attr:`MemoryNetwork.on_event` reports: a message sent, dropped, delivered, duplicated."""

_HEADER_BYTES = 40
_ENTRY_BYTES = 16


def _estimate_size(message: Message) -> int:
    size = _HEADER_BYTES
    if isinstance(message, AppendRequest):
        for entry in message.entries:
            size += _ENTRY_BYTES + len(repr(entry.command))
    return size


_WIRE_CLUSTER_ID = "simulated"
_WIRE_MAX_BYTES = 1 << 30  # the simulator checks the format, not the transport's size limit


class WireCodecError(AssertionError):
    """A message sent in a simulation with ``wire_codec=True`` does not survive the real codec.

    Whatever produced it would make a real transport drop the connection it travels on: a bug
    in the sender or in the codec, never a fault of the simulated world.
    """


def _canonical(value: object) -> object:
    """A command as it comes back from the codec: tuples as lists, at any depth (in a
    membership's addresses too)."""
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, Membership):
        return _canonical_membership(value)
    return value


def _canonical_membership(value: Membership) -> Membership:
    addresses = {k: _canonical(v) for k, v in value.addresses.items()}
    return Membership(value.voters, value.learners, value.outgoing, addresses)


def _wire_round_trip(message: Message) -> None:
    """Raise :class:`WireCodecError` unless ``message`` survives encode and decode."""
    try:
        decoded = decode(
            encode(message, cluster_id=_WIRE_CLUSTER_ID),
            cluster_id=_WIRE_CLUSTER_ID,
            max_bytes=_WIRE_MAX_BYTES,
        )
    except FrameError as exc:
        raise WireCodecError(f"{message!r} does not survive the wire codec: {exc}") from exc
    expected: Message = message
    if isinstance(message, AppendRequest) and isinstance(decoded, AppendRequest):
        expected = attrs.evolve(
            message,
            entries=tuple(attrs.evolve(e, command=_canonical(e.command)) for e in message.entries),
        )
    elif isinstance(message, SnapshotRequest):
        expected = attrs.evolve(message, membership=_canonical_membership(message.membership))
    if decoded != expected:
        raise WireCodecError(f"{message!r} comes back from the wire codec as {decoded!r}")


def _probability(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], got {value!r}")


def _delay(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value < math.inf:
        raise ValueError(f"{attribute.name} must be a finite delay >= 0 seconds, got {value!r}")


class Verdict(enum.Enum):
    """What :attr:`MemoryNetwork.hook` decides for a message."""

    DELIVER = "deliver"
    """Carry on: partitions and the link's random faults still apply."""
    DROP = "drop"
    """Drop it now (counted as dropped)."""
    HOLD = "hold"
    """Park it in :attr:`MemoryNetwork.held` until released or discarded."""


@attrs.frozen
class LinkFaults:
    """The faults of one directed link ``src -> dst``. Validated at construction.

    Raises:
        ValueError: A probability outside [0, 1], a negative or infinite delay, or
            ``delay_s_min > delay_s_max``.
    """

    drop: float = attrs.field(default=0.0, validator=_probability)
    """Probability that a message is lost."""
    duplicate: float = attrs.field(default=0.0, validator=_probability)
    """Probability that a surviving message is delivered twice."""
    reorder: float = attrs.field(default=0.0, validator=_probability)
    """Probability that a copy gets an extra delay, letting later messages overtake it."""
    delay_s_min: float = attrs.field(default=0.001, validator=_delay)
    """Lower bound of the uniform one-way delay."""
    delay_s_max: float = attrs.field(default=0.005, validator=_delay)
    """Upper bound of the uniform one-way delay."""
    reorder_delay_s_max: float = attrs.field(default=0.01, validator=_delay)
    """Upper bound of the extra delay of a reordered copy (uniform in ``[0, this]``)."""

    def __attrs_post_init__(self) -> None:
        if self.delay_s_min > self.delay_s_max:
            raise ValueError(
                f"delay_s_min ({self.delay_s_min}) must be <= delay_s_max ({self.delay_s_max})"
            )


class LinkChanges(TypedDict, total=False):
    """The keywords of :meth:`MemoryNetwork.set_link`: fields of :class:`LinkFaults` to change."""

    drop: float
    duplicate: float
    reorder: float
    delay_s_min: float
    delay_s_max: float
    reorder_delay_s_max: float


@attrs.frozen
class MessageStatistics:
    """Counters for one message type (or all of them, see :attr:`NetworkStatistics.total`).

    Once nothing is in flight or held, ``sent + duplicated == delivered + dropped``.
    """

    sent: int = 0
    """Messages handed to the network by ``send`` or :meth:`MemoryNetwork.inject`."""
    delivered: int = 0
    """Copies put into a destination's receive channel."""
    dropped: int = 0
    """Copies lost for any reason (faults, partitions, hook, full queues, detached nodes)."""
    duplicated: int = 0
    """Extra copies created by the ``duplicate`` fault."""
    bytes_sent: int = 0
    """Estimated wire size of the sent messages, duplicates excluded: 40 bytes of header per
    message plus, for each log entry, 16 bytes and ``len(repr(entry.command))``."""


@attrs.define
class _Counts:
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    bytes_sent: int = 0

    def freeze(self) -> MessageStatistics:
        return MessageStatistics(**attrs.asdict(self))


@attrs.frozen
class NetworkStatistics:
    """A snapshot returned by :meth:`MemoryNetwork.stats`; later traffic does not change it."""

    by_type: Mapping[str, MessageStatistics]
    """Counters per message class name (``type(message).__name__``), read-only."""
    in_flight: int
    """Copies waiting in the delivery heap."""
    held: int
    """Messages parked by the hook."""

    @property
    def total(self) -> MessageStatistics:
        """The counters summed over all message types."""
        fields = ("sent", "delivered", "dropped", "duplicated", "bytes_sent")
        return MessageStatistics(
            **{f: sum(getattr(s, f) for s in self.by_type.values()) for f in fields}
        )


@final
class MemoryTransport:
    """One node's attachment to a :class:`MemoryNetwork`; implements :class:`trio_raft.Transport`.

    Create it with :meth:`MemoryNetwork.transport`, not directly. It stays valid until the node
    is detached or re-attached; from then on ``send`` drops everything and the receive channel,
    closed by the network, raises :exc:`trio.EndOfChannel`.
    """

    def __init__(self, network: MemoryNetwork, node_id: NodeId, queue_size: int) -> None:
        self._network = network
        self._node_id = node_id
        self._send_channel, self._receive_channel = trio.open_memory_channel[Message](queue_size)
        self._deliver_to: trio.MemorySendChannel[Message] = self._send_channel
        """Where the network delivers: :attr:`receive_channel`, or the node's inbox."""

    @property
    def node_id(self) -> NodeId:
        """The node this transport belongs to."""
        return self._node_id

    def send(self, message: Message) -> None:
        """Hand ``message`` to the network; never blocks (see the module docstring for its fate).

        Raises:
            ValueError: ``message.src`` is not this transport's node (a transport never forges).
            AssertionError: a ``WireCodecError``: the network runs with ``wire_codec=True``
                and ``message`` does not survive the real codec.
        """
        if message.src != self._node_id:
            raise ValueError(
                f"transport of {self._node_id!r} cannot send a message from {message.src!r}"
            )
        self._network._send(self, message)

    @property
    def receive_channel(self) -> trio.MemoryReceiveChannel[Message]:
        """Messages delivered to this node, bounded by the network's ``queue_size`` (unless
        :meth:`deliver_into` redirected them)."""
        return self._receive_channel

    def deliver_into(self, channel: trio.MemorySendChannel[Message] | None) -> None:
        """Deliver into ``channel`` (the node's inbox) from now on, or into
        :attr:`receive_channel` again with ``None``; see :class:`trio_raft.Transport`. A
        delivery to a full or closed channel is a drop, as to a full receive channel."""
        self._deliver_to = self._send_channel if channel is None else channel
        if channel is not None:
            move_queued(self._receive_channel, channel)


@final
class MemoryNetwork:
    """A simulated network between :class:`MemoryTransport` endpoints, faults decided by ``rng``.

    Start :meth:`run` in a nursery; without it nothing is delivered. All fault controls are sync
    and take effect for messages sent afterwards.

    Args:
        rng: The only source of randomness.
        delay_s_min: Default lower bound of the one-way delay of every link.
        delay_s_max: Default upper bound of the one-way delay of every link.
        queue_size: Capacity of each node's receive channel; a delivery to a full one is dropped.
        max_in_flight: Capacity of the delivery heap, and separately of :attr:`held`; messages
            beyond it are dropped.
        reorder_delay_s_max: Default bound of the extra delay of reordered messages.
        wire_codec: Put every message sent through a transport through the real codec first
            (see the module docstring); ``WireCodecError`` (an :exc:`AssertionError`) if one
            does not survive it.

    Raises:
        ValueError: Invalid delays, ``queue_size < 0`` or ``max_in_flight < 1``.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        delay_s_min: float = 0.001,
        delay_s_max: float = 0.005,
        queue_size: int = 1024,
        max_in_flight: int = 100_000,
        reorder_delay_s_max: float = 0.01,
        wire_codec: bool = False,
    ) -> None:
        if queue_size < 0 or max_in_flight < 1:
            raise ValueError(
                f"need queue_size >= 0 and max_in_flight >= 1, got {queue_size}, {max_in_flight}"
            )
        self._rng = rng
        self.wire_codec = wire_codec
        """Whether messages go through the real codec (see the module docstring)."""
        self._queue_size = queue_size
        self._max_in_flight = max_in_flight
        self._initial_link = LinkFaults(
            delay_s_min=delay_s_min,
            delay_s_max=delay_s_max,
            reorder_delay_s_max=reorder_delay_s_max,
        )
        self._default_link = self._initial_link
        self._links: dict[tuple[NodeId, NodeId], LinkFaults] = {}
        self._groups: dict[NodeId, int] = {}
        self._unlisted_connected = True  # nodes in no group: all together, or each alone
        self._next_group = 0
        self._endpoints: dict[NodeId, MemoryTransport] = {}
        self._heap: list[tuple[float, int, Message]] = []
        self._seq = 0
        self._held: list[Message] = []
        self._counts: dict[str, _Counts] = {}
        self._wakeup: trio.CancelScope | None = None
        self._running = False
        self.hook: Callable[[Message], Verdict] | None = None
        """Consulted for every message sent through a transport (not for :meth:`inject` or
        :meth:`release`), before partitions and random faults; see :class:`Verdict`. It runs
        inside the sender's ``send`` call, so an exception it raises reaches the sender."""
        self.on_event: Callable[[float, EventKind, Message], None] | None = None
        """Called as ``(trio.current_time(), kind, message)`` for each event; None costs nothing."""

    # -- endpoints -------------------------------------------------------------------------------

    def transport(self, node_id: NodeId) -> MemoryTransport:
        """Attach ``node_id`` and return its fresh transport.

        If the node is already attached it is first detached (see :meth:`detach`), so a restarted
        node never sees messages sent to its previous incarnation.
        """
        if node_id in self._endpoints:
            self.detach(node_id)
        endpoint = MemoryTransport(self, node_id, self._queue_size)
        self._endpoints[node_id] = endpoint
        return endpoint

    def detach(self, node_id: NodeId) -> None:
        """Mark ``node_id`` down, as when it crashes. Idempotent.

        Messages queued in its receive channel or in flight to it are dropped, and so are later
        messages to it until it is attached again. Its old transport's ``send`` drops everything
        and its receive channel raises :exc:`trio.EndOfChannel`. To cut a live node off the
        network instead, use :meth:`isolate`.
        """
        endpoint = self._endpoints.pop(node_id, None)
        if endpoint is not None:
            while True:
                try:
                    self._drop(endpoint._receive_channel.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            endpoint._send_channel.close()
        gone = [item for item in self._heap if item[2].dst == node_id]
        if gone:
            self._heap = [item for item in self._heap if item[2].dst != node_id]
            heapq.heapify(self._heap)
            for _, _, message in sorted(gone):  # in delivery order; (time, seq) is unique
                self._drop(message)

    # -- fault controls --------------------------------------------------------------------------

    def link(self, src: NodeId, dst: NodeId) -> LinkFaults:
        """The faults in effect on the directed link ``src -> dst``."""
        return self._links.get((src, dst), self._default_link)

    def set_link(self, src: NodeId, dst: NodeId, **changes: Unpack[LinkChanges]) -> None:
        """Override the faults of the directed link ``src -> dst`` (call twice for both ways).

        Args:
            src: Sending node.
            dst: Receiving node.
            **changes: Any of ``drop``, ``duplicate``, ``reorder``, ``delay_s_min``,
                ``delay_s_max``, ``reorder_delay_s_max`` (see :class:`LinkFaults`); the others
                keep the link's current value.

        Raises:
            ValueError: See :class:`LinkFaults`; nothing changes then.
        """
        self._links[(src, dst)] = attrs.evolve(self.link(src, dst), **changes)

    def set_default_link(self, **changes: Unpack[LinkChanges]) -> None:
        """Like :meth:`set_link`, for every link without an override of its own."""
        self._default_link = attrs.evolve(self._default_link, **changes)

    def partition(self, *groups: Iterable[NodeId]) -> None:
        """Replace any partition by ``groups``: only nodes in the same group can talk.

        Nodes in no group (including nodes attached later) are isolated from everyone.

        Raises:
            ValueError: A node appears in two groups; nothing changes then.
        """
        assignment: dict[NodeId, int] = {}
        for index, group in enumerate(groups):
            for node in group:
                if assignment.setdefault(node, index) != index:
                    raise ValueError(f"node {node!r} is in more than one group")
        self._groups = assignment
        self._next_group = len(groups)
        self._unlisted_connected = False

    def isolate(self, node_id: NodeId) -> None:
        """Cut ``node_id`` off from every other node, on top of any current partition."""
        self._groups[node_id] = self._next_group
        self._next_group += 1

    def heal(self) -> None:
        """Remove every partition and isolation; link faults stay as they are."""
        self._groups = {}
        self._unlisted_connected = True

    def reset_faults(self) -> None:
        """:meth:`heal`, drop every link override and restore the default link given at
        construction (no loss, no duplication, no reordering, the constructor's delays)."""
        self.heal()
        self._links.clear()
        self._default_link = self._initial_link

    def _connected(self, a: NodeId, b: NodeId) -> bool:
        if a == b:
            return True
        unlisted = -1 if self._unlisted_connected else None  # group ids are >= 0
        group_a = self._groups.get(a, unlisted)
        return group_a is not None and group_a == self._groups.get(b, unlisted)

    # -- hook and injection ----------------------------------------------------------------------

    @property
    def held(self) -> tuple[Message, ...]:
        """Messages parked by :attr:`hook`, oldest first (a snapshot)."""
        return tuple(self._held)

    def release(self, match: Message | Callable[[Message], bool] | None = None) -> list[Message]:
        """Send held messages on, with the link's normal delay but no other fault.

        Args:
            match: A message (released if equal) or a predicate; None releases all of them.

        Returns:
            The released messages, in the order they were held (empty if none matched). A released
            message whose destination is not attached is dropped.
        """
        taken = self._take_held(match)
        now = trio.current_time()
        for message in taken:
            link = self.link(message.src, message.dst)
            delay = self._rng.uniform(link.delay_s_min, link.delay_s_max)
            self._schedule(now + delay, message)
        return taken

    def discard(self, match: Message | Callable[[Message], bool] | None = None) -> list[Message]:
        """Drop held messages (counted as dropped); ``match`` as for :meth:`release`."""
        taken = self._take_held(match)
        for message in taken:
            self._drop(message)
        return taken

    def _take_held(self, match: Message | Callable[[Message], bool] | None) -> list[Message]:
        if match is None:
            taken, self._held = self._held, []
            return taken
        predicate = match if callable(match) else (lambda m: m == match)
        taken = [m for m in self._held if predicate(m)]
        self._held = [m for m in self._held if not predicate(m)]
        return taken

    def inject(self, message: Message) -> None:
        """Deliver a hand-made ``message`` to ``message.dst`` on the next turn of :meth:`run`,
        bypassing the hook, partitions and faults. Counted as sent; dropped if ``message.dst`` is
        not attached by then or its queue is full."""
        self._count(message).sent += 1
        self._count(message).bytes_sent += _estimate_size(message)
        self._emit("send", message)
        self._schedule(trio.current_time(), message)

    # -- statistics ------------------------------------------------------------------------------

    def stats(self) -> NetworkStatistics:
        """A frozen snapshot of the counters since construction or :meth:`reset_stats`."""
        by_type = {name: counts.freeze() for name, counts in sorted(self._counts.items())}
        return NetworkStatistics(MappingProxyType(by_type), len(self._heap), len(self._held))

    def reset_stats(self) -> None:
        """Zero every counter (messages in flight or held are unaffected)."""
        self._counts.clear()

    # -- the delivery task -----------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Deliver messages at their delivery time, forever. Start it once per network.

        Due messages are delivered in ``(deliver_at, sequence_number)`` order, each with
        ``send_nowait`` into the destination's channel. Cancelling it stops delivery; messages
        still in flight stay queued and a later ``run`` delivers them.

        Raises:
            RuntimeError: ``run`` is already running.
        """
        if self._running:
            raise RuntimeError("MemoryNetwork.run is already running")
        self._running = True
        task_status.started()
        try:
            while True:
                now = trio.current_time()
                batch_end = self._seq  # messages scheduled while delivering wait a turn
                while self._heap and self._heap[0][0] <= now and self._heap[0][1] < batch_end:
                    self._deliver(heapq.heappop(self._heap)[2])
                deadline = self._heap[0][0] if self._heap else math.inf
                with trio.CancelScope(deadline=deadline) as self._wakeup:
                    await trio.sleep_forever()
        finally:
            self._wakeup = None
            self._running = False

    # -- internals -------------------------------------------------------------------------------

    def _send(self, transport: MemoryTransport, message: Message) -> None:
        if self.wire_codec:
            _wire_round_trip(message)
        counts = self._count(message)
        counts.sent += 1
        counts.bytes_sent += _estimate_size(message)
        self._emit("send", message)
        if self._endpoints.get(message.src) is not transport:
            self._drop(message)
            return
        if self.hook is not None:
            verdict = self.hook(message)
            if verdict is Verdict.DROP:
                self._drop(message)
                return
            if verdict is Verdict.HOLD:
                if len(self._held) >= self._max_in_flight:
                    self._drop(message)
                    return
                self._held.append(message)
                return
        if message.dst not in self._endpoints or not self._connected(message.src, message.dst):
            self._drop(message)
            return
        link = self.link(message.src, message.dst)
        rng = self._rng
        if link.drop and rng.random() < link.drop:
            self._drop(message)
            return
        copies = 1
        if link.duplicate and rng.random() < link.duplicate:
            copies = 2
            counts.duplicated += 1
            self._emit("dup", message)
        now = trio.current_time()
        for _ in range(copies):
            delay = rng.uniform(link.delay_s_min, link.delay_s_max)
            if link.reorder and rng.random() < link.reorder:
                delay += rng.uniform(0.0, link.reorder_delay_s_max)
            self._schedule(now + delay, message)

    def _schedule(self, deliver_at: float, message: Message) -> None:
        if len(self._heap) >= self._max_in_flight:
            self._drop(message)
            return
        heapq.heappush(self._heap, (deliver_at, self._seq, message))
        self._seq += 1
        if self._wakeup is not None and deliver_at < self._wakeup.deadline:
            self._wakeup.deadline = deliver_at

    def _deliver(self, message: Message) -> None:
        endpoint = self._endpoints.get(message.dst)
        if endpoint is None:
            self._drop(message)
            return
        try:
            endpoint._deliver_to.send_nowait(message)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self._drop(message)
            return
        self._count(message).delivered += 1
        self._emit("deliver", message)

    def _drop(self, message: Message) -> None:
        self._count(message).dropped += 1
        self._emit("drop", message)

    def _count(self, message: Message) -> _Counts:
        name = type(message).__name__
        counts = self._counts.get(name)
        if counts is None:
            counts = self._counts[name] = _Counts()
        return counts

    def _emit(self, kind: EventKind, message: Message) -> None:
        if self.on_event is not None:
            self.on_event(trio.current_time(), kind, message)
