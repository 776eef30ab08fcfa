"""Every mistake an operator makes with a client command is one line on standard error that
says what to do, with a non-zero exit and no traceback; and where the options go.

In-process: a one-node KV cluster, a peer (Raft) endpoint and a TLS KV server, all on port 0.
The command line goes through the real parser; the async body runs in this trio run.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
import trustme

from trio_raft._cli import build_parser, main, parse_command_line, run_client_command
from trio_raft._cli_client import TOKEN_ENV, target
from trio_raft._transport import open_websocket_transport

from .kv.test_server_client import TEST_S, kv_cluster

TOKEN = "a-client-token-of-24-chr"
PROG = build_parser().prog


async def run(*argv: str) -> int:
    """Parse ``argv`` like :func:`trio_raft._cli.main` and run it in this trio run."""
    args = parse_command_line(argv)
    if isinstance(args, int):
        return args
    return await run_client_command(args)


@attrs.frozen
class Endpoints:
    kv: str
    """ws://127.0.0.1:P/kv, a one-node cluster with TOKEN."""
    peer_port: int
    """A Raft transport's port."""
    tls: str
    """wss://127.0.0.1:P/kv, a one-node cluster signed by a CA the client does not know."""
    ca: Path
    """That CA."""


@asynccontextmanager
async def endpoints(tmp_path: Path) -> AsyncIterator[Endpoints]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    async with (
        kv_cluster(ids=["solo"], token=TOKEN) as cluster,
        kv_cluster(ids=["t1"], ssl_context=server_context) as tls_cluster,
        open_websocket_transport("p1", {}, cluster_id="c", secret=b"0123456789abcdef") as peer,
    ):
        yield Endpoints(
            cluster.urls["solo"], peer.port, tls_cluster.urls["t1"].replace("ws:", "wss:"),
            tmp_path / "ca.pem",
        )  # fmt: skip


async def closed_port() -> int:
    """A port nothing listens on (bound by the kernel's choice, then closed)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port: int = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    return port


def first_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.splitlines()[0] if err else ""


# (argv; exit code; the start of the first line of stderr), with {kv}, {kv_port}, {peer}, {tls},
# {tmp} and {prog} filled in.
CASES = [
    (["kv", "--url", "http://127.0.0.1:8001/kv", "get", "k"], 2,
     "{prog} kv: error: argument --url: 'http://127.0.0.1:8001/kv' is an HTTP URL: use "
     "ws://127.0.0.1:8001/kv (a WebSocket URL) (see {prog} kv --help)"),
    (["status", "--url", "127.0.0.1:8001"], 2,
     "{prog} status: error: argument --url: '127.0.0.1:8001' is not a URL: "
     "use ws://127.0.0.1:8001/kv (the node's client URL) (see {prog} status --help)"),
    (["member", "list", "--url", "tcp://h:1"], 2,
     "{prog} member list: error: argument --url: 'tcp://h:1' is not a WebSocket URL: "
     "use ws://h:1/kv (wss:// with TLS) (see {prog} member list --help)"),
    (["member", "add", "n5", "--peer", "10.0.0.5:7100", "--client", "ws://h:1/kv"], 2,
     "{prog} member add: error: argument --peer: '10.0.0.5:7100' is not a URL: use "
     "ws://10.0.0.5:7100/raft (the node's peer URL) (see {prog} member add --help)"),
    (["kv", "--url", "{kv}", "--timeout", "-1", "get", "k"], 2,
     "{prog} kv: error: argument --timeout: must be a positive number of seconds, got -1 "
     "(see {prog} kv --help)"),
    (["status", "--url", "{kv}", "--timeout", "0"], 2,
     "{prog} status: error: argument --timeout: must be a positive number of seconds, got 0 "
     "(see {prog} status --help)"),
    (["status"], 2,
     "trio-raft status: no cluster given: pass --config FILE (the cluster file) or --url ws://host:port/kv"),
    (["kv", "get", "k", "--url", "{kv}", "--bogus"], 2,
     "{prog}: error: unrecognized arguments: --bogus (see {prog} --help)"),
    (["--url", "{kv}", "demo"], 2,
     "{prog}: error: --url go with the client commands (kv, status, member, transfer-leader), "
     "not demo (see {prog} --help)"),
    (["--json", "kv", "get", "k", "--url", "{kv}"], 2,
     "{prog}: error: --json go with status, member and transfer-leader, not kv "
     "(see {prog} --help)"),
    (["kv", "get", "k", "--url", "ws://127.0.0.1:{kv_port}/wrong"], 1,
     "trio-raft kv get: ws://127.0.0.1:{kv_port}/wrong: no KV service at /wrong: use "
     "ws://127.0.0.1:{kv_port}/kv"),
    (["kv", "get", "k", "--url", "ws://127.0.0.1:{peer}/kv"], 1,
     "trio-raft kv get: ws://127.0.0.1:{peer}/kv is a node's peer (Raft) port, "
     "not its client port: use the node's client URL (nodes.ID.client in the cluster file)"),
    (["status", "--url", "ws://127.0.0.1:{peer}/kv"], 1,
     "trio-raft status: ws://127.0.0.1:{peer}/kv is a node's peer (Raft) port, "
     "not its client port: use the node's client URL (nodes.ID.client in the cluster file)"),
    (["member", "list", "--url", "{tls}"], 1,
     "trio-raft member list: {tls}: certificate verify failed: "
     "unable to get local issuer certificate; pass its CA with --ca PEM, or --config FILE "
     "with a [tls] table"),
    (["kv", "get", "k", "--url", "wss://127.0.0.1:{kv_port}/kv"], 1,
     "trio-raft kv get: wss://127.0.0.1:{kv_port}/kv: TLS handshake failed (WRONG_VERSION_NUMBER):"
     " does the node serve ws://? use ws://127.0.0.1:{kv_port}/kv"),
    (["kv", "put", "k", "v", "--url", "ws://127.0.0.1:{closed}/kv", "--timeout", "0.3"], 1,
     "trio-raft kv put: put 'k': no answer in time (last: ws://127.0.0.1:{closed}/kv: cannot "
     "connect"),
    (["kv", "get", "k", "--url", "{tls}", "--ca", "{tmp}/missing.pem"], 1,
     "trio-raft kv get: cannot read --ca {tmp}/missing.pem: no such file; pass the CA's PEM file"),
    (["kv", "get", "k", "--url", "{kv}", "--token-file", "{tmp}/none"], 1,
     "trio-raft kv get: cannot read --token-file {tmp}/none: No such file or directory"),
    (["kv", "get", "k", "--url", "{kv}", "--token-file", "{tmp}/wrong-token"], 1,
     "trio-raft kv get: {kv}: the first request must be a hello with the right token; pass the "
     "cluster's token (--token-file FILE, $TRIO_RAFT_TOKEN or --config FILE)"),
]  # fmt: skip


async def test_every_client_error_is_one_line_that_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    (tmp_path / "wrong-token").write_text("not-the-token-at-all\n")
    (tmp_path / "wrong-token").chmod(0o600)
    with trio.fail_after(4 * TEST_S):
        async with endpoints(tmp_path) as where:
            fill = {
                "kv": where.kv, "kv_port": where.kv.split(":")[2].split("/")[0],
                "peer": str(where.peer_port), "tls": where.tls, "tmp": str(tmp_path),
                "prog": PROG, "closed": await closed_port(),
            }  # fmt: skip
            for argv, code, expected in CASES:
                filled = [arg.format(**fill) for arg in argv]
                got = await run(*filled)
                line = first_line(capsys)
                want = expected.format(**fill)
                assert (got, line[: len(want)]) == (code, want), filled


async def test_options_go_before_or_after_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with trio.fail_after(4 * TEST_S):
        async with endpoints(tmp_path) as where:
            assert await run("--url", where.kv, "kv", "put", "k", "v1") == 0
            assert await run("kv", "--url", where.kv, "put", "k", "v2") == 0
            assert await run("kv", "put", "k", "v3", "--url", where.kv) == 0
            capsys.readouterr()
            assert await run("kv", "get", "k", "--url", where.kv, "--timeout", "2") == 0
            assert capsys.readouterr().out == "v3\n"
            assert await run("member", "--url", where.kv, "list", "--json") == 0
            assert "solo" in json.loads(capsys.readouterr().out)["voters"]
            assert await run("--url", where.kv, "transfer-leader") == 1  # a single voter
            assert "invalid_membership" in first_line(capsys)
            # The TLS node, with the CA and the token from files.
            (tmp_path / "token").write_text(TOKEN)
            assert await run("status", "--url", where.tls, "--ca", str(where.ca), "--json") == 0
            assert json.loads(capsys.readouterr().out)["nodes"][0]["role"] == "leader"


def test_cluster_refuses_ports_it_cannot_have(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cluster", "--base-port", "65500"]) == 1
    assert first_line(capsys) == (
        "trio-raft cluster: --base-port 65500 puts the client ports up to 65603, past 65535; "
        "use a base port of at most 65432"
    )
    assert main(["cluster", "--base-port", "70000"]) == 2
    assert first_line(capsys) == (
        f"{PROG} cluster: error: argument --base-port: must be a port between 1 and 65535, got "
        f"70000 (see {PROG} cluster --help)"
    )


@pytest.mark.process  # the check binds the cluster's fixed ports
def test_cluster_refuses_a_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:  # port 0: the kernel's choice, free a moment ago
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["cluster", "--base-port", str(port - 1)]) == 1
    assert first_line(capsys) == (
        f"trio-raft cluster: port {port} (n1's peer port) is in use on 127.0.0.1 (Address "
        "already in use): stop what uses it (another `trio-raft cluster`?) or pick another "
        "--base-port"
    )


def test_where_the_token_comes_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("from-the-token-file\n")
    (tmp_path / "token").chmod(0o644)
    (tmp_path / "cluster.toml").write_text(
        'cluster_id = "t"\nsecret = "0123456789abcdef0123"\ntoken = "from-the-cluster-file"\n'
        'admin_token = "the-admin-token-in-the-file"\n'
        '[nodes.n1]\npeer = "ws://127.0.0.1:7001/raft"\nclient = "ws://127.0.0.1:8001/kv"\n'
    )

    def token(*argv: str, admin: bool = False) -> str | None:
        args = parse_command_line(["status", *argv])
        assert not isinstance(args, int)
        return target(args, admin=admin).token

    config = ("--config", str(tmp_path / "cluster.toml"))
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert token(*config) == "from-the-cluster-file"
    assert token(*config, admin=True) == "the-admin-token-in-the-file"
    args = parse_command_line(["status", *config])
    assert not isinstance(args, int)
    assert target(args, admin=False).urls == ("ws://127.0.0.1:8001/kv",)
    monkeypatch.setenv(TOKEN_ENV, "from-the-environment")
    assert token(*config) == "from-the-environment"
    capsys.readouterr()
    assert token(*config, "--token-file", str(tmp_path / "token")) == "from-the-token-file"
    assert first_line(capsys) == (
        f"trio-raft: warning: --token-file {tmp_path / 'token'} is readable by every user; "
        "chmod 600 it"
    )
    assert token(*config, "--token-file", str(tmp_path / "token"), "--token", "given") == "given"
