"""``serve --join`` and the other membership duties of ``serve``, run in one process.

Four :func:`trio_raft._serve.serve` calls share one trio run (real WebSockets, real file
storage, fixed ports, hence the ``process`` marker of this directory). The membership
operations the joiner asks for go through :class:`LeaderAdmin`, which calls the leader's
:class:`~trio_raft.Node` methods directly: it stands in for the KV client's operations
(``members``, ``add_learner``, ``promote``) so that this tests ``serve``'s side alone; the
real-process tests (``test_membership.py``) use the real client.
"""

from __future__ import annotations

import io
import re
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_raft import Membership, Node, open_node
from trio_raft import _serve as serve_module
from trio_raft._join import ClusterAdmin, JoinError, JoinOptions, ask_members, peer_urls
from trio_raft._serve import ClusterFile, LeaderUrls, load_cluster_file, serve
from trio_raft._types import NodeId

from ._harness import DEADLINE_S, HOST, allocate_ports, write_cluster_file

FAST: Mapping[str, object] = {
    "election_timeout_s_min": 0.2,
    "election_timeout_s_max": 0.4,
    "heartbeat_s": 0.05,
    "catch_up_entries": 10,
}


def plain(membership: Membership, index: int) -> dict[str, object]:
    """A ``members`` result, as the KV operation shapes it."""
    return {
        "index": index,
        "committed": True,
        "leader": None,
        "voters": {n: membership.addresses.get(n) for n in membership.voters},
        "learners": {n: membership.addresses.get(n) for n in membership.learners},
        "outgoing": sorted(membership.outgoing),
    }


class LeaderAdmin:
    """The join flow's membership operations, run on whichever node leads now."""

    def __init__(self, nodes: Mapping[NodeId, Node], calls: list[str]) -> None:
        self.nodes = nodes
        self.calls = calls

    async def leader(self) -> Node:
        while True:
            for node in self.nodes.values():
                if node.status.leader_id == node.id:
                    return node
            await trio.sleep(0.05)

    async def members(self) -> Mapping[str, object]:
        self.calls.append("members")
        node = await self.leader()
        assert node.membership is not None
        return plain(node.membership, node.status.membership_index)

    async def add_learner(self, node: NodeId, *, peer: str, client: str) -> Mapping[str, object]:
        self.calls.append(f"add_learner {node}")
        leader = await self.leader()
        membership = await leader.add_learner(node, {"peer": peer, "client": client})
        return plain(membership, leader.status.membership_index)

    async def promote(
        self, node: NodeId, *, catch_up_timeout_s: float | None = None, timeout_s: float
    ) -> Mapping[str, object]:
        self.calls.append(f"promote {node}")
        leader = await self.leader()
        with trio.fail_after(timeout_s):
            membership = await leader.promote(node, catch_up_timeout_s=catch_up_timeout_s)
        return plain(membership, leader.status.membership_index)


def connector(
    admin: ClusterAdmin,
) -> Callable[[tuple[str, ...]], AbstractAsyncContextManager[ClusterAdmin]]:
    @asynccontextmanager
    async def connect(urls: tuple[str, ...]) -> AsyncIterator[ClusterAdmin]:
        yield admin

    return connect


async def wait_for_line(out: io.StringIO, text: str) -> None:
    while True:
        if text in out.getvalue():
            return
        await trio.sleep(0.02)


def record_nodes(monkeypatch: pytest.MonkeyPatch) -> dict[NodeId, Node]:
    """Make every ``serve`` of this test put its node in the returned dict."""
    nodes: dict[NodeId, Node] = {}

    @asynccontextmanager
    async def recording(node_id: NodeId, *args: Any, **kw: Any) -> AsyncIterator[Node]:
        async with open_node(node_id, *args, **kw) as node:
            nodes[node_id] = node
            yield node

    monkeypatch.setattr(serve_module, "open_node", recording)
    return nodes


@pytest.fixture
def cluster_file(tmp_path: Path) -> ClusterFile:
    path = write_cluster_file(tmp_path, allocate_ports(), secret=secrets.token_hex(32), raft=FAST)
    return load_cluster_file(path)


def test_bootstrap_membership_is_every_node_of_the_file(cluster_file: ClusterFile) -> None:
    membership = serve_module.bootstrap_membership(cluster_file)
    assert membership.voters == {"n1", "n2", "n3"}
    assert membership.learners == frozenset()
    assert membership.addresses["n2"] == {
        "peer": cluster_file.nodes["n2"].peer,
        "client": cluster_file.nodes["n2"].client,
    }


async def test_a_node_joins_promotes_itself_and_exits_when_removed(
    cluster_file: ClusterFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = record_nodes(monkeypatch)
    calls: list[str] = []
    connect = connector(LeaderAdmin(nodes, calls))
    ports = allocate_ports(["n4"])["n4"]
    join = JoinOptions(
        (cluster_file.nodes["n1"].client,),
        f"ws://{HOST}:{ports.peer}/raft",
        f"ws://{HOST}:{ports.client}/kv",
    )
    outs = {n: io.StringIO() for n in ("n1", "n2", "n3", "n4")}
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            for node_id in ("n1", "n2", "n3"):
                await nursery.start(
                    partial(serve, cluster_file, node_id, out=outs[node_id], connect_admin=connect)
                )
            leader = await LeaderAdmin(nodes, []).leader()
            for i in range(30):
                await leader.propose(("get", f"k{i}"))  # entries for n4 to catch up on

            done = trio.Event()

            async def run_n4() -> None:
                await serve(cluster_file, "n4", join=join, out=outs["n4"], connect_admin=connect)
                done.set()

            nursery.start_soon(run_n4)
            await wait_for_line(outs["n4"], "n4: voter in a cluster of 4")
            text = outs["n4"].getvalue()
            assert "n4: learner, " in text and " entries behind" in text
            assert "n4: caught up, promoting" in text
            assert calls == ["members", "add_learner n4", "promote n4"]
            leader = await LeaderAdmin(nodes, []).leader()
            assert leader.membership is not None
            assert leader.membership.voters == {"n1", "n2", "n3", "n4"}
            assert leader.membership.addresses["n4"] == join.address
            # Every node now redirects clients to n4 by its configured client URL.
            assert LeaderUrls(nodes["n1"], cluster_file)["n4"] == join.client

            await leader.remove("n4")
            await done.wait()  # serve returned: the removal made it exit
            assert "n4: removed from the cluster (configuration at index " in outs["n4"].getvalue()

            # Restarted with --join on its old data: a restart (it has been a member), not a
            # new join; it changes nothing and says that no leader calls it.
            calls.clear()
            nursery.start_soon(
                partial(serve, cluster_file, "n4", join=join, out=outs["n4"], connect_admin=connect)
            )
            await wait_for_line(outs["n4"], "a restart, --join ignored")
            assert calls == []
            nursery.cancel_scope.cancel()


async def test_learner_flag_stops_after_add_learner(
    cluster_file: ClusterFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = record_nodes(monkeypatch)
    calls: list[str] = []
    connect = connector(LeaderAdmin(nodes, calls))
    ports = allocate_ports(["n4"])["n4"]
    join = JoinOptions(
        (cluster_file.nodes["n2"].client,),
        f"ws://{HOST}:{ports.peer}/raft",
        f"ws://{HOST}:{ports.client}/kv",
        learner=True,
    )
    out = io.StringIO()
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            for node_id in ("n1", "n2", "n3"):
                await nursery.start(
                    partial(serve, cluster_file, node_id, out=io.StringIO(), connect_admin=connect)
                )
            nursery.start_soon(
                partial(serve, cluster_file, "n4", join=join, out=out, connect_admin=connect)
            )
            await wait_for_line(out, "n4: --learner: staying a learner")
            assert calls == ["members", "add_learner n4"]
            leader = await LeaderAdmin(nodes, []).leader()
            assert leader.membership is not None
            assert leader.membership.learners == {"n4"}
            await nodes["n4"].wait_status(lambda s: s.membership == leader.membership)
            nursery.cancel_scope.cancel()


async def test_a_leader_that_removes_itself_hands_over_and_exits(
    cluster_file: ClusterFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its followers keep answering it after appending the configuration without it (their
    transports keep the leader's link), so the change commits; then it hands over and its
    ``serve`` returns."""
    nodes = record_nodes(monkeypatch)
    outs = {n: io.StringIO() for n in ("n1", "n2", "n3")}
    exited: list[NodeId] = []

    async def run(node_id: NodeId) -> None:
        await serve(cluster_file, node_id, out=outs[node_id])
        exited.append(node_id)

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            for node_id in ("n1", "n2", "n3"):
                nursery.start_soon(run, node_id)
            leader = await LeaderAdmin(nodes, []).leader()
            gone = leader.id
            await leader.propose(("get", "k"))
            # Both followers answered (a voter change needs a live majority of old and new).
            await leader.wait_status(
                lambda s: (
                    len(s.followers) == 2
                    and all(f.match_index >= s.commit_index for f in s.followers.values())
                )
            )
            membership = await leader.remove(gone)
            assert membership.voters == {"n1", "n2", "n3"} - {gone}
            await wait_for_line(outs[gone], f"{gone}: removed from the cluster")
            others = [n for n in ("n1", "n2", "n3") if n != gone]
            status = await nodes[others[0]].wait_status(lambda s: s.leader_id in others)
            successor = status.leader_id
            assert successor is not None
            await nodes[successor].propose(("get", "k"))  # the two of them commit
            assert exited == [gone]
            nursery.cancel_scope.cancel()


class FixedAdmin:
    """A cluster that answers ``members`` with one result, or fails."""

    def __init__(self, result: Mapping[str, object] | None) -> None:
        self.result = result

    async def members(self) -> Mapping[str, object]:
        await trio.lowlevel.checkpoint()
        if self.result is None:
            raise OSError("connection refused")
        return self.result

    async def add_learner(self, node: NodeId, *, peer: str, client: str) -> Mapping[str, object]:
        raise AssertionError("not called")

    async def promote(
        self, node: NodeId, *, catch_up_timeout_s: float | None = None, timeout_s: float
    ) -> Mapping[str, object]:
        raise AssertionError("not called")


JOIN = JoinOptions(("ws://127.0.0.1:1/kv",), "ws://127.0.0.1:2/raft", "ws://127.0.0.1:3/kv")


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (None, "cannot learn the cluster's members from ws://127.0.0.1:1/kv"),
        (
            {"index": 7, "voters": {"n4": {"peer": "ws://h:1/raft"}}, "learners": {}},
            "n4 is already a voter of this cluster (configuration at index 7)",
        ),
    ],
)
async def test_join_refuses_an_unreachable_cluster_and_a_voter_id(
    result: Mapping[str, object] | None, expected: str
) -> None:
    connect = connector(FixedAdmin(result))
    with pytest.raises(JoinError, match=re.escape(expected)):
        await ask_members(connect, JOIN, "n4")


def test_peer_urls_of_a_members_result() -> None:
    result = {
        "voters": {"n1": {"peer": "ws://a:1/raft", "client": "ws://a:2/kv"}, "n4": None},
        "learners": {"n5": "ws://e:1/raft"},
    }
    assert peer_urls(result, "n4") == {"n1": "ws://a:1/raft", "n5": "ws://e:1/raft"}
    with pytest.raises(JoinError, match="without 'voters'"):
        peer_urls({"learners": {}}, "n4")


class Tally:
    """A custom state machine (not the KV store): adds numbers, answers the total."""

    def __init__(self) -> None:
        self.total = 0

    def apply(self, command: object) -> object:
        assert isinstance(command, int)
        self.total += command
        return self.total

    def query(self, query: object) -> object:
        return self.total


async def test_a_custom_state_machine_node_joins_with_its_own_admin_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``serve_state_machine(join=..., admin=...)``: a node with no table in the cluster file
    joins a cluster serving a custom state machine through the real client's membership
    operations, catches up, and serves ``/health`` where ``admin`` says."""
    from trio_raft import serve_state_machine
    from trio_raft.kv import open_client

    path = write_cluster_file(tmp_path, allocate_ports(), secret=secrets.token_hex(32), raft=FAST)
    cluster = load_cluster_file(path)
    nodes = record_nodes(monkeypatch)
    n4 = allocate_ports(["n4"])["n4"]
    admin_port = allocate_ports(["admin"])["admin"].peer
    urls = [cluster.nodes[n].client for n in ("n1", "n2", "n3")]
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            for node_id in ("n1", "n2", "n3"):
                out = io.StringIO()
                await nursery.start(
                    partial(serve, cluster, node_id, out=out, state_machine=Tally())
                )
            async with open_client(urls) as client:
                for i in range(1, 11):
                    await client.call(i)
                nursery.start_soon(
                    partial(
                        serve_state_machine, path, "n4", Tally(), join=urls[:1],
                        peer=f"ws://{HOST}:{n4.peer}/raft", client=f"ws://{HOST}:{n4.client}/kv",
                        admin=f"{HOST}:{admin_port}",
                    )
                )  # fmt: skip
                while True:  # joined, caught up, promoted
                    if "n4" in nodes and await _is_voter(client, "n4"):
                        break
                    await trio.sleep(0.05)
            await nodes["n4"].wait_status(lambda s: s.last_applied >= s.commit_index > 0)
            assert nodes["n4"].state_machine.query(None) == 55
            stream = await trio.open_tcp_stream(HOST, admin_port)
            async with stream:
                await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                reply = b""
                while chunk := await stream.receive_some(4096):
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 200 ") and b'"node": "n4"' in reply
            nursery.cancel_scope.cancel()


async def _is_voter(client: object, node_id: str) -> bool:
    members = await client.members()  # type: ignore[attr-defined]
    return node_id in members["voters"]


def test_serve_state_machine_refuses_join_options_without_join(tmp_path: Path) -> None:
    from trio_raft import serve_state_machine
    from trio_raft._serve import ConfigError

    path = write_cluster_file(tmp_path, allocate_ports(), secret=secrets.token_hex(32))
    with pytest.raises(ConfigError, match="go with join"):
        trio.run(partial(serve_state_machine, path, "n1", Tally(), learner=True))
    with pytest.raises(ConfigError, match=r"--admin must look like 127\.0\.0\.1:7601"):
        trio.run(partial(serve_state_machine, path, "n1", Tally(), admin="nowhere"))
