"""A whole Raft cluster in one trio run, on virtual time, with every fault under one seed.

The nodes are real :class:`~trio_raft.Node` task trees; only the world around them is
simulated: a :class:`MemoryNetwork` that loses, duplicates, delays, reorders and partitions
messages, :class:`SimulatedStorage` that loses unsynced writes on a crash, and trio's
:class:`~trio.testing.MockClock`. Every random choice (election jitter, network faults, sync
latency, trio's own scheduling order) derives from the seed, so a seed replays a run exactly.
"""

from __future__ import annotations

import functools
import random
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import final

import attrs
import trio

from .._abc import StateMachine
from .._config import Config
from .._errors import NodeCrashedError, NoSpaceError, NotLeaderError
from .._messages import Message
from .._node import Node, _open_node
from .._types import Membership, NodeId, Role, StoredState
from .._util import unwrap_single_exception_group
from ._determinism import seed_scheduler
from ._invariants import InvariantChecker, unbounded_logs
from ._kv import KVStateMachine
from ._network import MemoryNetwork, Verdict
from ._storage import SimulatedStorage

DEFAULT_SIM_CONFIG = Config()
"""The simulator runs the library's LAN defaults unless told otherwise."""


@final
class SimulatedCluster:
    """Handle on a running simulated cluster; see :func:`open_simulated_cluster`."""

    def __init__(
        self,
        node_ids: Sequence[NodeId],
        *,
        seed: int,
        nursery: trio.Nursery,
        network: MemoryNetwork,
        config: Config,
        state_machine_factory: Callable[[], StateMachine],
        initial_state: Mapping[NodeId, StoredState],
        sync_s_max: float,
    ) -> None:
        self.seed = seed
        """The seed every random choice of this run derives from."""
        self.node_ids: tuple[NodeId, ...] = tuple(node_ids)
        """Every node's id, running or not: the initial ones, then those of :meth:`add_node` in
        the order they were added (:meth:`remove_node` drops one)."""
        self.initial_ids: tuple[NodeId, ...] = self.node_ids
        """The ids the cluster was opened with: the bootstrap configuration those nodes start
        with, on every (re)start."""
        self.network = network
        """The simulated network: faults, hooks and statistics (see :class:`MemoryNetwork`)."""
        self.config = config
        """The configuration every node runs with."""
        self.checker = InvariantChecker(seed)
        """The live safety checker; its trace is in every :class:`InvariantViolation`."""
        self._sync_s_max = sync_s_max
        self.storages = {
            nid: SimulatedStorage(
                random.Random(f"{seed}/storage/{nid}"),
                sync_s_max=sync_s_max,
                initial=initial_state.get(nid),
            )
            for nid in self.node_ids
        }
        """Each node's simulated disk; it outlives crashes (``durable_state()`` is what a
        restart loads). Every sync reports its writes to :attr:`checker`."""
        for nid, storage in self.storages.items():
            storage.on_durable = functools.partial(self.checker.durable_write, nid)
        self.state_machines: dict[NodeId, StateMachine] = {}
        """The state machine of each running node (a fresh one per incarnation)."""
        self._factory = state_machine_factory
        self._nursery = nursery
        self._nodes: dict[NodeId, Node] = {}
        self._scopes: dict[NodeId, trio.CancelScope] = {}
        self._stopped: dict[NodeId, trio.Event] = {}
        self._stop_requests: dict[NodeId, trio.Event] = {}
        self._incarnation: dict[NodeId, int] = dict.fromkeys(self.node_ids, 0)
        # How each node added later (re)starts: ``None`` is join mode; a configuration is the
        # bootstrap of its first start only (see add_node).
        self._added: dict[NodeId, Membership | None] = {}
        self._generation: dict[NodeId, int] = dict.fromkeys(self.node_ids, 0)
        network.on_event = self._on_network_event

    # -- nodes -------------------------------------------------------------------------------

    @property
    def nodes(self) -> Mapping[NodeId, Node]:
        """The running nodes by id (crashed ones are absent)."""
        return self._nodes

    def node(self, node_id: NodeId) -> Node:
        """The running node ``node_id``.

        Raises:
            KeyError: it is crashed or unknown.
        """
        return self._nodes[node_id]

    async def start(self, node_id: NodeId) -> Node:
        """Start (or restart) ``node_id`` from whatever its storage has synced.

        A node that later stops on an internal error (:class:`~trio_raft.NodeCrashedError`)
        ends the whole simulation with an :class:`InvariantViolation` ("Fail-stop") that names
        the seed, with the original exception as its cause.
        """
        if node_id in self._nodes:
            raise RuntimeError(f"{node_id} is already running; crash it first")
        node: Node = await self._nursery.start(self._run_node, node_id)
        return node

    async def _run_node(
        self, node_id: NodeId, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._incarnation[node_id] += 1
        incarnation = self._incarnation[node_id]
        stopped = self._stopped[node_id] = trio.Event()
        stop = self._stop_requests[node_id] = trio.Event()
        members: Membership | Sequence[NodeId] | None
        if node_id in self._added:
            members = self._added[node_id]
            self._added[node_id] = None  # a node added later restarts in join mode
        else:
            members = self.initial_ids
        # The seed of a reused id's node differs from its predecessor's (same runs otherwise).
        generation = self._generation[node_id]
        rng_key = f"{self.seed}/{node_id}/{incarnation}"
        if generation:
            rng_key = f"{self.seed}/{node_id}#{generation}/{incarnation}"
        state_machine = self._factory()
        self.checker.node_started(node_id, stored=self.storages[node_id].durable_state())
        try:
            with trio.CancelScope() as self._scopes[node_id]:
                async with _open_node(
                    node_id, members, state_machine=state_machine,
                    transport=self.network.transport(node_id), storage=self.storages[node_id],
                    config=self.config, rng=random.Random(rng_key),
                    observer=self.checker.observe,
                ) as node:  # fmt: skip
                    self._nodes[node_id] = node
                    self.state_machines[node_id] = state_machine
                    task_status.started(node)
                    await stop.wait()
        except NodeCrashedError as exc:
            # Fail loudly, with the seed and the trace: a real node would have stopped here.
            raise self.checker.fail(
                "Fail-stop", f"{node_id} crashed on an internal error: {exc}"
            ) from exc
        finally:
            self._nodes.pop(node_id, None)
            self.state_machines.pop(node_id, None)
            stopped.set()

    async def crash(self, node_id: NodeId) -> None:
        """Kill ``node_id`` at once, as a power cut would: unsynced writes are lost, messages to
        it are dropped until it restarts. Waits until every task of the node has stopped."""
        if node_id not in self._nodes:
            return
        self.checker.record(node_id, "crash")
        self._scopes[node_id].cancel()
        await self._stopped[node_id].wait()
        self.storages[node_id].crash()
        self.network.detach(node_id)

    async def restart(self, node_id: NodeId) -> Node:
        """Crash ``node_id`` if it is running, then start it again from its synced storage."""
        await self.crash(node_id)
        return await self.start(node_id)

    async def stop(self, node_id: NodeId) -> None:
        """Shut ``node_id`` down gracefully, as an operator would: leave its ``async with``
        block, so the node runs its own shutdown (a leader hands over first, see
        :doc:`membership`), then detach it from the network. Unlike :meth:`crash`, the node
        finishes what it does on the way out; its storage then keeps what it synced, as after
        a crash. Waits until every task of the node has stopped; a node not running is left
        alone. Start it again with :meth:`start`."""
        if node_id not in self._nodes:
            return
        self.checker.record(node_id, "stop")
        self._stop_requests[node_id].set()
        await self._stopped[node_id].wait()
        self.storages[node_id].crash()
        self.network.detach(node_id)

    async def add_node(self, node_id: NodeId, *, join: bool = True) -> Node:
        """Start a new node ``node_id`` with fresh storage and return it.

        The node is not a member of anything yet: add it through the leader (see
        :doc:`membership`) and it receives the log, or a snapshot, from there. It appends
        ``node_id`` to :attr:`node_ids` and restarts, after a crash, always in join mode.

        Args:
            node_id: Its id: one this cluster does not know (or one :meth:`remove_node`
                forgot, for a fresh node reusing it).
            join: Start in join mode (``members=None``: it never campaigns until a
                configuration reaches it). ``False`` starts it with :attr:`members` as its
                bootstrap configuration instead, which must already list it (add it as a
                learner first), as an operator starting a node with the current member list
                would; only its first start does.

        Raises:
            ValueError: ``node_id`` is known, or ``join`` is false and :attr:`members` does not
                list it.
        """
        if node_id in self.node_ids:
            raise ValueError(f"{node_id} is already a node of this cluster; pick a new id")
        bootstrap: Membership | None = None
        if not join:
            bootstrap = self.members
            if bootstrap is None or node_id not in bootstrap.members:
                raise ValueError(
                    f"{node_id} is not in the committed configuration {bootstrap!r}; add it as a "
                    "learner first, or start it in join mode (join=True)"
                )
        generation = self._generation.get(node_id, -1) + 1
        self._generation[node_id] = generation
        self._incarnation[node_id] = 0
        storage = self.storages[node_id] = SimulatedStorage(
            random.Random(f"{self.seed}/storage/{node_id}#{generation}"),
            sync_s_max=self._sync_s_max,
        )
        storage.on_durable = functools.partial(self.checker.durable_write, node_id)
        self._added[node_id] = bootstrap
        self.node_ids = (*self.node_ids, node_id)
        self.checker.record(node_id, "added", "join" if join else bootstrap)
        return await self.start(node_id)

    async def remove_node(self, node_id: NodeId) -> None:
        """Crash ``node_id`` and forget it: its storage is gone and its id leaves
        :attr:`node_ids` (:meth:`add_node` may reuse it for a fresh node). This changes no
        configuration; remove it through the leader for that."""
        if node_id not in self.node_ids:
            raise ValueError(f"{node_id} is not a node of this cluster")
        await self.crash(node_id)
        self.checker.node_removed(node_id)
        self.node_ids = tuple(n for n in self.node_ids if n != node_id)
        del self.storages[node_id]
        self._added.pop(node_id, None)

    # -- network faults ------------------------------------------------------------------------

    def partition(self, *groups: Iterable[NodeId]) -> None:
        """Split the network: nodes talk only within their group.

        See :meth:`MemoryNetwork.partition`.
        """
        groups = tuple(tuple(g) for g in groups)
        self.checker.record("net", "partition", groups)
        self.network.partition(*groups)

    def isolate(self, node_id: NodeId) -> None:
        """Cut ``node_id`` off from every other node."""
        self.checker.record("net", "isolate", node_id)
        self.network.isolate(node_id)

    def heal(self) -> None:
        """Remove every partition (link fault probabilities stay)."""
        self.checker.record("net", "heal")
        self.network.heal()

    def _on_network_event(self, now: float, kind: str, message: Message) -> None:
        # Kept as the message itself: formatting happens only if a trace is ever printed.
        self.checker.trace.append((now, "net", kind, message))

    # -- observation ---------------------------------------------------------------------------

    def leader(self) -> Node | None:
        """The running leader of the highest term, or ``None`` if no running node leads."""
        leaders = [n for n in self._nodes.values() if n.status.role is Role.LEADER]
        return max(leaders, key=lambda n: n.status.term, default=None)

    @property
    def members(self) -> Membership | None:
        """The committed configuration of :meth:`leader` (the last configuration at or before
        its commit index), or ``None`` if no running node leads."""
        leader = self.leader()
        if leader is None:
            return None
        st = leader._state
        return st.membership_at(st.commit)

    def _converging(self) -> list[Node]:
        """The running nodes expected to converge: members of :attr:`members` (all running
        nodes when the configuration is unknown). Removed bystanders and nodes waiting to join
        never catch up, by design."""
        members = self.members
        if members is None:
            return list(self._nodes.values())
        return [n for nid, n in self._nodes.items() if nid in members.members]

    async def wait_leader(
        self, *, among: Iterable[NodeId] | None = None, poll_s: float = 0.01
    ) -> Node:
        """Wait (in virtual time) until one of ``among`` (default: any running node) leads and
        return it. Bound the wait with :func:`trio.fail_after` in the caller."""
        allowed = set(among) if among is not None else None
        while True:
            leader = self.leader()
            if leader is not None and (allowed is None or leader.id in allowed):
                return leader
            await trio.sleep(poll_s)

    async def propose(self, command: object, *, retry_s: float = 0.05) -> object:
        """Propose ``command`` through whichever node leads, retrying while there is no leader
        or the leader's disk-space alarm is raised (only on :class:`~trio_raft.NotLeaderError`
        and :class:`~trio_raft.NoSpaceError`, which guarantee nothing was appended). Bound it
        with :func:`trio.fail_after`."""
        while True:
            leader = self.leader()
            if leader is not None:
                try:
                    return await leader.propose(command)
                except (NotLeaderError, NoSpaceError):
                    pass
            await trio.sleep(retry_s)

    async def wait_converged(self, *, poll_s: float = 0.01) -> None:
        """Wait until a leader has committed its whole log and every running member of its
        committed configuration (:attr:`members`) has applied exactly that much (so nothing is
        still in flight). Running nodes outside it (removed bystanders, nodes not yet added)
        are not waited for. Bound it with :func:`trio.fail_after`."""
        while True:
            leader = self.leader()
            if leader is not None:
                top = leader.status.last_log_index
                statuses = [n.status for n in self._converging()]
                if all(s.last_applied == top and s.commit_index == top for s in statuses):
                    return
            await trio.sleep(poll_s)

    async def wait_membership_settled(self, *, poll_s: float = 0.01) -> None:
        """Wait until a leader's committed configuration (:attr:`members`) is not joint and is
        the configuration in force on every running member of it (a change in progress has
        finished, and every member knows). Bound it with :func:`trio.fail_after`."""
        while True:
            members = self.members
            if (
                members is not None
                and not members.is_joint
                and all(n.membership == members for n in self._converging())
            ):
                return
            await trio.sleep(poll_s)

    async def wait_logs_bounded(
        self, *, timeout_s: float | None = None, poll_s: float = 0.05
    ) -> None:
        """Liveness check for a healed, settled cluster: wait until every running member's
        (see :meth:`wait_converged`) un-compacted log is within
        ``snapshot_entries + snapshot_keep_entries`` (plus the entries it has not applied yet).

        Args:
            timeout_s: How long (virtual time) the nodes get to take and install their
                snapshots; by default ten maximum election timeouts (an abandoned snapshot
                download is dropped after four).
            poll_s: How often to look.

        Raises:
            InvariantViolation: some node's log stayed over the bound (names the seed).
        """
        if timeout_s is None:
            timeout_s = 10 * self.config.election_timeout_s_max
        deadline = trio.current_time() + timeout_s
        while True:
            problems = unbounded_logs(self._converging())
            if not problems:
                return
            if trio.current_time() >= deadline:
                raise self.checker.fail("Bounded log", "; ".join(problems))
            await trio.sleep(poll_s)

    async def deliver(self, message: Message, *, settle_s: float = 0.01) -> list[Message]:
        """Hand ``message`` to ``message.dst`` and return what it sends back to ``message.src``.

        Messages from the receiver to the sender are captured (and not delivered) until every
        task is blocked, plus ``settle_s`` of virtual time (a reply that depends on a term, vote
        or log change waits for a storage sync first). Any other traffic flows as usual.
        """
        replies: list[Message] = []
        previous_hook = self.network.hook

        def capture(m: Message) -> Verdict:
            if m.src == message.dst and m.dst == message.src:
                replies.append(m)
                return Verdict.DROP
            return previous_hook(m) if previous_hook is not None else Verdict.DELIVER

        self.network.hook = capture
        try:
            self.network.inject(message)
            await trio.testing.wait_all_tasks_blocked()
            if settle_s:
                await trio.sleep(settle_s)
                await trio.testing.wait_all_tasks_blocked()
        finally:
            self.network.hook = previous_hook
        return replies


def _node_ids(nodes: int | Sequence[NodeId]) -> tuple[NodeId, ...]:
    if isinstance(nodes, int):
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, got {nodes}")
        return tuple(f"n{i}" for i in range(1, nodes + 1))
    ids = tuple(nodes)
    if not ids or len(set(ids)) != len(ids):
        raise ValueError(f"node ids must be non-empty and distinct, got {ids!r}")
    return ids


@asynccontextmanager
async def open_simulated_cluster(
    nodes: int | Sequence[NodeId] = 3,
    *,
    seed: int,
    state_machine_factory: Callable[[], StateMachine] = KVStateMachine,
    config: Config | None = None,
    pre_vote: bool | None = None,
    check_quorum: bool | None = None,
    initial_state: Mapping[NodeId, StoredState] | None = None,
    start: bool = True,
    sync_s_max: float = 0.001,
    delay_s_min: float = 0.001,
    delay_s_max: float = 0.005,
    wire_codec: bool = False,
) -> AsyncIterator[SimulatedCluster]:
    """Run a simulated cluster for the duration of the ``async with`` block.

    Call it inside a trio run whose clock is a :class:`~trio.testing.MockClock` with
    ``autojump_threshold=0`` (pytest-trio's ``autojump_clock`` fixture), so that virtual time
    jumps whenever every task waits: a minute of cluster time then takes well under a second.

    Args:
        nodes: How many nodes (named ``n1``, ``n2``, ...), or their ids.
        seed: Everything random in the run derives from it; the same seed replays the run.
        state_machine_factory: Builds a fresh state machine for every node incarnation.
        config: Node configuration (the library defaults if omitted).
        pre_vote: Override ``config.pre_vote`` (``False`` tests the paper's plain algorithm).
        check_quorum: Override ``config.check_quorum``.
        initial_state: Durable state some nodes start from (a term, vote and log), for scenarios.
        start: Start every node at once (otherwise call :meth:`SimulatedCluster.start`).
        sync_s_max: Upper bound of the virtual time one storage sync takes.
        delay_s_min: Lower bound of a message's network delay.
        delay_s_max: Upper bound of a message's network delay (before reordering faults).
        wire_codec: Put every message through the real codec (see :class:`MemoryNetwork`).
    """
    ids = _node_ids(nodes)
    cfg = config or DEFAULT_SIM_CONFIG
    overrides: dict[str, bool] = {}
    if pre_vote is not None:
        overrides["pre_vote"] = pre_vote
    if check_quorum is not None:
        overrides["check_quorum"] = check_quorum
    cfg = attrs.evolve(cfg, **overrides)
    seed_scheduler(seed)
    network = MemoryNetwork(
        random.Random(f"{seed}/network"), delay_s_min=delay_s_min, delay_s_max=delay_s_max,
        wire_codec=wire_codec,
    )  # fmt: skip
    with unwrap_single_exception_group():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(network.run, name="trio_raft.testing network")
            cluster = SimulatedCluster(
                ids, seed=seed, nursery=nursery, network=network, config=cfg,
                state_machine_factory=state_machine_factory, initial_state=initial_state or {},
                sync_s_max=sync_s_max,
            )  # fmt: skip
            if start:
                for nid in ids:
                    await cluster.start(nid)
            try:
                yield cluster
            finally:
                nursery.cancel_scope.cancel()
