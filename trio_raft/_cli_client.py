"""What every client command of ``trio-raft`` (``kv``, ``status``, ``member``,
``transfer-leader``) shares: where the cluster is and how to reach it, one-line errors, and a
quick probe that tells a wrong URL from a down node.

Where the cluster is: ``--url URL`` (repeat), or ``--config FILE``, the cluster file (its
``[nodes.*]`` client URLs, its token and its ``[tls]`` CA). The token, first found wins:
``--token`` (visible to other users in ``ps``: prefer the others), ``--token-file FILE``, the
environment variable :data:`TOKEN_ENV`, the cluster file (``admin_token``, else ``token``, for
``member`` and ``transfer-leader``; ``token`` for the others).

These options are accepted anywhere on the command line: before the command
(``trio-raft --config c.toml status``), after it, or after a ``kv`` op or a ``member`` action.

Every error is one line on standard error, ``trio-raft COMMAND: what is wrong; what to do``.
"""

from __future__ import annotations

import argparse
import math
import os
import ssl
import stat
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar

import attrs
import trio
from trio_websocket import ConnectionRejected, HandshakeError

from ._serve import ClusterFile, ConfigError, listen_address, load_cluster_file
from ._util import unwrap_single_exception_group
from ._ws import ClosedBeforeUpgrade, wrap_client_stream_fast
from .kv import KVAuthError, KVTimeoutError

E = TypeVar("E", bound=BaseException)

TOKEN_ENV: Final = "TRIO_RAFT_TOKEN"
"""The environment variable a client command reads its token from."""
DEFAULT_TIMEOUT_S: Final = 5.0
"""A client command's default ``--timeout``."""
PROBE_S: Final = 1.0
"""How long the probe of a URL may take before the command goes on without its verdict."""
CLIENT_COMMANDS: Final = frozenset({"kv", "status", "member", "transfer-leader"})
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
_OPTIONS: Final = ("url", "config", "token", "token_file", "timeout", "ca", "json")


class CliError(Exception):
    """A failure to report as one line (the message) and an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line: the problem and where help is.

    Abbreviated options are off: the client options are accepted at several levels, and a
    prefix (``--to``) must not be taken for another level's option (``--token``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see PROG --help)`` and exit with status 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def url_argument(text: str) -> str:
    """An argparse type: a node's client URL, or a one-line hint at the right form."""
    suggestion = suggest_url(text)
    if suggestion is not None:
        raise argparse.ArgumentTypeError(suggestion)
    return text


def peer_url_argument(text: str) -> str:
    """An argparse type: a node's peer URL, or a one-line hint at the right form."""
    suggestion = suggest_url(text, "/raft", "peer")
    if suggestion is not None:
        raise argparse.ArgumentTypeError(suggestion)
    return text


def suggest_url(text: str, path: str = "/kv", kind: str = "client") -> str | None:
    """None if ``text`` is a ``ws://`` or ``wss://`` URL with a host and a valid port, else
    what is wrong and the URL to use instead (a ``kind`` URL, whose usual path is ``path``)."""
    form = f"ws://host:port{path}"
    if "://" not in text:
        hostport = text.strip("/") or "host:port"
        return f"{text!r} is not a URL: use ws://{hostport}{path} (the node's {kind} URL)"
    parts = urllib.parse.urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        return f"{text!r} has no valid port: use {form} with a port of 1 to 65535"
    netloc = parts.netloc or "host:port"
    given = parts.path if parts.path not in ("", "/") else path
    if parts.scheme in ("http", "https"):
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{text!r} is an HTTP URL: use {scheme}://{netloc}{given} (a WebSocket URL)"
    if parts.scheme not in ("ws", "wss"):
        return f"{text!r} is not a WebSocket URL: use ws://{netloc}{path} (wss:// with TLS)"
    if not parts.hostname:
        return f"{text!r} has no host: use {form}"
    if port == 0:
        return f"{text!r} has port 0: use the node's {kind} port"
    return None


def seconds_argument(text: str) -> float:
    """An argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def add_client_options(parser: argparse.ArgumentParser, *, json: bool = True) -> None:
    """Add the options of the client commands to ``parser``. They are added at every level
    (before the command, after it, after an op), so none has a default here: read them with
    :func:`target` (or :func:`option`)."""
    group = parser.add_argument_group("reaching the cluster")
    for flag, spec in _CLIENT_OPTIONS:
        if json or flag != "--json":
            group.add_argument(flag, default=argparse.SUPPRESS, **spec)


_CLIENT_OPTIONS: Final[tuple[tuple[str, dict[str, Any]], ...]] = (
    ("--url", {
        "action": "append", "type": url_argument, "metavar": "URL",
        "help": "a node's client URL, ws://host:port/kv (repeat for several)",
    }),
    ("--config", {
        "type": Path, "metavar": "FILE",
        "help": "the cluster file: its nodes' client URLs, token and [tls] CA",
    }),
    ("--token-file", {
        "type": Path, "metavar": "FILE",
        "help": f"read the token from FILE (or set {TOKEN_ENV}; --config reads the file's)",
    }),
    ("--token", {
        "metavar": "TOKEN",
        "help": "the token itself (other users can see it in `ps`: prefer --token-file)",
    }),
    ("--timeout", {
        "type": seconds_argument, "metavar": "SECONDS",
        "help": f"limit of the whole command (default {DEFAULT_TIMEOUT_S:g})",
    }),
    ("--ca", {
        "type": Path, "metavar": "PEM",
        "help": "trust this CA for wss:// URLs (default: the cluster file's, else the system's)",
    }),
    ("--json", {"action": "store_true", "help": "print one JSON object instead"}),
)  # fmt: skip
"""The client options: flag and :meth:`argparse.ArgumentParser.add_argument` keywords."""


def option(args: argparse.Namespace, name: str, default: object = None) -> object:
    """A client option's value wherever it was given, else ``default``."""
    return getattr(args, name, default)


def misplaced_options(args: argparse.Namespace) -> list[str]:
    """The client options given to a command that does not take them (``--json`` to ``kv``)."""
    if args.command == "kv":
        return ["--json"] if hasattr(args, "json") else []
    if args.command in CLIENT_COMMANDS:
        return []
    own = {"serve": {"config"}}.get(args.command, set())  # serve --config is its own option
    return [
        f"--{name.replace('_', '-')}"
        for name in _OPTIONS
        if hasattr(args, name) and name not in own
    ]


@attrs.frozen
class Target:
    """Where a client command goes, resolved from its options."""

    urls: tuple[str, ...]
    token: str | None
    ssl_context: ssl.SSLContext | None
    timeout_s: float
    json: bool
    cluster: ClusterFile | None = None
    ids: tuple[str | None, ...] = ()
    """The node id of each URL, where the cluster file tells it."""


def target(args: argparse.Namespace, *, admin: bool) -> Target:
    """Resolve the client options of ``args``.

    Args:
        args: The parsed command line.
        admin: The command changes the membership: a cluster file's ``admin_token`` is its token.

    Raises:
        CliError: an option is missing, or a file it names cannot be read.
    """
    urls: list[str] = list(option(args, "url") or [])  # type: ignore[call-overload]
    config = option(args, "config")
    cluster = None
    ids: list[str | None] = [None] * len(urls)
    if config is not None:
        assert isinstance(config, Path)
        try:
            cluster = load_cluster_file(config)
        except ConfigError as exc:
            raise CliError(str(exc)) from None
        if not urls:
            for node_id, address in sorted(cluster.nodes.items()):
                urls.append(address.client)
                ids.append(node_id)
    if not urls:
        raise CliError(
            "no cluster given: pass --config FILE (the cluster file) or --url ws://host:port/kv",
            EXIT_USAGE,
        )
    token = _token(args, cluster, admin=admin)
    return Target(
        tuple(urls), token, _ssl_context(args, cluster, urls),
        float(option(args, "timeout", DEFAULT_TIMEOUT_S)),  # type: ignore[arg-type]
        bool(option(args, "json", False)), cluster, tuple(ids),
    )  # fmt: skip


def _token(args: argparse.Namespace, cluster: ClusterFile | None, *, admin: bool) -> str | None:
    given = option(args, "token")
    if given is not None:
        assert isinstance(given, str)
        if not given:
            raise CliError("--token is empty: pass the cluster's token", EXIT_USAGE)
        return given
    token_file = option(args, "token_file")
    if token_file is not None:
        assert isinstance(token_file, Path)
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise CliError(f"cannot read --token-file {token_file}: {reason}") from None
        if not token:
            raise CliError(f"--token-file {token_file} is empty: write the token into it")
        warn_if_world_readable(token_file, "--token-file")
        return token
    from_env = os.environ.get(TOKEN_ENV)
    if from_env:
        return from_env
    if cluster is not None:
        return (cluster.admin_token or cluster.token) if admin else cluster.token
    return None


def warn_if_world_readable(path: Path, what: str) -> None:
    """Warn on standard error if other users may read ``path`` (a secret or token file)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & stat.S_IROTH:
        print(
            f"trio-raft: warning: {what} {path} is readable by every user; chmod 600 it",
            file=sys.stderr,
        )


def _ssl_context(
    args: argparse.Namespace, cluster: ClusterFile | None, urls: Sequence[str]
) -> ssl.SSLContext | None:
    ca = option(args, "ca")
    if ca is None and cluster is not None and cluster.tls is not None:
        ca = cluster.tls.ca
    if ca is None:
        return None
    assert isinstance(ca, Path)
    try:
        return ssl.create_default_context(cafile=str(ca))
    except FileNotFoundError:
        raise CliError(f"cannot read --ca {ca}: no such file; pass the CA's PEM file") from None
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"cannot use --ca {ca} ({exc}): pass the CA's PEM file") from None


# -- the probe -------------------------------------------------------------------------------


@attrs.frozen
class Verdict:
    """What the probe of a URL found."""

    ok: bool
    """It completed a WebSocket upgrade with a KV server."""
    problem: str | None = None
    """What is wrong, what to do (None if ok)."""
    definite: bool = False
    """A retry cannot fix it (a wrong URL, a certificate): the command fails at once."""


async def probe(
    url: str,
    ssl_context: ssl.SSLContext | None,
    cluster: ClusterFile | None,
    timeout_s: float = PROBE_S,
) -> Verdict:
    """Open a WebSocket to ``url`` and close it, within ``timeout_s``: does a KV server
    answer there?

    A refused connection or a timeout is not definite (the node may be restarting); an HTTP
    404, a peer port, a certificate that does not verify or a TLS mismatch are.
    """
    parts = urllib.parse.urlsplit(url)
    tls = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if tls else 80)
    resource = parts.path or "/"
    try:
        status = await _upgrade(host, port, resource, tls, ssl_context, timeout_s)
    except ssl.SSLCertVerificationError as exc:
        hint = "pass its CA with --ca PEM, or --config FILE with a [tls] table"
        return Verdict(
            False, f"{url}: certificate verify failed: {exc.verify_message}; {hint}", True
        )
    except ssl.SSLError as exc:
        return Verdict(
            False, f"{url}: TLS handshake failed ({exc.reason}): does the node serve "
            f"{'ws' if tls else 'wss'}://? use {'ws' if tls else 'wss'}://{parts.netloc}{resource}",
            True,
        )  # fmt: skip
    except OSError as exc:
        return Verdict(False, f"{url}: cannot connect ({exc.strerror or exc}): is the node up?")
    except ClosedBeforeUpgrade:
        hint = "" if tls else "; if the cluster uses TLS, use wss://"
        return Verdict(False, f"{url}: the server closed the connection before the upgrade{hint}")
    except trio.TooSlowError:
        return Verdict(False, f"{url}: no answer within {timeout_s:g} s")
    if status is None:
        return Verdict(True)
    if status[0] == 404 and b"KV service is at" in status[1]:
        problem = f"{url}: no KV service at {resource}: use {parts.scheme}://{parts.netloc}/kv"
        return Verdict(False, problem, definite=True)
    if status[0] == 404:
        try:
            raft = await _upgrade(host, port, "/raft", tls, ssl_context, timeout_s)
        except (OSError, ssl.SSLError, HandshakeError, trio.TooSlowError):
            raft = None
        if raft is not None and raft[0] == 400:
            return Verdict(False, f"{url} is a node's peer (Raft) port, not its client port: "
                           f"{_client_port_hint(cluster, port)}", True)  # fmt: skip
        problem = f"{url}: HTTP 404, not a trio-raft KV endpoint: use the node's client URL"
        return Verdict(False, problem, definite=True)
    if status[0] == 503:
        return Verdict(False, f"{url}: busy (503): the node is at its connection limit")
    return Verdict(False, f"{url}: HTTP {status[0]}: not a trio-raft KV endpoint", True)


async def _upgrade(
    host: str,
    port: int,
    resource: str,
    tls: bool,
    ssl_context: ssl.SSLContext | None,
    timeout_s: float,
) -> tuple[int, bytes] | None:
    """A WebSocket upgrade to ``resource``, closed at once: None if accepted, else the HTTP
    status and body of the rejection. TLS errors are raised as :class:`ssl.SSLError`."""
    try:
        with unwrap_single_exception_group(), trio.fail_after(timeout_s):
            await _open_and_close(host, port, resource, tls, ssl_context, timeout_s)
    except ConnectionRejected as exc:
        return exc.status_code, exc.body or b""
    except BaseExceptionGroup as group:  # the reader task's and the handshake's, both
        rejected = _first(group, ConnectionRejected)
        if rejected is None:
            raise
        return rejected.status_code, rejected.body or b""
    return None


def _first(group: BaseExceptionGroup[BaseException], kind: type[E]) -> E | None:
    for exc in group.exceptions:
        found = _first(exc, kind) if isinstance(exc, BaseExceptionGroup) else exc
        if isinstance(found, kind):
            return found
    return None


async def _open_and_close(
    host: str,
    port: int,
    resource: str,
    tls: bool,
    ssl_context: ssl.SSLContext | None,
    timeout_s: float,
) -> None:
    stream: trio.abc.Stream
    if tls:
        context = ssl_context or ssl.create_default_context()
        ssl_stream = await trio.open_ssl_over_tcp_stream(
            host, port, ssl_context=context, https_compatible=True
        )
        try:
            await ssl_stream.do_handshake()
        except trio.BrokenResourceError as exc:
            await trio.aclose_forcefully(ssl_stream)
            if isinstance(exc.__cause__, ssl.SSLError):
                raise exc.__cause__ from None
            raise ClosedBeforeUpgrade("the server closed the connection") from None
        stream = ssl_stream
    else:
        stream = await trio.open_tcp_stream(host, port)
    async with stream, trio.open_nursery() as nursery:
        address = host if port in (80, 443) else f"{host}:{port}"
        ws = await wrap_client_stream_fast(nursery, stream, address, resource)
        with trio.move_on_after(timeout_s):
            await ws.aclose()
        nursery.cancel_scope.cancel()


def _client_port_hint(cluster: ClusterFile | None, port: int) -> str:
    if cluster is not None:
        for node_id, address in sorted(cluster.nodes.items()):
            if port in (listen_address(address.peer)[1], (address.listen or ("", 0))[1]):
                return f"use {address.client} (nodes.{node_id}.client in {cluster.path})"
    return "use the node's client URL (nodes.ID.client in the cluster file)"


async def check_urls(target: Target) -> list[Verdict]:
    """Probe every URL of ``target`` at once, each for at most :data:`PROBE_S` (or the
    command's timeout, if shorter; the peer-port check may take a second probe). A probe that
    does not finish counts as ok: the command then finds out.

    Raises:
        CliError: a URL is definitely wrong (the first such, in the order given).
    """
    verdicts = [Verdict(True)] * len(target.urls)
    bound = min(PROBE_S, target.timeout_s)

    async def one(i: int) -> None:
        verdicts[i] = await probe(target.urls[i], target.ssl_context, target.cluster, bound)

    with trio.move_on_after(bound * 2):
        async with trio.open_nursery() as nursery:
            for i in range(len(target.urls)):
                nursery.start_soon(one, i)
    for verdict in verdicts:
        if verdict.definite:
            assert verdict.problem is not None
            raise CliError(verdict.problem)
    return verdicts


def report(name: str, exc: BaseException, *, admin: bool) -> int:
    """Print the one-line error of command ``name`` for ``exc``; return the exit code."""
    print(f"trio-raft {name}: {explain_client_error(exc, admin=admin)}", file=sys.stderr)
    return exc.exit_code if isinstance(exc, CliError) else EXIT_FAILED


def explain_client_error(exc: BaseException, *, admin: bool) -> str:
    """What went wrong and what to do, in one line."""
    if isinstance(exc, KVAuthError):
        exc = KVAuthError(str(exc).removesuffix("; pass the servers' token"))
        if admin:
            return (
                f"{exc}; membership commands need the cluster's admin_token (--token-file "
                f"FILE, ${TOKEN_ENV} or --config FILE)"
            )
        return f"{exc}; pass the cluster's token (--token-file FILE, ${TOKEN_ENV} or --config FILE)"
    if isinstance(exc, KVTimeoutError):
        # The client's message speaks of its timeout_s argument: the command's is --timeout.
        text = " ".join(str(exc).split()).replace("raise timeout_s", "raise --timeout")
        return text if "--timeout" in text else f"{text}; raise --timeout if the cluster is slow"
    return " ".join(str(exc).split()) or type(exc).__name__
