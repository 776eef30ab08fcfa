"""The ``trio-raft`` command line (also ``python -m trio_raft``).

Subcommands:

``demo``
    A simulated cluster elects a leader, replicates, loses its leader and heals, printed as a
    timeline on virtual time (see :mod:`trio_raft._demo`).

Exit codes: 0 on success, 1 when the command ran but failed (the output says why), 2 for a usage
error (argparse prints what is wrong), 130 when interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ._demo import MAX_NODES, MIN_NODES, run_demo
from ._version import __version__

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
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description="Raft consensus for trio applications.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trio-raft`` command with ``argv`` (``sys.argv[1:]`` by default).

    Returns:
        The exit code: 0 on success, 1 if the command failed, 2 for a usage error (after
        argparse printed the problem to standard error), 130 on Ctrl-C.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if args.command == "demo":
            ok = run_demo(seed=args.seed, nodes=args.nodes)
            return EXIT_OK if ok else EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    parser.error(f"unknown command {args.command!r}")  # unreachable: argparse checks choices
