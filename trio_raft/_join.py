"""``trio-raft serve --join``: a new node adds itself to a running cluster, and the watches
every served node runs (its own removal, a leader that never calls).

The join flow (docs/source/membership.rst, "Running a real cluster"): the node asks any member
for the configuration (the ``members`` KV operation; the client follows leader hints), dials
those members, runs in join mode (``open_node(members=None)``), then adds itself as a learner,
waits until it has caught up with the entry that added it, and promotes itself. Every step is
printed; a failure leaves the node running (a learner, or not yet a member) and says what to do.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Protocol, TextIO, cast

import attrs
import trio

from ._config import Config
from ._errors import NodeClosedError, RaftError
from ._node import Node
from ._types import Membership, NodeId
from .kv import KVError, open_client

logger = logging.getLogger("trio_raft.serve")

PROGRESS_EVERY_S = 5.0
"""How often a joining learner prints how far behind it still is."""
BUSY_RETRY_S = 0.5
"""How long the join flow waits before asking again when another change is in flight."""
PROMOTE_MARGIN_S = 10.0
"""The promote call's own timeout is its catch-up timeout plus this (the CLI's rule)."""
QUIET_ELECTION_TIMEOUTS = 10
"""A node that hears no leader for this many ``election_timeout_s_max`` says so once."""
REMOVED_HAND_OVER_TIMEOUTS = 2
"""A leader that removed itself gets this many ``election_timeout_s_max`` to hand over before
its process exits (it normally steps down right after the removal commits)."""


class JoinError(RaftError):
    """``serve --join`` could not start: the cluster did not answer, or refused this node."""


@attrs.frozen
class JoinOptions:
    """What ``trio-raft serve --join`` was given."""

    urls: tuple[str, ...]
    """Client URLs of members (``--join``, repeatable): where to ask for the configuration."""
    peer: str
    """This node's peer URL (``--peer``), its address for the other members."""
    client: str
    """This node's client URL (``--client``)."""
    learner: bool = False
    """``--learner``: stop after adding the node as a learner."""
    catch_up_timeout_s: float | None = None
    """``--catch-up-timeout``: how long the promotion waits for the learner to catch up
    (``Config.catch_up_timeout_s`` if ``None``)."""

    @property
    def address(self) -> dict[str, str]:
        """This node's address in the configuration."""
        return {"peer": self.peer, "client": self.client}


class ClusterAdmin(Protocol):
    """The membership operations of :class:`~trio_raft.kv.KVClient` the join flow uses."""

    async def members(self) -> Mapping[str, object]: ...

    async def add_learner(
        self, node: NodeId, *, peer: str, client: str
    ) -> Mapping[str, object]: ...

    async def promote(
        self, node: NodeId, *, catch_up_timeout_s: float | None = None, timeout_s: float
    ) -> Mapping[str, object]: ...


ConnectAdmin = Callable[[tuple[str, ...]], AbstractAsyncContextManager[ClusterAdmin]]
"""Opens a :class:`ClusterAdmin` of the cluster at some client URLs (tests pass their own)."""


def kv_admin(token: str | None, ssl_context: ssl.SSLContext | None) -> ConnectAdmin:
    """A :data:`ConnectAdmin` that opens a KV client with the cluster's token."""

    @asynccontextmanager
    async def connect(urls: tuple[str, ...]) -> AsyncIterator[ClusterAdmin]:
        async with open_client(list(urls), token=token, ssl_context=ssl_context) as client:
            yield cast("ClusterAdmin", client)

    return connect


def peer_urls(members: Mapping[str, object], me: NodeId) -> dict[NodeId, str]:
    """The peer URL of every member in a ``members`` result but ``me``.

    Raises:
        JoinError: the result is not a membership (say, a server that predates them).
    """
    urls: dict[NodeId, str] = {}
    for key in ("voters", "learners"):
        group = members.get(key)
        if not isinstance(group, Mapping):
            raise JoinError(f"the cluster answered members without {key!r}: {members!r:.200}")
        for node_id, address in group.items():
            peer = address.get("peer") if isinstance(address, Mapping) else address
            if isinstance(node_id, str) and isinstance(peer, str) and node_id != me:
                urls[node_id] = peer
    return urls


async def ask_members(
    connect: ConnectAdmin, options: JoinOptions, node_id: NodeId
) -> Mapping[str, object]:
    """The cluster's configuration, from any of ``options.urls``.

    Raises:
        JoinError: no member answered, or this id is already a voter (a voter must not come
            back with an empty data directory: it would forget its votes).
    """
    try:
        async with connect(options.urls) as admin:
            members = await admin.members()
    except (KVError, OSError) as exc:
        raise JoinError(
            f"{node_id}: cannot learn the cluster's members from {', '.join(options.urls)}: "
            f"{exc}. Check the --join URLs (a member's client URL, ws://host:port/kv) and "
            "that a majority of the cluster runs"
        ) from exc
    voters = members.get("voters")
    if isinstance(voters, Mapping) and node_id in voters:
        raise JoinError(
            f"{node_id} is already a voter of this cluster (configuration at index "
            f"{members.get('index')}), and its data directory holds no trace of it. A voter "
            f"must not restart with an empty directory: remove it first (trio-raft member "
            f"remove {node_id}), or join with a new id"
        )
    return members


def _print(out: TextIO, text: str) -> None:
    print(text, file=out, flush=True)


async def join_cluster(
    node: Node, connect: ConnectAdmin, options: JoinOptions, config: Config, out: TextIO
) -> None:
    """Add ``node`` to the cluster as a learner, wait until it caught up, promote it.

    Never raises for a refusal or a timeout: it prints what happened and what to do, and
    returns; the node keeps running (as a learner if it was added).
    """
    me = node.id
    hint = options.urls[0]
    try:
        async with connect(options.urls) as admin:
            try:
                added = await _while_busy(
                    partial(admin.add_learner, me, peer=options.peer, client=options.client),
                    config.catch_up_timeout_s,
                )
            except (KVError, OSError) as exc:
                _print(
                    out,
                    f"{me}: could not add this node as a learner: {exc}. It keeps running but "
                    f"is not a member; fix the cause and restart it with --join, or run "
                    f"trio-raft member add {me} --peer {options.peer} --client {options.client} "
                    f"--url {hint}",
                )
                return
            target = added.get("index")
            target = target if isinstance(target, int) else 0
            behind = max(0, target - node.status.last_applied)
            _print(out, f"{me}: learner, {behind:,} entries behind")
            if options.learner:
                _print(
                    out,
                    f"{me}: --learner: staying a learner (promote it with trio-raft member "
                    f"promote {me} --url {hint})",
                )
                return
            timeout_s = options.catch_up_timeout_s or config.catch_up_timeout_s
            if not await _catch_up(node, target, timeout_s, out):
                _print(
                    out,
                    f"{me}: did not catch up within {timeout_s:g} s; it stays a learner. "
                    f"Promote it later with trio-raft member promote {me} --url {hint} "
                    "(--catch-up-timeout S to wait longer)",
                )
                return
            _print(out, f"{me}: caught up, promoting")
            try:
                promoted = await _while_busy(
                    partial(
                        admin.promote, me, catch_up_timeout_s=timeout_s,
                        timeout_s=timeout_s + PROMOTE_MARGIN_S,
                    ),
                    timeout_s,
                )  # fmt: skip
            except (KVError, OSError) as exc:
                _print(
                    out,
                    f"{me}: promotion failed: {exc}. It stays a learner; promote it later "
                    f"with trio-raft member promote {me} --url {hint}",
                )
                return
            voters = promoted.get("voters")
            size = len(voters) if isinstance(voters, Mapping) else "?"
            _print(out, f"{me}: voter in a cluster of {size}")
    except (KVError, OSError) as exc:  # the client itself failed (closing, say)
        _print(out, f"{me}: joining stopped: {exc}; check with trio-raft member list --url {hint}")


async def _while_busy(
    call: Callable[[], Awaitable[Mapping[str, object]]], patience_s: float
) -> Mapping[str, object]:
    """``call()``, again every :data:`BUSY_RETRY_S` while the cluster refuses it because
    another change is in flight (``change_in_progress``: say, a node joining at the same
    time), for at most ``patience_s``. Both operations are idempotent."""
    deadline = trio.current_time() + patience_s
    while True:
        try:
            return await call()
        except KVError as exc:
            busy = getattr(exc, "code", None) == "change_in_progress"
            if not busy or trio.current_time() >= deadline:
                raise
        await trio.sleep(BUSY_RETRY_S)


async def _catch_up(node: Node, target: int, timeout_s: float, out: TextIO) -> bool:
    """Wait until ``node`` applied ``target``, printing the distance now and then."""
    with trio.move_on_after(timeout_s):
        while True:
            with trio.move_on_after(PROGRESS_EVERY_S):
                await node.wait_status(lambda s: s.last_applied >= target)
                return True
            left = target - node.status.last_applied
            _print(out, f"{node.id}: learner, {left:,} entries behind")
    return False


def is_member(membership: Membership | None, node_id: NodeId) -> bool:
    """Whether ``node_id`` is a voter, learner or outgoing voter of ``membership``."""
    return membership is not None and node_id in membership.members


async def exit_when_removed(
    node: Node, done: trio.CancelScope, config: Config, out: TextIO, *, was_member: bool
) -> None:
    """Cancel ``done`` once this node's own removal is committed, after printing why.

    A node must have been a member first (``was_member``, or seen in a configuration later):
    a joining node replays configurations from before it was added, which do not list it.
    """
    me = node.id
    try:
        if not was_member:
            await node.wait_status(lambda s: is_member(s.membership, me))
        status = await node.wait_status(
            lambda s: (
                s.membership is not None
                and s.membership_committed
                and not is_member(s.membership, me)
            )
        )
        # A leader that removed itself hands over first (TimeoutNow); let it.
        with trio.move_on_after(REMOVED_HAND_OVER_TIMEOUTS * config.election_timeout_s_max):
            await node.wait_status(lambda s: s.leader_id != me)
    except NodeClosedError:
        return
    _print(
        out,
        f"{me}: removed from the cluster (configuration at index {status.membership_index}); "
        "exiting",
    )
    done.cancel()


async def warn_without_leader(node: Node, config: Config, out: TextIO) -> None:
    """Say so, once per silence, when no leader has contacted this node for
    :data:`QUIET_ELECTION_TIMEOUTS` maximum election timeouts."""
    quiet_s = QUIET_ELECTION_TIMEOUTS * config.election_timeout_s_max
    try:
        while True:
            with trio.move_on_after(quiet_s) as silence:
                await node.wait_status(lambda s: s.leader_id is not None)
            if silence.cancelled_caught:
                message = (
                    f"{node.id}: no leader has contacted this node; if it was removed or is "
                    "new, start it with --join"
                )
                logger.warning(message)
                _print(out, message)
            await node.wait_status(lambda s: s.leader_id is not None)
            await node.wait_status(lambda s: s.leader_id is None)
    except NodeClosedError:
        return
