"""Workloads for the simulator: KV clients that record a history, and fault injection.

:func:`run_chaos` is the whole recipe of the randomized tests: a cluster under a seeded nemesis
(partitions, crashes, restarts) on a lossy, duplicating, reordering network, concurrent KV
clients recording a :class:`History`, a final healing phase in which the cluster must converge,
and a linearizability check of everything the clients saw.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import attrs
import trio

from .._config import Config
from .._errors import LeadershipLostError, NodeClosedError, NotLeaderError, ProposalDroppedError
from .._types import NodeId
from ._cluster import SimulatedCluster, open_simulated_cluster
from ._history import History
from ._linearizability import LinearizabilityResult, check_linearizable


@attrs.frozen
class Fault:
    """One step of a fault schedule: wait ``after_s`` of virtual time, then do ``action``.

    Actions: ``"partition"`` (``nodes`` is one side, the rest the other), ``"isolate"``,
    ``"heal"``, ``"crash"``, ``"restart"`` (of ``nodes``), ``"restart_all"``, and the disk
    space of ``nodes``: ``"disk_low"`` (below the reserve: the disk-space alarm),
    ``"disk_full"`` (every append refused) and ``"disk_ok"`` (see
    :meth:`SimulatedStorage.set_disk_space <trio_raft.testing.SimulatedStorage.set_disk_space>`).
    """

    after_s: float
    """Virtual seconds to wait before acting."""
    action: str
    """One of `ACTIONS`."""
    nodes: tuple[NodeId, ...] = ()
    """The nodes acted on (the first side, for a partition)."""


ACTIONS = (
    "partition",
    "isolate",
    "heal",
    "crash",
    "restart",
    "restart_all",
    "disk_low",
    "disk_full",
    "disk_ok",
)


async def apply_fault(cluster: SimulatedCluster, fault: Fault) -> None:
    """Carry out one :class:`Fault` (after its delay)."""
    await trio.sleep(fault.after_s)
    ids = cluster.node_ids
    if fault.action == "partition":
        side = set(fault.nodes)
        cluster.partition([n for n in ids if n in side], [n for n in ids if n not in side])
    elif fault.action == "isolate":
        for n in fault.nodes:
            cluster.isolate(n)
    elif fault.action == "heal":
        cluster.heal()
    elif fault.action == "crash":
        for n in fault.nodes:
            await cluster.crash(n)
    elif fault.action == "restart":
        for n in fault.nodes:
            await cluster.restart(n)
    elif fault.action == "restart_all":
        for n in ids:
            if n not in cluster.nodes:
                await cluster.start(n)
    elif fault.action == "disk_low":
        for n in fault.nodes:
            cluster.storages[n].set_disk_space("low")
    elif fault.action == "disk_full":
        for n in fault.nodes:
            cluster.storages[n].set_disk_space("full")
    elif fault.action == "disk_ok":
        for n in fault.nodes:
            cluster.storages[n].set_disk_space("ok")
    else:
        raise ValueError(f"unknown fault action {fault.action!r}; expected one of {ACTIONS}")


def random_schedule(
    rng: random.Random, node_ids: Sequence[NodeId], duration_s: float
) -> list[Fault]:
    """A random fault schedule over ``duration_s`` (a seeded nemesis)."""
    schedule: list[Fault] = []
    t = 0.0
    while True:
        gap = rng.uniform(0.2, 4.0)
        t += gap
        if t >= duration_s:
            return schedule
        action = rng.choices(ACTIONS, weights=(3, 2, 3, 2, 2, 2, 1, 1, 2))[0]
        k = rng.randint(1, max(1, (len(node_ids) - 1) // 2 + 1))
        nodes = tuple(sorted(rng.sample(list(node_ids), k)))
        schedule.append(Fault(gap, action, nodes))


@attrs.define
class KVClients:
    """Concurrent KV clients that drive a cluster and record what they see in :attr:`history`."""

    cluster: SimulatedCluster
    """The cluster to drive."""
    rng: random.Random
    """Source of every client's choices."""
    keys: Sequence[str] = ("a", "b", "c", "d", "e")
    """The keys the clients touch (few keys, many conflicts)."""
    op_timeout_s: float = 1.0
    """A client gives up on an operation after this long (outcome unknown for writes)."""
    think_s_max: float = 0.2
    """Clients pause a random time up to this between operations."""
    history: History = attrs.Factory(History)
    """Everything the clients saw."""
    acknowledged: int = 0
    """Writes that returned a result."""

    async def run(self, clients: int, duration_s: float) -> None:
        """Run ``clients`` clients for ``duration_s`` of virtual time."""
        end = trio.current_time() + duration_s
        async with trio.open_nursery() as nursery:
            for cid in range(clients):
                nursery.start_soon(self._client, cid, end, random.Random(self.rng.random()))

    async def _client(self, cid: int, end: float, rng: random.Random) -> None:
        hint: NodeId | None = None
        n = 0
        while trio.current_time() < end:
            n += 1
            key = rng.choice(self.keys)
            op = _random_op(rng, key, f"{cid}.{n}")
            hint = await self.perform(cid, op, hint, rng)
            await trio.sleep(rng.uniform(0, self.think_s_max))

    async def perform(
        self, cid: int, op: tuple[object, ...], hint: NodeId | None, rng: random.Random
    ) -> NodeId | None:
        """Run one operation on a node (the hinted leader if it runs) and record it; returns
        the next leader hint."""
        running = sorted(self.cluster.nodes)
        if not running:
            await trio.sleep(0.05)
            return hint
        target = hint if hint is not None and hint in self.cluster.nodes else rng.choice(running)
        node = self.cluster.nodes[target]
        handle = self.history.invoke(cid, op, trio.current_time())
        is_read = op[0] == "get"
        with trio.move_on_after(self.op_timeout_s):
            try:
                if is_read:
                    result = await node.read(op)
                else:
                    result = await node.propose(op, frees_space=op[0] == "delete")
            except NotLeaderError as exc:
                self.history.fail(handle)
                return exc.leader_id if exc.leader_id != target else None
            except (ProposalDroppedError, NodeClosedError):
                self.history.fail(handle)  # definitely not applied
                return None
            except LeadershipLostError:
                self.history.unknown(handle)
                return None
            self.history.complete(handle, result, trio.current_time())
            if not is_read:
                self.acknowledged += 1
            return target
        # Timed out: a read had no effect; a write may still take effect.
        if is_read:
            self.history.fail(handle)
        else:
            self.history.unknown(handle)
        return None


def _random_op(rng: random.Random, key: str, unique: str) -> tuple[object, ...]:
    kind = rng.choices(("get", "put", "append", "cas", "delete"), weights=(4, 3, 2, 1, 1))[0]
    if kind == "get":
        return ("get", key)
    if kind == "delete":
        return ("delete", key)
    if kind == "put":
        return ("put", key, unique)
    if kind == "append":
        return ("append", key, f"[{unique}]")
    return ("cas", key, None if rng.random() < 0.3 else f"{rng.randint(0, 3)}", unique)


CHAOS_CONFIG = Config(snapshot_entries=40, snapshot_keep_entries=10, snapshot_chunk_bytes=256)
"""The chaos runs' node settings: tiny snapshot thresholds, so that snapshots, compaction and
InstallSnapshot (in several chunks) happen all the time."""


def _state_of(sm: object) -> object:
    as_dict = getattr(sm, "as_dict", None)
    return as_dict() if as_dict is not None else None


@attrs.frozen
class ChaosReport:
    """What :func:`run_chaos` observed."""

    seed: int
    """The seed that replays this run."""
    operations: int
    """Operations in the checked history (failed ones excluded)."""
    acknowledged_writes: int
    """Writes that returned a result to a client."""
    linearizability: LinearizabilityResult
    """The checker's verdict on the history."""
    events: int
    """Node events the invariant checker saw."""
    digest: str
    """Hash of every node event: two runs of one seed must agree on it."""
    messages: int
    """Messages the network carried."""


async def run_chaos(
    seed: int,
    *,
    nodes: int = 5,
    duration_s: float = 60.0,
    clients: int = 3,
    loss: float = 0.1,
    duplicate: float = 0.05,
    reorder: float = 0.1,
    schedule: Sequence[Fault] | None = None,
    converge_s: float = 30.0,
    config: Config | None = None,
    wire_codec: bool = False,
) -> ChaosReport:
    """Run one randomized chaos simulation and check it. Call under a MockClock (autojump).

    With ``wire_codec`` every message goes through the real codec (see :class:`MemoryNetwork`).

    Raises:
        InvariantViolation: a safety property broke (the message has the seed and a trace).
        AssertionError: the healed cluster did not converge within ``converge_s`` or the
            history is not linearizable (the message has the seed and the offending history).
    """
    master = random.Random(seed)
    async with open_simulated_cluster(
        nodes, seed=seed, config=config or CHAOS_CONFIG, wire_codec=wire_codec
    ) as cluster:
        cluster.network.set_default_link(drop=loss, duplicate=duplicate, reorder=reorder)
        faults = (
            list(schedule)
            if schedule is not None
            else random_schedule(random.Random(master.random()), cluster.node_ids, duration_s)
        )
        workload = KVClients(cluster, random.Random(master.random()))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(workload.run, clients, duration_s)
            for fault in faults:
                await apply_fault(cluster, fault)
        # Liveness phase: a healed, fully running cluster must elect and converge.
        cluster.network.reset_faults()
        await apply_fault(cluster, Fault(0.0, "disk_ok", cluster.node_ids))
        await apply_fault(cluster, Fault(0.0, "restart_all"))
        with trio.move_on_after(converge_s) as scope:
            while True:  # without PreVote, healed nodes may still force an election or two
                leader = await cluster.wait_leader()
                try:
                    await leader.propose(("get", "__barrier__"))
                    break
                except (NotLeaderError, LeadershipLostError, ProposalDroppedError):
                    await trio.sleep(0.05)
            await cluster.wait_membership_settled()
            await cluster.wait_converged()
        if scope.cancelled_caught:
            raise AssertionError(
                f"seed={seed}: the healed cluster did not converge (or settle its membership) "
                f"within {converge_s}s\n"
                + "\n".join(str(n.status) for n in cluster.nodes.values())
                + "\n"
                + cluster.checker.format_trace()
            )
        await cluster.wait_logs_bounded()  # no node may have stopped compacting
        # Only members of the committed configuration converge; removed bystanders never do.
        members = cluster.members
        states = {
            nid: _state_of(sm)
            for nid, sm in cluster.state_machines.items()
            if members is None or nid in members.members
        }
        if any(s != next(iter(states.values())) for s in states.values()):
            raise AssertionError(f"seed={seed}: replicas differ after converging: {states}")
        for key in workload.keys:  # final reads: every acknowledged write must be visible
            await workload.perform(clients, ("get", key), leader.id, master)
        ops = workload.history.operations()
        result = check_linearizable(ops)
        if result.ok is False:
            raise AssertionError(f"seed={seed}: history not linearizable\n{result.explanation}")
        stats = cluster.network.stats()
        return ChaosReport(
            seed=seed, operations=len(ops), acknowledged_writes=workload.acknowledged,
            linearizability=result, events=cluster.checker.events, digest=cluster.checker.digest,
            messages=stats.total.sent,
        )  # fmt: skip
