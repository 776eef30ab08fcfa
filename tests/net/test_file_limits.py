"""``trio-raft serve`` and the open-file limit.

With the usual soft limit of 1,024 descriptors, 1,100 connections that never finished their
HTTP upgrade made a follower exit (``Too many open files``) at its next term change, when
storage opened a file. ``serve`` now raises the soft limit to the hard one and sizes the client
port's ``max_connections`` to leave descriptors for storage; if the limit is too low for that,
it refuses to start and says how to raise it.
"""

from __future__ import annotations

import io
import resource
from functools import partial
from pathlib import Path

import pytest
import trio

import trio_raft._serve as serve_module
from trio_raft._serve import (
    RESERVED_FILES,
    ConfigError,
    client_connection_budget,
    load_cluster_file,
    raise_file_limit,
    serve,
)
from trio_raft.kv._server import DEFAULT_MAX_CONNECTIONS


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"needs a finite hard file limit above 256, got {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        assert raise_file_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, hard), hard))


def test_the_client_budget_leaves_room_for_storage_and_peers() -> None:
    assert client_connection_budget(1 << 20, 2, 10) == DEFAULT_MAX_CONNECTIONS
    budget = client_connection_budget(1024, 2, 10)
    assert budget < 1024 - RESERVED_FILES - 10
    peers = 2 * 2 + 8 + 2 * 2 + 2
    assert budget + RESERVED_FILES + 10 + peers <= 1024


def cluster_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(
        'cluster_id = "limits"\nsecret = "0123456789abcdef0123"\n'
        '[nodes.n1]\npeer = "ws://127.0.0.1:0/raft"\nclient = "ws://127.0.0.1:0/kv"\n'
    )
    return path


async def test_serve_fits_client_connections_in_the_file_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serve_module, "raise_file_limit", lambda: 600)
    cluster = load_cluster_file(cluster_file(tmp_path))
    out = io.StringIO()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve, cluster, "n1", out=out))
            nursery.cancel_scope.cancel()
    line = out.getvalue()
    assert "file limit 600" in line, line
    limit = int(line.split("(at most ")[1].split(" ")[0])
    assert 16 <= limit < 600 - RESERVED_FILES


async def test_serve_refuses_a_file_limit_too_low(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serve_module, "raise_file_limit", lambda: 100)
    cluster = load_cluster_file(cluster_file(tmp_path))
    with pytest.raises(ConfigError, match=r"open-file limit \(100\).*ulimit -n"):
        await serve(cluster, "n1", out=io.StringIO())
