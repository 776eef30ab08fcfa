"""The real-cluster commands: the cluster file, ``serve`` errors, and ``cluster --demo``.

The tests that bind fixed ports or start processes are marked ``process`` (``nox -s
processes``) and take their ports from :mod:`tests._ports`. Their deadlines (``DEADLINE_S``)
detect a hang; they are not speed assertions.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import trio
import trustme

from trio_raft._cli import main
from trio_raft._local_cluster import write_cluster_file
from trio_raft._serve import ConfigError, load_cluster_file, serve
from trio_raft.kv import open_client

from . import _ports

DEADLINE_S = 120.0
"""Bound on a real-process test (real clock): it catches a hang, it does not measure speed. The
demo takes about 8 s on an idle machine; CI shares 2 cores between workers and other jobs."""

GOOD = """
cluster_id = "t"
secret = "0123456789abcdef0123"
[nodes.n1]
peer = "ws://127.0.0.1:7001/raft"
client = "ws://127.0.0.1:8001/kv"
"""


TWO = """
[nodes.n2]
peer = "ws://127.0.0.1:{peer}/raft"
client = "ws://127.0.0.1:{client}/kv"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


def test_a_good_cluster_file_loads(tmp_path: Path) -> None:
    cluster = load_cluster_file(_write(tmp_path, GOOD + "[raft]\nsnapshot_entries = 50\n"))
    assert cluster.cluster_id == "t"
    assert cluster.nodes["n1"].client == "ws://127.0.0.1:8001/kv"
    assert cluster.raft.snapshot_entries == 50
    assert cluster.data_dir == (tmp_path / "data").resolve()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD + "colour = 1\n", "unknown key(s) ['colour']"),
        (GOOD.replace('secret = "0123456789abcdef0123"', 'secret = "short"'), "at least 16"),
        (GOOD.replace('secret = "0123456789abcdef0123"', ""), "exactly one of secret"),
        (GOOD.replace("ws://127.0.0.1:7001/raft", "http://x"), "nodes.n1.peer must be a URL"),
        (GOOD + "[raft]\nelection_timeout = 3\n", "[raft]"),
        (GOOD + "[raft]\nheartbeat_s = 1.0\n", "heartbeat_s"),
        ("cluster_id = [", "not valid TOML"),
        (GOOD.replace("[nodes.n1]", "[nodes.n1]\ncolour = 2"), "in [nodes.n1]"),
        # [raft] values of the wrong type
        (
            GOOD + '[raft]\nsnapshot_entries = "big"\n',
            "[raft] snapshot_entries must be a whole number (e.g. snapshot_entries = 1000), "
            "got 'big'",
        ),
        (GOOD + "[raft]\nsnapshot_entries = 1.5\n", "snapshot_entries must be a whole number"),
        (GOOD + "[raft]\npre_vote = 1\n", "[raft] pre_vote must be true or false"),
        (GOOD + '[raft]\nheartbeat_s = "50ms"\n', "heartbeat_s must be a number of seconds"),
        # two nodes on one address
        (
            GOOD + TWO.format(peer=7001, client=8002),
            "nodes.n2.peer and nodes.n1.peer are both on 127.0.0.1:7001: give every node its own "
            "peer port and client port",
        ),
        (GOOD + TWO.format(peer=7002, client=8001), "nodes.n2.client and nodes.n1.client"),
        (GOOD + TWO.format(peer=8002, client=8002), "nodes.n2.client and nodes.n2.peer"),
        # ids too long for the wire format
        (GOOD.replace("[nodes.n1]", f"[nodes.{'n' * 129}]"), "ids are 1 to 128"),
        (
            GOOD.replace('cluster_id = "t"', f'cluster_id = "{"c" * 129}"'),
            "cluster_id must be at most 128 characters, got 129",
        ),
        # tokens too short to resist guessing
        (
            GOOD.replace("cluster_id", 'token = "x"\ncluster_id'),
            "token must be at least 16 characters, got 1; generate one",
        ),
        (
            GOOD.replace("cluster_id", 'admin_token = "short"\ncluster_id'),
            "admin_token must be at least 16 characters",
        ),
    ],
)
def test_cluster_file_mistakes_are_explained(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_cluster_file(_write(tmp_path, text))
    assert expected in str(info.value)
    assert str(tmp_path / "cluster.toml") in str(info.value)


def test_a_world_readable_secret_file_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("0123456789abcdef0123\n")
    text = GOOD.replace('secret = "0123456789abcdef0123"', 'secret_file = "secret"')
    secret.chmod(0o644)
    assert load_cluster_file(_write(tmp_path, text)).secret == b"0123456789abcdef0123"
    assert capsys.readouterr().err == (
        f"trio-raft: warning: {tmp_path / 'cluster.toml'}: secret_file 'secret' is readable by "
        f"every user of this machine; chmod 600 {secret}\n"
    )
    secret.chmod(0o600)
    load_cluster_file(_write(tmp_path, text))
    assert capsys.readouterr().err == ""


@pytest.mark.process
def test_serve_reports_a_port_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port, client_port = _ports.allocate(2)
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past an earlier TIME_WAIT
        busy.bind(("127.0.0.1", port))
        busy.listen()
        text = GOOD.replace("7001", str(port)).replace("8001", str(client_port))
        path = _write(tmp_path, text)
        assert main(["serve", "--config", str(path), "--id", "n1"]) == 1
    err = capsys.readouterr().err
    assert "already in use" in err
    assert "nodes.n1" in err


def test_serve_reports_an_unknown_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, GOOD)
    assert main(["serve", "--config", str(path), "--id", "n9"]) == 1
    assert "no [nodes.n9] table" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--id", "n1", "--peer", "ws://127.0.0.1:7009/raft"], "--peer go with --join URL"),
        (["--id", "n1", "--learner"], "--learner go with --join URL"),
        (["--id", "n9", "--join", "ws://127.0.0.1:8001/kv"], "--join needs --peer URL and"),
        (
            ["--id", "n9", "--join", "http://127.0.0.1:8001/kv", "--peer",
             "ws://127.0.0.1:7009/raft", "--client", "ws://127.0.0.1:8009/kv"],
            "--join must be a member's client URL",
        ),
        (
            ["--id", "n9", "--join", "ws://127.0.0.1:8001/kv", "--peer", "ws://nowhere/raft",
             "--client", "ws://127.0.0.1:8009/kv"],
            "--peer must be a URL like ws://",
        ),
        (
            ["--id", "n9", "--join", "ws://127.0.0.1:8001/kv", "--peer",
             "ws://127.0.0.1:7009/raft", "--client", "ws://127.0.0.1:8009/kv",
             "--catch-up-timeout", "0"],
            "--catch-up-timeout must be > 0",
        ),
        (["--id", "n9"], "start it with --join URL --peer URL --client URL"),
        (["--id", "n1", "--admin", "nowhere"], "--admin must look like 127.0.0.1:7601"),
    ],
)  # fmt: skip
def test_serve_join_flags_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    path = _write(tmp_path, GOOD)
    assert main(["serve", "--config", str(path), *args]) == 1
    assert expected in capsys.readouterr().err


def _demo_port_offsets(nodes: int) -> list[int]:
    """The ports ``trio-raft cluster`` derives from ``--base-port``, minus the base (read from
    the cluster file it writes, so the test follows the command)."""
    with tempfile.TemporaryDirectory() as tmp:
        text = write_cluster_file(Path(tmp), nodes, base_port=0).read_text()
    return sorted(int(port) for port in re.findall(r"127\.0\.0\.1:(\d+)/", text))


@pytest.mark.process
def test_cluster_demo_over_real_processes(tmp_path: Path) -> None:
    base = _ports.allocate_block(_demo_port_offsets(3))
    result = subprocess.run(
        [sys.executable, "-m", "trio_raft", "cluster", "--demo", "--base-port", str(base),
         "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=DEADLINE_S, check=False,
    )  # fmt: skip
    print(result.stdout)  # the demo's own timeline: its failover figures
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kill -9" in result.stdout
    assert "every acknowledged write is there" in result.stdout
    assert "all nodes stopped" in result.stdout


@pytest.mark.process
async def test_a_cluster_file_with_tls_serves_wss(tmp_path: Path) -> None:
    """Three nodes from one cluster file with a [tls] table: peers and clients over wss://."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "node.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ports = _ports.allocate(6)
    lines = ['cluster_id = "tls"', 'secret = "0123456789abcdef0123"', 'data_dir = "data"',
             '[tls]', 'cert = "node.pem"', 'ca = "ca.pem"']  # fmt: skip
    for i in range(3):
        lines += [f"[nodes.n{i}]", f'peer = "wss://127.0.0.1:{ports[i]}/raft"',
                  f'client = "wss://127.0.0.1:{ports[3 + i]}/kv"']  # fmt: skip
    cluster = load_cluster_file(_write(tmp_path, "\n".join(lines)))
    client_tls = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            for i in range(3):
                await nursery.start(serve, cluster, f"n{i}")
            urls = [a.client for a in cluster.nodes.values()]
            async with open_client(urls, ssl_context=client_tls, timeout_s=None) as kv:
                await kv.put("secure", "yes")
                assert await kv.get("secure") == b"yes"
            nursery.cancel_scope.cancel()


def test_tls_urls_must_match_the_tls_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must use wss://"):
        (tmp_path / "c.pem").write_text("x")
        load_cluster_file(_write(tmp_path, GOOD + '[tls]\ncert = "c.pem"\nca = "c.pem"\n'))
