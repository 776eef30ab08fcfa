"""Running a real node: the cluster file, and ``trio-raft serve``.

A cluster is described by one TOML file that every node reads::

    cluster_id = "local"
    secret = "a long random string, the same on every node"  # or secret_file = "path"
    token = "what clients must present"  # optional
    admin_token = "what membership changes need"  # optional (else token grants them)
    data_dir = "data"  # a node uses data_dir/<id>

    [tls]  # optional: serve wss:// to peers and clients (then every URL is wss://)
    cert = "node.pem"  # this node's certificate chain (PEM); may hold the key too
    key = "node.key"  # optional: its private key, if not in cert
    ca = "ca.pem"  # the CA that signed every node's certificate (to verify peers)

    [raft]  # optional: any field of trio_raft.Config
    snapshot_entries = 10000

    [nodes.n1]
    peer = "ws://127.0.0.1:7001/raft"  # where the other nodes reach n1 (n1 listens there)
    client = "ws://127.0.0.1:8001/kv"  # where KV clients reach n1
    listen = "127.0.0.1:7501"  # optional: listen for peers here rather than at `peer`
    dial = { n2 = "ws://127.0.0.1:9012/raft" }  # optional: reach these peers by other URLs
    admin = "127.0.0.1:7601"  # optional: HTTP /health, /ready, /metrics (no token: keep private)

Relative paths are relative to the file. Mistakes are reported as :class:`ConfigError` with the
file, the key and what to write instead.

The ``[nodes.*]`` tables are the cluster's *bootstrap* configuration only (every one a voter);
once the cluster has run, its log says who the members are and where they listen. A node added
later has no table: it is started with ``--join`` (:mod:`trio_raft._join`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import ssl
import stat
import sys
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

import attrs
import trio

from ._abc import StateMachine
from ._admin import MetricsRenderer, serve_admin
from ._config import Config
from ._errors import RaftError
from ._join import (
    ConnectAdmin,
    JoinError,
    JoinOptions,
    ask_members,
    exit_when_removed,
    join_cluster,
    kv_admin,
    peer_urls,
    warn_without_leader,
)
from ._node import Node, open_node
from ._transport import open_websocket_transport
from ._types import MAX_ID_CHARS, MAX_MEMBERS, Membership, NodeId
from ._wal._errors import StorageError
from ._wal._file_storage import DEFAULT_MAX_RECORD_BYTES, FileStorage, open_file_storage
from ._wal._fs import OsFileSystem
from ._wal._snapshot_file import SNAPSHOT_FILE, verify_snapshot
from .kv import KVServer, KVStateMachine, serve_kv
from .kv._server import DEFAULT_MAX_CONNECTIONS, MAX_REFUSING

MIN_SECRET_BYTES = 16
"""The shortest ``secret`` a cluster file may hold (the peers' shared key)."""
MIN_TOKEN_CHARS = 16
"""The shortest ``token`` or ``admin_token`` a cluster file may hold: a short one is guessed."""
RESERVED_FILES = 64
"""File descriptors ``serve`` keeps free of connections: for storage (WAL segments, the state
and snapshot files, the lock, directory handles) and the runtime."""
MIN_CLIENT_CONNECTIONS = 16
"""``serve`` refuses to start if the file limit leaves room for fewer client connections."""


class ConfigError(RaftError):
    """The cluster file is missing, unreadable or wrong; the message says where and how."""


@attrs.frozen
class NodeAddress:
    """Where one node listens."""

    peer: str
    """URL the other nodes dial (``ws://host:port/raft``)."""
    client: str
    """URL KV clients dial (``ws://host:port/kv``)."""
    listen: tuple[str, int] | None = None
    """Where to listen for peers, if not at :attr:`peer`'s host and port."""
    dial: Mapping[NodeId, str] = attrs.field(factory=dict)
    """URLs to reach some peers by, instead of their :attr:`peer` (a proxy, a NAT)."""
    admin: tuple[str, int] | None = None
    """Where to serve the admin HTTP endpoint (``/health``, ``/ready``, ``/metrics``), if
    anywhere."""


@attrs.frozen
class ClusterFile:
    """A parsed cluster file."""

    path: Path
    cluster_id: str
    secret: bytes
    token: str | None
    data_dir: Path
    nodes: Mapping[NodeId, NodeAddress]
    raft: Config
    tls: TlsFiles | None = None
    admin_token: str | None = None
    """What clients must present (in their hello) to change the membership; if None, the
    ``token`` grants that too."""


@attrs.frozen
class TlsFiles:
    """The ``[tls]`` table: where this node's certificate, key and the cluster's CA are."""

    cert: Path
    key: Path | None
    ca: Path

    def server_context(self) -> ssl.SSLContext:
        """The context both endpoints serve ``wss://`` with."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """The context to dial peers with: trusts the cluster's CA only."""
        return ssl.create_default_context(cafile=str(self.ca))


_TOP_KEYS = {"cluster_id", "secret", "secret_file", "token", "data_dir", "raft", "nodes", "tls"}
_TOP_KEYS |= {"admin_token"}
_TLS_KEYS = {"cert", "key", "ca"}
_NODE_KEYS = {"peer", "client", "listen", "dial", "admin"}


def load_cluster_file(path: str | os.PathLike[str]) -> ClusterFile:
    """Read and validate a cluster file.

    Raises:
        ConfigError: the file cannot be read or is wrong (the message names the key).
    """
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the cluster file {file}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file} is not valid TOML: {exc}") from exc

    def fail(message: str) -> ConfigError:
        return ConfigError(f"{file}: {message}")

    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise fail(f"unknown key(s) {unknown}; expected some of {sorted(_TOP_KEYS)}")
    cluster_id = data.get("cluster_id")
    if not isinstance(cluster_id, str) or not cluster_id:
        raise fail('cluster_id must be a non-empty string, e.g. cluster_id = "prod-kv"')
    if len(cluster_id) > MAX_ID_CHARS:
        raise fail(f"cluster_id must be at most {MAX_ID_CHARS} characters, got {len(cluster_id)}")
    secret = _secret(data, file)
    token = _token(data, "token", "no client authentication", file)
    admin_token = _token(
        data, "admin_token", "the token, if any, also grants membership changes", file
    )
    data_dir = data.get("data_dir", "data")
    if not isinstance(data_dir, str):
        raise fail('data_dir must be a string, e.g. data_dir = "/var/lib/trio-raft"')
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, dict) or not raw_nodes:
        raise fail('no [nodes.<id>] tables: add one per member, with peer = "ws://host:port/raft" '
                   'and client = "ws://host:port/kv"')  # fmt: skip
    if len(raw_nodes) > MAX_MEMBERS:
        raise fail(f"{len(raw_nodes)} [nodes.*] tables; a cluster has at most {MAX_MEMBERS}")
    nodes: dict[NodeId, NodeAddress] = {}
    for node_id, table in raw_nodes.items():
        if len(node_id) > MAX_ID_CHARS:
            raise fail(
                f"the node id {node_id[:20]!r}... is {len(node_id)} characters; ids are 1 to "
                f"{MAX_ID_CHARS} (the wire format's limit)"
            )
        if not isinstance(table, dict):
            raise fail(f"nodes.{node_id} must be a table with peer and client URLs")
        unknown = sorted(set(table) - _NODE_KEYS)
        if unknown:
            raise fail(
                f"unknown key(s) {unknown} in [nodes.{node_id}]; expected {sorted(_NODE_KEYS)}"
            )
        urls = {}
        for key, path_part, scheme_hint in (
            ("peer", "/raft", "peers"),
            ("client", "/kv", "clients"),
        ):
            url = table.get(key)
            if not isinstance(url, str) or _listen_address(url) is None:
                raise fail(
                    f'nodes.{node_id}.{key} must be a URL like "ws://127.0.0.1:7001{path_part}" '
                    f"(where {scheme_hint} reach {node_id}), got {url!r}"
                )
            urls[key] = url
        address = _host_port(table, "listen", node_id, "7501", "", fail)
        dial = table.get("dial", {})
        if not isinstance(dial, dict) or not all(
            isinstance(v, str) and _listen_address(v) is not None for v in dial.values()
        ):
            raise fail(f"nodes.{node_id}.dial must map peer ids to ws:// URLs, got {dial!r}")
        admin_address = _host_port(
            table, "admin", node_id, "7601", " (where the admin HTTP endpoint listens)", fail
        )
        nodes[str(node_id)] = NodeAddress(
            urls["peer"], urls["client"], address, dict(dial), admin_address
        )
    for node_id, entry in nodes.items():
        strangers = sorted(set(entry.dial) - set(nodes))
        if strangers:
            raise fail(f"nodes.{node_id}.dial names unknown nodes {strangers}")
    _check_addresses(nodes, fail)
    raft = data.get("raft", {})
    if not isinstance(raft, dict):
        raise fail("[raft] must be a table of trio_raft.Config fields")
    _check_raft_types(raft, fail)
    try:
        config = Config(**raft)
    except TypeError as exc:
        fields = sorted(a.name for a in attrs.fields(Config))
        raise fail(f"[raft]: {exc}; the fields are {fields}") from exc
    except ValueError as exc:
        raise fail(f"[raft]: {exc}") from exc
    tls = _tls(data.get("tls"), file)
    secure = tls is not None
    for node_id, entry in nodes.items():
        for url in (entry.peer, entry.client, *entry.dial.values()):
            if url.startswith("wss://") != secure:
                raise fail(
                    f"nodes.{node_id}: {url} must use {'wss' if secure else 'ws'}:// "
                    f"({'a [tls] table is' if secure else 'no [tls] table is'} configured)"
                )
    return ClusterFile(
        file, cluster_id, secret, token, (file.parent / data_dir).resolve(), nodes, config, tls,
        admin_token=admin_token,
    )  # fmt: skip


def _host_port(
    table: Mapping[str, object],
    key: str,
    node_id: object,
    example_port: str,
    what: str,
    fail: Callable[[str], ConfigError],
) -> tuple[str, int] | None:
    """The optional ``host:port`` of ``[nodes.ID] key``, or ``None`` if it is absent."""
    value = table.get(key)
    if value is None:
        return None
    address = _listen_address(f"ws://{value}/") if isinstance(value, str) else None
    if address is None:
        raise fail(
            f'nodes.{node_id}.{key} must look like "127.0.0.1:{example_port}"{what}, got {value!r}'
        )
    return address


def _token(data: Mapping[str, object], key: str, absent: str, file: Path) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{file}: {key} must be a non-empty string (or left out: {absent})")
    if len(value) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"{file}: {key} must be at least {MIN_TOKEN_CHARS} characters, got {len(value)}; "
            "generate one with python -c 'import secrets; print(secrets.token_urlsafe(24))'"
        )
    return value


def _check_addresses(
    nodes: Mapping[NodeId, NodeAddress], fail: Callable[[str], ConfigError]
) -> None:
    """No two endpoints (any node's peer listener or client listener) on one address (port 0
    aside: the kernel picks), and no two nodes with one peer or client URL."""
    seen: dict[tuple[str, int], str] = {}
    urls: dict[str, str] = {}
    for node_id, entry in sorted(nodes.items()):
        peer_host, peer_port = entry.listen or listen_address(entry.peer)
        client_host, client_port = listen_address(entry.client)
        for what, (host, port) in (
            (f"nodes.{node_id}.{'listen' if entry.listen else 'peer'}", (peer_host, peer_port)),
            (f"nodes.{node_id}.client", (client_host, client_port)),
            *([(f"nodes.{node_id}.admin", entry.admin)] if entry.admin else []),
        ):
            key = (host.lower(), port)
            if port == 0:  # the kernel picks a free port for each (tests)
                continue
            if key in seen:
                raise fail(
                    f"{what} and {seen[key]} are both on {host}:{port}: give every node its own "
                    "peer port and client port"
                )
            seen[key] = what
        for what, url in (
            (f"nodes.{node_id}.peer", entry.peer),
            (f"nodes.{node_id}.client", entry.client),
        ):
            if url in urls:
                raise fail(f"{what} and {urls[url]} are both {url}: every node needs its own URLs")
            urls[url] = what


def _check_raft_types(raft: Mapping[str, object], fail: Callable[[str], ConfigError]) -> None:
    """The ``[raft]`` values have their field's type: a bool for a flag, a whole number for a
    count or a size, a number for seconds."""
    hints = typing.get_type_hints(Config)
    for key, value in raft.items():
        expected = hints.get(key)
        if expected is bool:
            ok, kind, example = type(value) is bool, "true or false", "true"
        elif expected is int:
            ok, kind, example = type(value) is int, "a whole number", "1000"
        elif expected is float:
            ok, kind, example = type(value) in (int, float), "a number of seconds", "0.5"
        else:
            continue  # unknown: Config reports it with the list of fields
        if not ok:
            raise fail(f"[raft] {key} must be {kind} (e.g. {key} = {example}), got {value!r}")


def _tls(table: object, file: Path) -> TlsFiles | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"{file}: [tls] must be a table with cert, key and ca")
    unknown = sorted(set(table) - _TLS_KEYS)
    if unknown:
        raise ConfigError(
            f"{file}: unknown key(s) {unknown} in [tls]; expected {sorted(_TLS_KEYS)}"
        )
    paths: dict[str, Path] = {}
    for name in ("cert", "key", "ca"):
        value = table.get(name)
        if value is None and name == "key":
            continue
        if not isinstance(value, str) or not (file.parent / value).is_file():
            raise ConfigError(f"{file}: tls.{name} must name a readable PEM file, got {value!r}")
        paths[name] = (file.parent / value).resolve()
    return TlsFiles(paths["cert"], paths.get("key"), paths["ca"])


def _secret(data: Mapping[str, object], file: Path) -> bytes:
    def fail(message: str) -> ConfigError:
        return ConfigError(f"{file}: {message}")

    if ("secret" in data) == ("secret_file" in data):
        raise fail('give exactly one of secret = "..." and secret_file = "path"')
    if "secret" in data:
        value = data["secret"]
        if not isinstance(value, str):
            raise fail("secret must be a string")
        secret = value.encode()
    else:
        name = data["secret_file"]
        if not isinstance(name, str):
            raise fail("secret_file must be a path string")
        try:
            secret = (file.parent / name).read_bytes().strip()
            mode = (file.parent / name).stat().st_mode
        except OSError as exc:
            raise fail(f"cannot read secret_file {name!r}: {exc.strerror}") from exc
        if mode & stat.S_IROTH:
            print(
                f"trio-raft: warning: {file}: secret_file {name!r} is readable by every user "
                f"of this machine; chmod 600 {file.parent / name}",
                file=sys.stderr,
            )
    if len(secret) < MIN_SECRET_BYTES:
        raise fail(
            f"the secret must be at least {MIN_SECRET_BYTES} bytes; generate one with "
            "python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return secret


def _listen_address(url: str) -> tuple[str, int] | None:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("ws", "wss") or not parts.hostname or port is None:
        return None
    return parts.hostname, port


def listen_address(url: str) -> tuple[str, int]:
    """The ``(host, port)`` of a node URL from a validated cluster file."""
    address = _listen_address(url)
    assert address is not None
    return address


def admin_address(value: str, node_id: NodeId) -> tuple[str, int]:
    """``--admin HOST:PORT`` (where the admin HTTP endpoint listens), checked.

    Raises:
        ConfigError: it is not ``host:port``.
    """
    address = _listen_address(f"ws://{value}/")
    if address is None:
        raise ConfigError(
            f"{node_id}: --admin must look like 127.0.0.1:7601 (where the admin HTTP endpoint "
            f"listens), got {value!r}"
        )
    return address


def join_options(
    cluster: ClusterFile,
    node_id: NodeId,
    urls: Sequence[str],
    *,
    peer: str | None = None,
    client: str | None = None,
    learner: bool = False,
    catch_up_timeout_s: float | None = None,
) -> JoinOptions:
    """What ``serve --join`` needs, checked: a node listed in the cluster file may leave out
    ``peer`` and ``client`` (its table gives them).

    Raises:
        ConfigError: ``peer`` or ``client`` is missing, or ``catch_up_timeout_s`` is not
            positive (the URLs themselves are checked by :func:`serve`).
    """
    listed = cluster.nodes.get(node_id)
    peer = peer or (listed.peer if listed else None)
    client = client or (listed.client if listed else None)
    if peer is None or client is None:
        raise ConfigError(
            f"{node_id}: --join needs --peer URL and --client URL (where this node listens), "
            f"since {cluster.path} has no [nodes.{node_id}] table"
        )
    if catch_up_timeout_s is not None and not catch_up_timeout_s > 0:
        raise ConfigError(f"{node_id}: --catch-up-timeout must be > 0 seconds")
    return JoinOptions(
        tuple(urls), peer, client, learner=learner, catch_up_timeout_s=catch_up_timeout_s
    )


async def serve(
    cluster: ClusterFile,
    node_id: NodeId,
    *,
    join: JoinOptions | None = None,
    out: TextIO = sys.stdout,
    connect_admin: ConnectAdmin | None = None,
    state_machine: StateMachine | None = None,
    admin: tuple[str, int] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``node_id`` of ``cluster`` until cancelled, SIGINT or SIGTERM (which end the node's
    block gracefully, so a leader hands over first), or until its own removal is committed:
    its file storage, its WebSocket transport, the Raft node with ``state_machine`` (a new
    :class:`~trio_raft.kv.KVStateMachine` by default), and the client endpoint.

    The cluster file gives the *bootstrap* configuration only (every ``[nodes.*]`` a voter):
    once the cluster has run, the log decides who the members are and where they are.

    With ``join`` (``serve --join``) the node joins a running cluster, unless its data
    directory shows it has been a member already (a restart: ``join`` is then ignored).
    ``connect_admin`` opens the client that runs the membership operations (a KV client with
    the cluster's token by default). ``admin`` (``serve --admin``) is where the admin HTTP
    endpoint listens, instead of the node table's ``admin`` (a joining node may have no
    table).

    Raises:
        ConfigError: ``node_id`` is not in the cluster file and ``join`` is not given, or a
            ``join`` URL is wrong.
        JoinError: the cluster did not tell its members, or ``node_id`` is a voter already.
        StorageError: the data directory is locked by another process or damaged.
        OSError: an address could not be bound.
    """
    me = _own_address(cluster, node_id, join)
    if admin is not None:
        me = attrs.evolve(me, admin=admin)
    file_limit = raise_file_limit()
    max_clients = client_connection_budget(file_limit, len(cluster.nodes) - 1, _open_files())
    if max_clients < MIN_CLIENT_CONNECTIONS:
        raise ConfigError(
            f"{node_id}: the open-file limit ({file_limit}) leaves room for only {max_clients} "
            f"client connections; raise it (e.g. ulimit -n 4096, or LimitNOFILE= in systemd)"
        )
    peer_host, peer_port = me.listen or listen_address(me.peer)
    client_host, client_port = listen_address(me.client)
    peers = {nid: a.peer for nid, a in cluster.nodes.items() if nid != node_id}
    dial = {nid: url for nid, url in me.dial.items() if nid != node_id}  # wins over addresses
    data_dir = cluster.data_dir / node_id
    server_tls = cluster.tls.server_context() if cluster.tls else None
    client_tls = cluster.tls.client_context() if cluster.tls else None
    connect = connect_admin or kv_admin(cluster.admin_token or cluster.token, client_tls)
    members: Membership | None = None if join is not None else bootstrap_membership(cluster)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_file_storage(
            data_dir, cluster_id=cluster.cluster_id, node_id=node_id
        ) as storage:
            joining = join is not None and not await _has_been_member(storage, data_dir, node_id)
            if join is not None and not joining:
                print(f"{node_id}: this data directory has been a member before: a restart, "
                      "--join ignored", file=out, flush=True)  # fmt: skip
            if joining:
                assert join is not None
                current = await ask_members(connect, join, node_id)
                peers = peer_urls(current, node_id)
            async with (
                open_websocket_transport(
                    node_id, peers, cluster_id=cluster.cluster_id, secret=cluster.secret,
                    host=peer_host, port=peer_port, ssl_context=server_tls,
                    peer_ssl_context=client_tls, dial_overrides=dial,
                ) as transport,
                open_node(
                    node_id, members, transport=transport,
                    state_machine=KVStateMachine() if state_machine is None else state_machine,
                    storage=storage, config=cluster.raft,
                ) as node,
                trio.open_nursery() as nursery,
            ):  # fmt: skip
                kv_server = await nursery.start(
                    partial(_serve_clients, cluster_id=cluster.cluster_id), node, client_host,
                    client_port, LeaderUrls(node, cluster), cluster.token, server_tls,
                    max_clients, cluster.admin_token,
                )  # fmt: skip
                if me.admin is not None:
                    metrics = _metrics_renderer(node, kv_server)
                    admin_port = await nursery.start(
                        partial(serve_admin, metrics=metrics), node, *me.admin
                    )
                    print(
                        f"{node_id}: admin endpoint on http://{me.admin[0]}:{admin_port} "
                        "(/health, /ready, /metrics)", file=out, flush=True,
                    )  # fmt: skip
                print(
                    f"{node_id}: serving peers on {me.peer}, clients on {me.client} (at most "
                    f"{max_clients} connections, file limit {file_limit}), data in {data_dir}",
                    file=out,
                    flush=True,
                )
                # A bootstrap member, or a restart: it has been a member. A joiner has not yet.
                nursery.start_soon(partial(
                    exit_when_removed, node, nursery.cancel_scope, cluster.raft, out,
                    was_member=not joining,
                ))  # fmt: skip
                nursery.start_soon(warn_without_leader, node, cluster.raft, out)
                if joining:
                    assert join is not None
                    nursery.start_soon(join_cluster, node, connect, join, cluster.raft, out)
                task_status.started()
                async for signum in signals:
                    print(f"{node_id}: {signal.Signals(signum).name}, shutting down", file=out)
                    nursery.cancel_scope.cancel()
                    break


def _metrics_renderer(node: Node, kv_server: KVServer) -> MetricsRenderer | None:
    """``/metrics`` for ``node`` and its client endpoint if the prometheus extra is
    installed, else ``None``."""
    try:
        from .prometheus import render
    except ImportError:
        return None
    return partial(render, node, kv_server)


async def serve_state_machine(
    config: str | os.PathLike[str],
    node_id: NodeId,
    state_machine: StateMachine,
    *,
    join: Sequence[str] = (),
    peer: str | None = None,
    client: str | None = None,
    learner: bool = False,
    catch_up_timeout_s: float | None = None,
    admin: str | None = None,
) -> None:
    """Run one node of the cluster that the cluster file ``config`` describes, around
    ``state_machine``, until SIGINT or SIGTERM (a leader hands over first) or its removal:
    what ``trio-raft serve`` does for the key-value store, for any state machine.

    The node keeps its log and snapshots in the file's ``data_dir``, talks to its peers over
    WebSockets, and serves clients on its ``client`` URL: they send commands with
    :meth:`trio_raft.kv.KVClient.call` and read with :meth:`~trio_raft.kv.KVClient.query`
    (with leader redirects, the file's tokens, TLS and limits). Give it a
    :class:`SnapshottingStateMachine` or its log is never compacted. Membership changes work
    as for ``trio-raft serve`` (``trio-raft member ...`` against its client port).

    The keyword arguments are ``trio-raft serve``'s options of the same names. With ``join``
    (members' client URLs) a new node joins the running cluster: it adds itself as a learner,
    catches up and promotes itself (unless ``learner``), as ``serve --join`` does; ``peer``
    and ``client`` are its own URLs (a node listed in the cluster file may leave them out).
    On a restart (its data directory has been a member) ``join`` is ignored. ``admin``
    (``"host:port"``) serves the admin HTTP endpoint (``/health``, ``/ready``, ``/metrics``)
    there instead of at the node table's ``admin``.

    Raises:
        RaftError: the cluster file or an option is wrong (the message says where and how),
            or the join failed (:class:`~trio_raft.RaftError` with what to do).
        StorageError: the data directory is locked by another process or damaged.
        OSError: an address could not be bound.
    """
    cluster = load_cluster_file(config)
    options = None
    if join:
        options = join_options(
            cluster, node_id, join, peer=peer, client=client, learner=learner,
            catch_up_timeout_s=catch_up_timeout_s,
        )  # fmt: skip
    elif peer is not None or client is not None or learner or catch_up_timeout_s is not None:
        raise ConfigError(f"{node_id}: peer, client, learner and catch_up_timeout_s go with join")
    address = admin_address(admin, node_id) if admin is not None else None
    await serve(cluster, node_id, join=options, state_machine=state_machine, admin=address)


def bootstrap_membership(cluster: ClusterFile) -> Membership:
    """The configuration a new cluster starts with: every ``[nodes.*]`` a voter, with address
    ``{"peer": ..., "client": ...}``."""
    return Membership(
        voters=cluster.nodes,
        addresses={nid: {"peer": a.peer, "client": a.client} for nid, a in cluster.nodes.items()},
    )


def _own_address(cluster: ClusterFile, node_id: NodeId, join: JoinOptions | None) -> NodeAddress:
    """Where ``node_id`` listens: its ``[nodes.ID]`` table, with ``--peer``/``--client`` winning."""
    listed = cluster.nodes.get(node_id)
    if join is None:
        if listed is None:
            raise ConfigError(
                f"{cluster.path}: no [nodes.{node_id}] table; the members in the file are "
                f"{sorted(cluster.nodes)}. To add a new node to a running cluster, start it "
                "with --join URL --peer URL --client URL"
            )
        return listed
    for flag, url, path in (("--peer", join.peer, "/raft"), ("--client", join.client, "/kv")):
        if _listen_address(url) is None or url.startswith("wss://") != (cluster.tls is not None):
            scheme = "wss" if cluster.tls else "ws"
            raise ConfigError(
                f"{node_id}: {flag} must be a URL like {scheme}://10.0.0.4:7100{path} (where "
                f"the other nodes reach this one), got {url!r}"
            )
    for url in join.urls:
        if _listen_address(url) is None:
            raise ConfigError(
                f"{node_id}: --join must be a member's client URL like ws://10.0.0.1:7200/kv, "
                f"got {url!r}"
            )
    if listed is None:
        return NodeAddress(join.peer, join.client)
    return attrs.evolve(listed, peer=join.peer, client=join.client)


async def _has_been_member(storage: FileStorage, data_dir: Path, node_id: NodeId) -> bool:
    """Whether a configuration in the data directory lists ``node_id``: a configuration entry
    of its log, or its snapshot's."""
    stored = await storage.load()
    for entry in stored.entries:
        if isinstance(entry.command, Membership) and node_id in entry.command.members:
            return True
    path = os.fspath(data_dir / SNAPSHOT_FILE)
    meta = await trio.to_thread.run_sync(
        verify_snapshot, OsFileSystem(), path, DEFAULT_MAX_RECORD_BYTES
    )
    return meta is not None and meta.membership is not None and node_id in meta.membership.members


@attrs.frozen
class LeaderUrls(Mapping[NodeId, str]):
    """The client URL of each member, for ``serve_kv``'s redirects: read from the node's
    configuration (the ``"client"`` key of each address) at every lookup, so a leader that
    joined later is found; the cluster file is the fallback."""

    node: Node
    cluster: ClusterFile

    def _live(self) -> dict[NodeId, str]:
        membership = self.node.membership
        urls = {nid: a.client for nid, a in self.cluster.nodes.items()}
        if membership is not None:
            for nid, address in membership.addresses.items():
                client = address.get("client") if isinstance(address, Mapping) else None
                if isinstance(client, str):
                    urls[nid] = client
        return urls

    def __getitem__(self, node_id: NodeId) -> str:
        return self._live()[node_id]

    def __iter__(self) -> Iterator[NodeId]:
        return iter(self._live())

    def __len__(self) -> int:
        return len(self._live())


async def _serve_clients(
    node: Node,
    host: str,
    port: int,
    leader_urls: Mapping[NodeId, str],
    token: str | None,
    ssl_context: ssl.SSLContext | None,
    max_connections: int,
    admin_token: str | None = None,
    *,
    cluster_id: str | None = None,
    task_status: trio.TaskStatus[KVServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve_kv(
        node,
        host=host,
        port=port,
        leader_urls=leader_urls,
        token=token,
        admin_token=admin_token,
        ssl_context=ssl_context,
        max_connections=max_connections,
        cluster_id=cluster_id,
        task_status=task_status,
    )


def raise_file_limit() -> int:
    """Raise this process's soft open-file limit (``RLIMIT_NOFILE``) to its hard limit, and
    return the soft limit now in force (a large number where there is none).

    The usual soft limit, 1,024, is far below what a node with 1,024 client connections needs;
    the hard limit is what an administrator allows. Failing to raise it is not an error:
    :func:`client_connection_budget` then fits the connections into what there is.
    """
    try:
        import resource  # not on Windows
    except ImportError:  # pragma: no cover
        return 1 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    if soft == unlimited:
        return 1 << 20
    target = hard if hard != unlimited else max(soft, 1 << 16)
    if target > soft:
        # It may fail: e.g. macOS caps the soft limit below an infinite hard one.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == unlimited else int(soft)


def client_connection_budget(file_limit: int, peers: int, open_files: int) -> int:
    """How many client connections fit in ``file_limit`` descriptors, at most
    :data:`~trio_raft.kv.DEFAULT_MAX_CONNECTIONS`.

    What is kept: :data:`RESERVED_FILES` for storage and the runtime, the ``open_files``
    already open, every peer connection the transport may hold (its default pending pool of
    ``2 * peers + 8``, 2 authenticated inbound and 1 outbound per peer), the listeners and the
    client connections being refused with 503.
    """
    peer_files = (2 * peers + 8) + 2 * peers + peers
    listeners = 4
    budget = file_limit - RESERVED_FILES - open_files - peer_files - listeners - MAX_REFUSING
    return min(DEFAULT_MAX_CONNECTIONS, budget)


def _open_files() -> int:
    """Descriptors open in this process now (0 where that cannot be counted)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def explain(exc: BaseException, cluster: ClusterFile | None, node_id: str) -> str | None:
    """A message a person can act on for an error of ``serve``, or ``None`` if unexpected."""
    if isinstance(exc, ConfigError | StorageError | JoinError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        where = f" (change nodes.{node_id} in {cluster.path})" if cluster else ""
        return (
            f"{node_id}: an address is already in use: {exc.strerror}. Is this node already "
            f"running, or another program on that port?{where}"
        )
    if isinstance(exc, OSError):
        return f"{node_id}: {exc}"
    return None
