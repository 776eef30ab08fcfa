"""``trio-raft status`` from a cluster file: every node asked at once, ``--json``'s keys, a
down node reported at once (not after the timeout). In-process, port 0."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import trio

from trio_raft._cli_client import TOKEN_ENV
from trio_raft.kv import open_client

from .kv.test_server_client import TEST_S, kv_cluster
from .test_cli_errors import closed_port, first_line, run
from .test_cli_member import PEER

TOKEN = "a-client-token-of-24-chr"


async def test_status_reads_the_cluster_file_and_prints_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    down = await closed_port()
    with trio.fail_after(3 * TEST_S):
        async with kv_cluster(token=TOKEN) as cluster:
            leader = (await cluster.leader()).id
            urls = {**cluster.urls, "n4": f"ws://127.0.0.1:{down}/kv"}
            lines = [f'cluster_id = "t"\nsecret = "0123456789abcdef0123"\ntoken = "{TOKEN}"']
            for i, (node_id, url) in enumerate(sorted(urls.items()), 1):
                lines.append(
                    f'[nodes.{node_id}]\npeer = "ws://127.0.0.1:{i}/raft"\nclient = "{url}"'
                )
            path = tmp_path / "cluster.toml"
            path.write_text("\n".join(lines) + "\n")
            # A down node is reported at once: the test's deadline is well under --timeout.
            assert await run("status", "--config", str(path), "--json", "--timeout", "60") == 1
            captured = capsys.readouterr()
            assert captured.err.startswith(f"trio-raft status: ws://127.0.0.1:{down}/kv: cannot ")
            view = json.loads(captured.out)
            assert view["leader"] == leader
            assert [n["id"] for n in view["nodes"]] == ["n1", "n2", "n3", "n4"]
            keys = {"url", "id", "ok", "error", "role", "term", "leader_id", "commit", "applied",
                    "last_index", "compacted", "voted_for", "lag", "no_space"}  # fmt: skip
            assert all(set(n) == keys for n in view["nodes"])
            by_id = {n["id"]: n for n in view["nodes"]}
            assert by_id[leader]["role"] == "leader" and by_id[leader]["lag"] is None
            assert by_id[leader]["voted_for"] == leader  # a leader voted for itself
            assert by_id[leader]["compacted"] == 0  # no snapshot yet
            assert by_id["n4"]["voted_for"] is None and by_id["n4"]["compacted"] is None
            assert by_id["n4"]["ok"] is False and "cannot connect" in by_id["n4"]["error"]
            assert by_id["n4"]["role"] is None
            for node_id in ("n1", "n2", "n3"):
                assert by_id[node_id]["ok"] and by_id[node_id]["leader_id"] == leader
                assert by_id[node_id]["url"] == cluster.urls[node_id]
            assert view["configuration"]["voters"] == ["n1", "n2", "n3"]

            # The text view, and the token from a file.
            (tmp_path / "token").write_text(TOKEN + "\n")
            (tmp_path / "token").chmod(0o600)
            argv = ["status", "--token-file", str(tmp_path / "token")]
            for url in urls.values():
                argv += ["--url", url]
            assert await run(*argv) == 1
            out = capsys.readouterr().out.splitlines()
            assert out[0].split() == ["node", "role", "term", "commit", "applied", "lag"]
            rows = {line.split()[0]: line.split()[1] for line in out[1:5]}
            assert rows[leader] == "leader"
            assert rows[urls["n4"]] == "(down)"
            assert out[-1].startswith("configuration at index ")
            # Without a token the nodes refuse, and say what to pass.
            assert await run("status", "--url", cluster.urls["n1"]) == 1
            assert "pass the cluster's token (--token-file FILE" in first_line(capsys)


async def test_status_from_the_file_finds_members_that_joined_later(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(3 * TEST_S):
        async with kv_cluster() as cluster, trio.open_nursery() as nursery:
            await nursery.start(partial(cluster.run_node, "n4", {}, join=True))
            async with open_client(list(cluster.urls.values())) as kv:
                await kv.add_learner("n4", peer=PEER, client=cluster.urls["n4"])
            await cluster.nodes["n4"].wait_status(lambda s: s.membership is not None)
            lines = ['cluster_id = "t"\nsecret = "0123456789abcdef0123"']
            for i, node_id in enumerate(("n1", "n2", "n3"), 1):  # the bootstrap members only
                url = cluster.urls[node_id]
                lines.append(
                    f'[nodes.{node_id}]\npeer = "ws://127.0.0.1:{i}/raft"\nclient = "{url}"'
                )
            path = tmp_path / "cluster.toml"
            path.write_text("\n".join(lines) + "\n")
            capsys.readouterr()
            assert await run("status", "--config", str(path), "--json") == 0
            view = json.loads(capsys.readouterr().out)
            assert [n["id"] for n in view["nodes"]] == ["n1", "n2", "n3", "n4"]
            assert view["nodes"][3]["role"] == "learner"
            assert view["nodes"][3]["url"] == cluster.urls["n4"]
            assert view["configuration"]["learners"] == ["n4"]
            nursery.cancel_scope.cancel()
