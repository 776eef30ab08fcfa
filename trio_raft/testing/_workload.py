"""Workloads for the simulator: KV clients that record a history, and fault injection.

:func:`run_chaos` is the whole recipe of the randomized tests: a cluster under a seeded nemesis
(partitions, crashes, restarts) on a lossy, duplicating, reordering network, concurrent KV
clients recording a :class:`History`, a final healing phase in which the cluster must converge,
and a linearizability check of everything the clients saw.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterator, Mapping, Sequence

import attrs
import trio

from .._config import Config
from .._errors import (
    LeadershipLostError,
    LeadershipTransferError,
    MembershipError,
    NodeClosedError,
    NotLeaderError,
    ProposalDroppedError,
)
from .._node import Node
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
    Ids the cluster does not know (yet) are skipped.

    The membership actions (`MEMBERSHIP_ACTIONS`, see :func:`run_chaos`) act through the
    current leader's :class:`~trio_raft.Node` API: ``"add_learner"`` (start ``nodes[0]``, a
    fresh node, in join mode if the cluster does not know it, and add it as a learner),
    ``"promote"``, ``"demote"``, ``"remove"`` (of ``nodes[0]``), ``"replace"`` (add fresh
    ``nodes[0]`` as a learner, promote it, remove ``nodes[1]``) and ``"transfer"`` (to
    ``nodes[0]``, or to whichever voter the leader picks if ``nodes`` is empty). A missing id
    is drawn at random when the action runs (a fresh id for a new node).
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
"""The fault actions of the classic nemesis."""

MEMBERSHIP_ACTIONS = ("add_learner", "promote", "demote", "remove", "replace", "transfer")
"""The membership nemesis's actions (``run_chaos(membership=True)``)."""


async def apply_fault(cluster: SimulatedCluster, fault: Fault) -> None:
    """Carry out one :class:`Fault` (after its delay)."""
    await trio.sleep(fault.after_s)
    ids = cluster.node_ids
    if fault.action in MEMBERSHIP_ACTIONS:
        raise ValueError(
            f"{fault.action!r} is a membership action: run it with run_chaos(membership=True)"
        )
    if fault.action not in ("partition", "heal", "restart_all"):
        fault = attrs.evolve(fault, nodes=tuple(n for n in fault.nodes if n in ids))
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
    rng: random.Random,
    node_ids: Sequence[NodeId],
    duration_s: float,
    *,
    membership: bool = False,
) -> list[Fault]:
    """A random fault schedule over ``duration_s`` (a seeded nemesis).

    With ``membership``, about a third of the actions are `MEMBERSHIP_ACTIONS`: nodes added
    get fresh ids (``n6``, ``n7``, ... after ``n5``), and the faults after an addition may act
    on them too. The other membership actions leave ``nodes`` empty: their node is drawn when
    they run, among the configuration in force then.
    """
    schedule: list[Fault] = []
    pool = list(node_ids)
    fresh = _fresh_ids(node_ids)
    t = 0.0
    while True:
        gap = rng.uniform(0.2, 4.0)
        t += gap
        if t >= duration_s:
            return schedule
        if membership and rng.random() < 1 / 3:
            action = rng.choices(MEMBERSHIP_ACTIONS, weights=(3, 3, 1, 2, 2, 3))[0]
            nodes: tuple[NodeId, ...] = ()
            if action in ("add_learner", "replace"):
                nodes = (next(fresh),)
                pool.append(nodes[0])
            schedule.append(Fault(gap, action, nodes))
            continue
        action = rng.choices(ACTIONS, weights=(3, 2, 3, 2, 2, 2, 1, 1, 2))[0]
        k = rng.randint(1, max(1, (len(pool) - 1) // 2 + 1))
        nodes = tuple(sorted(rng.sample(pool, k)))
        schedule.append(Fault(gap, action, nodes))


def _fresh_ids(node_ids: Sequence[NodeId]) -> Iterator[NodeId]:
    """``n{k}`` for k after the highest ``n<number>`` in ``node_ids``, skipping known ids."""
    numbers = [int(n[1:]) for n in node_ids if n.startswith("n") and n[1:].isdigit()]
    k = max(numbers, default=0)
    while True:
        k += 1
        if f"n{k}" not in node_ids:
            yield f"n{k}"


@attrs.define
class MembershipNemesis:
    """Runs the membership actions of a schedule (see :class:`Fault`) through the current
    leader's :class:`~trio_raft.Node` API and counts their outcomes in :attr:`outcomes`.

    Every typed refusal is an expected outcome: :exc:`~trio_raft.NotLeaderError`, every
    :exc:`~trio_raft.MembershipError`, :exc:`~trio_raft.LeadershipLostError`,
    :exc:`~trio_raft.LeadershipTransferError` and :exc:`~trio_raft.NodeClosedError` (the
    leader crashed meanwhile). Anything else propagates and fails the run.
    """

    cluster: SimulatedCluster
    """The cluster acted on."""
    rng: random.Random
    """Draws the nodes that a fault leaves open."""
    timeout_s: float = 10.0
    """Each call is given up (``trio.move_on_after``) after this long: outcome ``timeout``."""
    catch_up_timeout_s: float = 5.0
    """Passed to ``promote``."""
    outcomes: dict[str, int] = attrs.Factory(dict)
    """``"action:outcome"`` → count; the outcome is ``ok``, ``no_leader``, ``timeout`` or the
    exception's class name."""
    _fresh: Iterator[NodeId] | None = attrs.field(default=None, init=False)

    def _count(self, action: str, outcome: str) -> None:
        key = f"{action}:{outcome}"
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        self.cluster.checker.record("nemesis", action, outcome)

    def _fresh_id(self) -> NodeId:
        if self._fresh is None:
            self._fresh = _fresh_ids(self.cluster.node_ids)
        while True:
            nid = next(self._fresh)
            if nid not in self.cluster.node_ids:
                return nid

    async def apply(self, fault: Fault) -> None:
        """Carry out one membership :class:`Fault` (after its delay), and count its outcome."""
        await trio.sleep(fault.after_s)
        action = fault.action
        with trio.move_on_after(self.timeout_s):
            try:
                await self._act(action, fault.nodes)
            except _Skipped as exc:
                self._count(action, exc.reason)
                return
            except (
                NotLeaderError, MembershipError, LeadershipLostError, LeadershipTransferError,
                NodeClosedError,
            ) as exc:  # fmt: skip
                self._count(action, type(exc).__name__)
                return
            self._count(action, "ok")
            return
        self._count(action, "timeout")

    async def _leader(self) -> Node:
        # Give an election in progress a moment (as a client retrying would).
        with trio.move_on_after(2 * self.cluster.config.election_timeout_s_max):
            return await self.cluster.wait_leader()
        raise _Skipped("no_leader")

    def _pick(self, nodes: Sequence[NodeId], i: int, among: Collection[NodeId]) -> NodeId | None:
        if len(nodes) > i:
            return nodes[i]
        return self.rng.choice(sorted(among)) if among else None

    async def _add(self, node_id: NodeId | None) -> NodeId:
        nid = node_id if node_id is not None else self._fresh_id()
        if nid not in self.cluster.node_ids:
            await self.cluster.add_node(nid, join=True)
        elif nid not in self.cluster.nodes:
            await self.cluster.start(nid)
        await (await self._leader()).add_learner(nid)
        return nid

    async def _act(self, action: str, nodes: Sequence[NodeId]) -> None:
        leader = await self._leader()
        m = leader.membership
        assert m is not None  # a leader always has a configuration
        if action == "add_learner":
            await self._add(nodes[0] if nodes else None)
        elif action == "promote":
            target = self._pick(nodes, 0, m.learners)
            if target is None:
                raise _Skipped("no_learner")
            await leader.promote(target, catch_up_timeout_s=self.catch_up_timeout_s)
        elif action == "demote":
            target = self._pick(nodes, 0, m.voters)
            assert target is not None
            await leader.demote(target)
        elif action == "remove":
            target = self._pick(nodes, 0, m.members)
            assert target is not None
            await leader.remove(target)
        elif action == "replace":
            old = self._pick(nodes, 1, m.voters)
            nid = await self._add(nodes[0] if nodes else None)
            await (await self._leader()).promote(nid, catch_up_timeout_s=self.catch_up_timeout_s)
            assert old is not None
            await (await self._leader()).remove(old)
        elif action == "transfer":
            others = [v for v in m.voters if v != leader.id]
            target = nodes[0] if nodes else (self.rng.choice([None, *sorted(others)]))
            await leader.transfer_leadership(target)
        else:
            raise ValueError(f"unknown membership action {action!r}")


class _Skipped(Exception):
    """The action cannot start (no running node leads, no learner to promote)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
    membership: Mapping[str, int] = attrs.field(factory=dict)
    """Outcomes of the membership nemesis's actions, ``"action:outcome"`` → count (see
    :class:`MembershipNemesis`); empty without ``membership``."""
    schedule: tuple[Fault, ...] = ()
    """The faults the run applied, in order."""
    live_majority_s: float = 0.0
    """The longest stretch of the nemesis phase during which a majority of the initial nodes
    was running (see :func:`longest_live_majority`): a run whose nemesis kept a majority
    crashed throughout cannot be expected to acknowledge writes."""


def longest_live_majority(
    schedule: Sequence[Fault], node_ids: Sequence[NodeId], duration_s: float
) -> float:
    """The longest time, within ``duration_s``, during which a majority of ``node_ids`` was
    not crashed by ``schedule`` (crash, restart, restart_all; partitions, disk faults and
    membership actions are not counted, so this is an upper bound on the time a quorum could
    serve)."""
    down: set[NodeId] = set()
    majority = len(node_ids) // 2 + 1
    t = 0.0
    since: float | None = 0.0
    best = 0.0
    for fault in schedule:
        t += fault.after_s
        if t >= duration_s:
            break
        if fault.action == "crash":
            down |= set(fault.nodes) & set(node_ids)
        elif fault.action == "restart":
            down -= set(fault.nodes)
        elif fault.action == "restart_all":
            down.clear()
        up = len(node_ids) - len(down) >= majority
        if up and since is None:
            since = t
        elif not up and since is not None:
            best = max(best, t - since)
            since = None
    if since is not None:
        best = max(best, duration_s - since)
    return best


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
    membership: bool = False,
) -> ChaosReport:
    """Run one randomized chaos simulation and check it. Call under a MockClock (autojump).

    With ``wire_codec`` every message goes through the real codec (see :class:`MemoryNetwork`).

    With ``membership`` the nemesis also changes the configuration (`MEMBERSHIP_ACTIONS`, about
    a third of the random schedule's actions; see :class:`MembershipNemesis`): each action
    runs in the background, through the leader of the moment, and its outcome is counted in
    :attr:`ChaosReport.membership`. Removed nodes keep running as bystanders. After healing,
    the run also requires that the configuration settles (not joint, the same committed one
    on every running member) and that the bystanders then change no term and no leader for
    ten maximum election timeouts.

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
        initial_ids = list(cluster.node_ids)
        faults = (
            list(schedule)
            if schedule is not None
            else random_schedule(
                random.Random(master.random()), cluster.node_ids, duration_s,
                membership=membership,
            )
        )  # fmt: skip
        workload = KVClients(cluster, random.Random(master.random()))
        nemesis = MembershipNemesis(cluster, random.Random(f"{seed}/membership"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(workload.run, clients, duration_s)
            for fault in faults:
                if fault.action in MEMBERSHIP_ACTIONS:
                    if not membership:
                        raise ValueError(
                            f"{fault.action!r} is a membership action: pass membership=True"
                        )
                    await trio.sleep(fault.after_s)
                    nursery.start_soon(nemesis.apply, attrs.evolve(fault, after_s=0.0))
                else:
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
        if membership:
            await _check_bystanders(cluster, seed)
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
            messages=stats.total.sent, membership=dict(nemesis.outcomes),
            schedule=tuple(faults),
            live_majority_s=longest_live_majority(faults, initial_ids, duration_s),
        )  # fmt: skip


async def _check_bystanders(cluster: SimulatedCluster, seed: int) -> None:
    """Liveness after healing and settling: the running nodes outside the configuration
    (removed bystanders, which keep their timers) change no term and no leader."""
    leader = cluster.leader()
    assert leader is not None  # the caller has just converged
    term = leader.status.term
    await trio.sleep(10 * cluster.config.election_timeout_s_max)
    after = cluster.leader()
    if after is not leader or leader.status.term != term:
        members = cluster.members
        bystanders = sorted(n for n in cluster.nodes if members is None or n not in members.members)
        raise AssertionError(
            f"seed={seed}: with bystanders {bystanders} running, the settled cluster's leader "
            f"{leader.id} (term {term}) became {after.id if after else None} "
            f"(term {after.status.term if after else None})\n"
            + "\n".join(str(n.status) for n in cluster.nodes.values())
            + "\n"
            + cluster.checker.format_trace()
        )
