"""``trio-raft member ...``, ``transfer-leader`` and the configuration in ``trio-raft status``,
in-process: the commands' async bodies run against real nodes and KV servers (loopback
WebSockets on port 0) from ``tests/kv``; usage errors go through :func:`main`.
"""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import pytest
import trio

from trio_raft._cli import _status_command, build_parser, main
from trio_raft._cli_member import run_member_command
from trio_raft._serve import ConfigError, load_cluster_file, serve
from trio_raft.kv import open_client

from . import _ports
from .kv.test_server_client import TEST_S, Cluster, kv_cluster
from .test_cli_real import DEADLINE_S

PEER = "ws://127.0.0.1:1/raft"
"""The peer URL given to the new members: the nodes talk over a MemoryNetwork."""


async def cli(*argv: str) -> int:
    """Run one membership command in this trio run; return its exit code."""
    return await run_member_command(build_parser().parse_args(argv))


async def with_addresses(cluster: Cluster) -> None:
    """Give the bootstrap members addresses, as ``trio-raft serve`` does."""
    async with open_client(list(cluster.urls.values())) as kv:
        for node_id, url in sorted(cluster.urls.items()):
            await kv.add_learner(node_id, peer=PEER.replace(":1/", f":{node_id[1:]}/"), client=url)


async def test_member_commands_grow_and_shrink_a_cluster(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with trio.fail_after(4 * TEST_S):
        async with kv_cluster() as cluster, trio.open_nursery() as nursery:
            await with_addresses(cluster)
            url = cluster.urls["n1"]
            await nursery.start(partial(cluster.run_node, "n4", {}, join=True))
            url4 = cluster.urls["n4"]
            capsys.readouterr()

            assert await cli("member", "add", "n4", "--peer", PEER, "--client", url4,
                             "--url", url) == 0  # fmt: skip
            out = capsys.readouterr().out
            assert out.startswith("n4: learner\nconfiguration at index ")
            assert "voters n1, n2, n3; learners n4" in out

            assert await cli("member", "list", "--url", url) == 0
            lines = capsys.readouterr().out.splitlines()
            leader = (await cluster.leader()).id
            assert re.fullmatch(
                rf"configuration at index \d+ \(committed\), leader {leader}", lines[0]
            )
            assert lines[1].split() == ["node", "role", "peer", "client", "match", "lag"]
            rows = {line.split()[0]: line.split() for line in lines[2:]}
            assert sorted(rows) == ["n1", "n2", "n3", "n4"]
            assert rows["n4"][1:4] == ["learner", PEER, url4]
            assert rows["n2"][1:4] == ["voter", "ws://127.0.0.1:2/raft", cluster.urls["n2"]]
            assert len(rows[leader]) == 5  # match, no lag
            assert all(len(row) == 6 for node, row in rows.items() if node != leader)

            assert await cli("member", "list", "--json", "--url", url) == 0
            listed = json.loads(capsys.readouterr().out)
            assert sorted(listed["voters"]) == ["n1", "n2", "n3"]
            assert listed["learners"] == {"n4": {"peer": PEER, "client": url4}}
            assert listed["progress"][leader]["lag"] is None
            assert listed["progress"]["n4"]["match"] >= 0

            assert await cli("member", "promote", "n4", "--catch-up-timeout", "5",
                             "--url", url) == 0  # fmt: skip
            assert capsys.readouterr().out.startswith("n4: voter\n")
            assert await cli("member", "demote", "n4", "--json", "--url", url) == 0
            demoted = json.loads(capsys.readouterr().out)
            assert list(demoted["learners"]) == ["n4"] and demoted["committed"] is True
            assert await cli("member", "remove", "n4", "--url", url) == 0
            assert capsys.readouterr().out.startswith("n4: removed\n")

            assert await cli("member", "add", "n4", "--peer", PEER, "--client", url4,
                             "--voter", "--catch-up-timeout", "5", "--url", url) == 0  # fmt: skip
            out = capsys.readouterr().out
            assert out.startswith("n4: learner; promoting (waiting up to 5 s")
            assert "\nn4: voter\n" in out
            nursery.cancel_scope.cancel()


async def test_transfer_leader_says_where_leadership_went(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with trio.fail_after(2 * TEST_S):
        async with kv_cluster() as cluster:
            old = (await cluster.leader()).id
            urls = [arg for u in cluster.urls.values() for arg in ("--url", u)]
            assert await cli("transfer-leader", *urls) == 0
            out = capsys.readouterr().out
            match = re.fullmatch(rf"leadership moved from {old} to (n\d) in \d+\.\d{{3}} s\n", out)
            assert match is not None and match[1] != old
            assert await cli("transfer-leader", "--to", old, "--json", *urls) == 0
            moved = json.loads(capsys.readouterr().out)
            assert moved["from"] == match[1] and moved["leader"] == old
            assert moved["seconds"] >= 0
            assert await cli("transfer-leader", "--to", old, *urls) == 0
            assert capsys.readouterr().out == f"{old} already leads\n"


async def test_refusals_exit_1_and_say_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    with trio.fail_after(2 * TEST_S):
        async with kv_cluster(ids=["solo"], token="tok", admin_token="adm") as cluster:
            url = cluster.urls["solo"]
            assert await cli("member", "promote", "n9", "--url", url, "--token", "adm") == 1
            err = capsys.readouterr().err
            assert err.startswith("trio-raft member promote: refused (invalid_membership):")
            assert "fix the request" in err
            assert await cli("member", "remove", "solo", "--url", url, "--token", "adm") == 1
            assert "refused (invalid_membership)" in capsys.readouterr().err
            assert await cli("transfer-leader", "--url", url, "--token", "adm") == 1
            assert "refused (invalid_membership)" in capsys.readouterr().err
            # The client token lists members but does not change them.
            assert await cli("member", "list", "--url", url, "--token", "tok") == 0
            assert await cli("member", "remove", "n9", "--url", url, "--token", "tok") == 1
            err = capsys.readouterr().err
            assert "admin_token" in err and "--token" in err
            assert await cli("member", "remove", "n9", "--url", url, "--token", "adm") == 0


async def test_an_unreachable_cluster_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    with trio.fail_after(TEST_S):
        url = f"ws://127.0.0.1:{port}/kv"
        assert await cli("member", "list", "--url", url, "--timeout", "0.2") == 1
    err = capsys.readouterr().err
    assert "no answer in time" in err and "--timeout" in err


async def test_status_shows_the_configuration_and_learners(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with trio.fail_after(3 * TEST_S):
        async with kv_cluster() as cluster, trio.open_nursery() as nursery:
            await nursery.start(partial(cluster.run_node, "n4", {}, join=True))
            async with open_client(list(cluster.urls.values())) as kv:
                result = await kv.add_learner("n4", peer=PEER, client=cluster.urls["n4"])
            n4 = cluster.nodes["n4"]
            await n4.wait_status(lambda s: s.membership is not None)
            capsys.readouterr()
            urls = [arg for u in cluster.urls.values() for arg in ("--url", u)]
            assert await _status_command(build_parser().parse_args(["status", *urls])) == 0
            lines = capsys.readouterr().out.splitlines()
            roles = {line.split()[0]: line.split()[1] for line in lines[1:-1]}
            assert roles["n4"] == "learner"
            assert sorted(roles.values()) == ["follower", "follower", "leader", "learner"]
            assert lines[-1] == (
                f"configuration at index {result['index']} (committed): voters n1, n2, n3; "
                "learners n4"
            )
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "argv",
    [
        ["member"],
        ["member", "list"],  # no --url
        ["member", "list", "--url", "http://h/kv"],
        ["member", "add", "n5", "--url", "ws://h/kv"],  # no --peer, --client
        ["member", "add", "n5", "--peer", "ws://h/raft", "--client", "tcp://h", "--url", "ws://h"],
        ["member", "promote", "n4", "--catch-up-timeout", "-1", "--url", "ws://h/kv"],
        ["member", "promote", "n4", "--catch-up-timeout", "soon", "--url", "ws://h/kv"],
        ["member", "frobnicate", "--url", "ws://h/kv"],
        ["transfer-leader"],
        ["transfer-leader", "--url", "ws://h/kv", "--timeout", "0"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and ("--help" in err or "--config FILE" in err), err


# -- the cluster file's admin_token, through trio-raft serve ------------------------------------

FILE = """
cluster_id = "t"
secret = "0123456789abcdef0123"
{extra}
[nodes.n1]
peer = "ws://127.0.0.1:{peer}/raft"
client = "ws://127.0.0.1:{client}/kv"
"""


TOKEN = "the-client-token-16"
ADMIN = "the-admin-token-16"


def test_the_cluster_file_reads_admin_token(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(FILE.format(extra=f'admin_token = "{ADMIN}"', peer=7001, client=8001))
    assert load_cluster_file(path).admin_token == ADMIN
    path.write_text(FILE.format(extra="", peer=7001, client=8001))
    assert load_cluster_file(path).admin_token is None
    for wrong in ("admin_token = 5", 'admin_token = ""'):
        path.write_text(FILE.format(extra=wrong, peer=7001, client=8001))
        with pytest.raises(ConfigError, match="admin_token must be a non-empty string"):
            load_cluster_file(path)


@pytest.mark.process
async def test_serve_requires_the_admin_token_for_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    peer, client = _ports.allocate(2)
    path = tmp_path / "cluster.toml"
    path.write_text(
        FILE.format(extra=f'token = "{TOKEN}"\nadmin_token = "{ADMIN}"', peer=peer, client=client)
    )
    cluster = load_cluster_file(path)
    url = cluster.nodes["n1"].client
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, cluster, "n1")
            assert await cli("member", "list", "--url", url, "--token", TOKEN) == 0
            assert "peer" in capsys.readouterr().out
            assert await cli("member", "remove", "n9", "--url", url, "--token", TOKEN) == 1
            assert "admin_token" in capsys.readouterr().err
            assert await cli("member", "remove", "n9", "--url", url, "--token", ADMIN) == 0
            # --config alone: the file's URLs and its admin_token
            assert await cli("member", "remove", "n9", "--config", str(path)) == 0
            nursery.cancel_scope.cancel()
