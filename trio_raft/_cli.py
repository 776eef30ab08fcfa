"""The ``trio-raft`` command line (also ``python -m trio_raft``).

Subcommands:

``demo``
    A simulated cluster elects a leader, replicates, loses its leader and heals, printed as a
    timeline on virtual time (see :mod:`trio_raft._demo`).
``serve``
    Run one node of a real cluster described by a cluster file (see :mod:`trio_raft._serve`).
``cluster``
    Start a local cluster of separate processes and watch it (or ``--demo``: a scripted tour
    with ``kill -9`` of the leader that ends by itself).
``kv``
    get / put / delete / cas / list against a running cluster.
``status``
    The status of each node of a running cluster, and its configuration.
``member``, ``transfer-leader``
    Change the membership of a running cluster, hand leadership over (see
    :mod:`trio_raft._cli_member`).
``snapshot save``, ``snapshot restore``, ``inspect``
    Back up a running cluster, seed a new one from a backup, look inside a data directory
    (see :mod:`trio_raft._cli_snapshot`).

Exit codes: 0 on success, 1 when the command ran but failed (the output says why), 2 for a usage
error (argparse prints what is wrong), 130 when interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import trio

from . import _logging
from ._cli_client import (
    TOKEN_ENV,
    CliError,
    OneLineParser,
    Target,
    add_client_options,
    check_urls,
    misplaced_options,
    report,
    target,
)
from ._cli_member import add_member_commands, configuration_line, run_member_command
from ._cli_snapshot import add_snapshot_commands, misplaced_snapshot_options, run_snapshot_command
from ._cli_status import query_statuses
from ._demo import MAX_NODES, MIN_NODES, run_demo
from ._errors import RaftError
from ._join import JoinOptions
from ._local_cluster import PortError, check_ports, render, run_local_cluster
from ._serve import (
    ClusterFile,
    ConfigError,
    admin_address,
    explain,
    join_options,
    load_cluster_file,
    serve,
)
from ._version import __version__
from .kv import KVError, open_client

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _node_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not MIN_NODES <= value <= MAX_NODES:
        raise argparse.ArgumentTypeError(
            f"must be between {MIN_NODES} and {MAX_NODES}, got {value} (the demo crashes the "
            "leader, and the survivors must still form a majority)"
        )
    return value


def _prog() -> str:
    if os.path.basename(sys.argv[0]) == "__main__.py":
        return "python -m trio_raft"
    return "trio-raft"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``trio-raft`` command."""
    parser = OneLineParser(
        prog=_prog(),
        description="Raft consensus for trio applications.",
        epilog="The client commands (kv, status, member, transfer-leader) read where the "
        "cluster is from --config FILE or --url URL, and the token from --token-file FILE, "
        f"${TOKEN_ENV} or the cluster file; these options may come before or after the "
        "command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_client_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="watch a simulated cluster elect, replicate, lose its leader and heal",
        description=(
            "Run a simulated cluster on virtual time and print a timeline: the first election, "
            "a few writes, the leader crashes, failover, more writes, the old leader restarts and "
            "catches up, and a final check that every node holds the same state. The same seed "
            "always prints the same timeline. Exits 0 if the nodes agree, 1 otherwise."
        ),
    )
    demo.add_argument(
        "--seed", type=_seed, default=1, metavar="N",
        help="seed of every random choice in the run (default: %(default)s)",
    )  # fmt: skip
    demo.add_argument(
        "--nodes", type=_node_count, default=3, metavar="N",
        help=f"cluster size, {MIN_NODES} to {MAX_NODES} (default: %(default)s)",
    )  # fmt: skip
    _add_real_commands(commands)
    return parser


def _port(text: str) -> int:
    value = _seed(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port between 1 and 65535, got {value}")
    return value


def _add_real_commands(commands: argparse._SubParsersAction[OneLineParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="run one node of a cluster described by a cluster file",
        description="Run one node: its data directory, its peer and client endpoints. "
        "SIGINT or SIGTERM stops it cleanly.",
    )
    serve.add_argument("--config", required=True, metavar="FILE", help="the cluster file (TOML)")
    serve.add_argument("--id", required=True, metavar="ID", help="which [nodes.ID] this node is")
    serve.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default="info",
        help="the least severe messages logged (default: info: elections, role and leader "
        "changes, peer links, snapshots)",
    )  # fmt: skip
    serve.add_argument(
        "--log-format", choices=("text", "json"), default="text",
        help="text lines, or one JSON object per line (time, level, logger, node, message and "
        "the event's fields) for log collectors",
    )  # fmt: skip
    serve.add_argument(
        "--admin", metavar="HOST:PORT",
        help="serve the admin HTTP endpoint (/health, /ready, /metrics) here, instead of at "
        "the node table's admin (a node started with --join may have no table)",
    )  # fmt: skip
    join = serve.add_argument_group(
        "joining a running cluster",
        "A new node (no [nodes.ID] table needed) adds itself as a learner, catches up and "
        "promotes itself. On a restart (its data directory has been a member) --join is ignored.",
    )
    join.add_argument(
        "--join", action="append", metavar="URL",
        help="a member's client URL, ws://host:port/kv (repeat for several)",
    )  # fmt: skip
    join.add_argument("--peer", metavar="URL", help="where the other nodes reach this one")
    join.add_argument("--client", metavar="URL", help="where KV clients reach this one")
    join.add_argument("--learner", action="store_true", help="stay a learner: do not promote")
    join.add_argument(
        "--catch-up-timeout", type=float, default=None, metavar="SECONDS",
        help="how long the promotion waits for the node to catch up (default: the [raft] "
        "catch_up_timeout_s, 60)",
    )  # fmt: skip

    cluster = commands.add_parser(
        "cluster",
        help="start a local cluster of separate processes and watch it",
        description="Start N `trio-raft serve` processes on 127.0.0.1 and show a live status "
        "view; Ctrl-C stops every process. --demo instead runs a scripted tour (writes, kill -9 "
        "of the leader, failover, restart, catch-up) and exits.",
    )
    cluster.add_argument("--nodes", type=_node_count, default=3, metavar="N")
    cluster.add_argument(
        "--base-port",
        type=_port,
        default=7100,
        metavar="PORT",
        help="peers listen on PORT+i, clients on PORT+100+i (default 7100)",
    )
    cluster.add_argument(
        "--dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the cluster file, logs and data here (default: a new temporary directory, "
        "whose data is deleted at the end but whose cluster file and logs are kept)",
    )
    cluster.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop by itself after this long",
    )
    cluster.add_argument("--demo", action="store_true", help="run the scripted tour and exit")

    kv = commands.add_parser(
        "kv",
        help="read and write keys of a running cluster",
        description="get / put / delete / cas / list. Exits 0 when done, 1 when the key is "
        "absent (get), the value differs (cas) or the cluster failed to answer.",
    )
    add_client_options(kv, json=False)
    ops = kv.add_subparsers(dest="op", metavar="OP", required=True)
    get = ops.add_parser("get", help="print a key's value")
    get.add_argument("key")
    put = ops.add_parser("put", help="set a key")
    put.add_argument("key")
    put.add_argument("value")
    delete = ops.add_parser("delete", help="remove a key")
    delete.add_argument("key")
    cas = ops.add_parser("cas", help="set KEY to NEW if it is EXPECTED ('-' means absent)")
    cas.add_argument("key")
    cas.add_argument("expected")
    cas.add_argument("new")
    listing = ops.add_parser("list", help="list keys with a prefix")
    listing.add_argument("prefix", nargs="?", default="")
    listing.add_argument("--limit", type=_positive, default=100)
    for op in (get, put, delete, cas, listing):
        add_client_options(op, json=False)

    status = commands.add_parser(
        "status",
        help="show each node's role, term and progress",
        description="Ask every node at once (each within --timeout) for its status. Exits 0 "
        "if every node answered, 1 otherwise (the nodes that did not are shown as down).",
    )
    add_client_options(status)
    add_member_commands(commands)
    add_snapshot_commands(commands)


def _positive(text: str) -> int:
    value = _seed(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


async def _kv_command(args: argparse.Namespace) -> int:
    try:
        where = target(args, admin=False)
        await check_urls(where)
        return await _kv_op(args, where)
    except (CliError, KVError, OSError) as exc:
        return report(f"kv {args.op}", exc, admin=False)


async def _kv_op(args: argparse.Namespace, where: Target) -> int:
    async with open_client(
        where.urls, token=where.token, timeout_s=where.timeout_s, ssl_context=where.ssl_context
    ) as kv:
        if args.op == "get":
            value = await kv.get(args.key)
            if value is None:
                print(f"{args.key}: absent", file=sys.stderr)
                return EXIT_FAILED
            print(value.decode(errors="backslashreplace"))
        elif args.op == "put":
            await kv.put(args.key, args.value)
        elif args.op == "delete":
            print("deleted" if await kv.delete(args.key) else "absent")
        elif args.op == "cas":
            expected = None if args.expected == "-" else args.expected
            swapped = await kv.cas(args.key, expected, args.new)
            print("swapped" if swapped else "not swapped: the value differs")
            return EXIT_OK if swapped else EXIT_FAILED
        else:
            for key in await kv.list(args.prefix, limit=args.limit):
                print(key)
    return EXIT_OK


async def _status_command(args: argparse.Namespace) -> int:
    try:
        where = target(args, admin=False)
    except CliError as exc:
        return report("status", exc, admin=False)
    view = await query_statuses(where)
    for problem in view.problems:
        print(f"trio-raft status: {problem}", file=sys.stderr)
    if where.json:
        print(json.dumps(view.as_json(), sort_keys=True))
    else:
        print(render(view.by_node()))
        configuration = configuration_line(view.by_node())
        if configuration is not None:
            print(configuration)
    return EXIT_OK if not view.problems else EXIT_FAILED


async def run_client_command(args: argparse.Namespace) -> int:
    """Run a parsed client command (``kv``, ``status``, ``member``, ``transfer-leader``) in
    the current trio run; return its exit code (its errors are printed, one line each)."""
    if args.command in ("member", "transfer-leader"):
        return await run_member_command(args)
    if args.command == "kv":
        return await _kv_command(args)
    return await _status_command(args)


def _join_options(args: argparse.Namespace, cluster: ClusterFile) -> JoinOptions | None:
    """``serve``'s join flags, checked (a node listed in the file may leave out --peer and
    --client: its table gives them)."""
    given = {"--peer": args.peer, "--client": args.client, "--learner": args.learner,
             "--catch-up-timeout": args.catch_up_timeout}  # fmt: skip
    flags = [flag for flag, value in given.items() if value not in (None, False)]
    if not args.join:
        if flags:
            raise ConfigError(
                f"{args.id}: {', '.join(flags)} go with --join URL (they describe how this node "
                "joins a running cluster)"
            )
        return None
    return join_options(
        cluster, args.id, args.join, peer=args.peer, client=args.client, learner=args.learner,
        catch_up_timeout_s=args.catch_up_timeout,
    )  # fmt: skip


def _run_serve(args: argparse.Namespace) -> int:
    _logging.configure(args.log_level, args.log_format, args.id)
    cluster = None
    try:
        cluster = load_cluster_file(args.config)
        join = _join_options(args, cluster)
        admin = None if args.admin is None else admin_address(args.admin, args.id)
        trio.run(partial(serve, cluster, args.id, join=join, admin=admin))
    except (RaftError, OSError) as exc:
        message = explain(exc, cluster, args.id)
        if message is None:
            raise
        print(f"trio-raft serve: {message}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def parse_command_line(argv: Sequence[str] | None) -> argparse.Namespace | int:
    """The parsed command line, or the exit code if parsing ended the command (``--help``,
    ``--version``, or a usage error, printed as one line)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command in ("snapshot", "inspect"):
        misplaced = misplaced_snapshot_options(args)
    else:
        misplaced = misplaced_options(args)
    if misplaced:
        takers = "the client commands (kv, status, member, transfer-leader)"
        if args.command == "kv":
            takers = "status, member and transfer-leader"
        print(
            f"{parser.prog}: error: {', '.join(misplaced)} go with {takers}, not {args.command} "
            f"(see {parser.prog} --help)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trio-raft`` command with ``argv`` (``sys.argv[1:]`` by default).

    Returns:
        The exit code: 0 on success, 1 if the command failed, 2 for a usage error (after
        argparse printed the problem to standard error), 130 on Ctrl-C.
    """
    args = parse_command_line(argv)
    if isinstance(args, int):
        return args
    try:
        if args.command == "demo":
            ok = run_demo(seed=args.seed, nodes=args.nodes)
            return EXIT_OK if ok else EXIT_FAILED
        if args.command == "serve":
            return _run_serve(args)
        if args.command == "cluster":
            try:
                check_ports(args.nodes, args.base_port)
            except PortError as exc:
                print(f"trio-raft cluster: {exc}", file=sys.stderr)
                return EXIT_FAILED
            ok = trio.run(
                partial(
                    run_local_cluster, args.nodes, directory=args.dir, base_port=args.base_port,
                    duration_s=args.duration, demo=args.demo,
                )
            )  # fmt: skip
            return EXIT_OK if ok else EXIT_FAILED
        if args.command in ("snapshot", "inspect"):
            return run_snapshot_command(args)
        return trio.run(run_client_command, args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `trio-raft status --json | head -c 100`: the reader left
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the exit's flush does not fail again
        return EXIT_FAILED
