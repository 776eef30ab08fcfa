"""A replicated bank: accounts and transfers that never overdraw, on a trio-raft cluster.

The state machine below is all an application writes. ``trio-raft``'s client port serves it
as it is: clients send commands with :meth:`trio_raft.kv.KVClient.call` and read with
:meth:`~trio_raft.kv.KVClient.query`, and get leader redirects, tokens and limits for free.

Run one node of a cluster described by a cluster file (the same file ``trio-raft serve``
reads)::

    python examples/bank.py serve --config cluster.toml --id n1

and talk to it::

    python examples/bank.py open alice 100 --url ws://127.0.0.1:8001/kv
    python examples/bank.py transfer alice bob 30 --url ws://127.0.0.1:8001/kv
    python examples/bank.py balances --url ws://127.0.0.1:8001/kv

Commands are at most once (see :meth:`~trio_raft.kv.KVClient.call`): a transfer carries a
client-chosen id, and the bank applies each id once, so a client that lost the answer can
resend it safely.
"""

from __future__ import annotations

import argparse
import functools
import secrets
import sys
from collections.abc import Iterable, Iterator

import cbor2
import trio

from trio_raft import serve_state_machine
from trio_raft.kv import CommandFailedError, open_client

MAX_DONE_IDS = 100_000
"""Transfer ids remembered for de-duplication (the oldest are forgotten first)."""


class InsufficientFunds(ValueError):
    """A transfer would overdraw its source account; nothing changed."""


class Bank:
    """Accounts with non-negative balances. Deterministic, as every state machine must be."""

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}
        self.done: dict[str, object] = {}  # transfer id -> its result (insertion ordered)

    def apply(self, command: object) -> object:
        """``["open", name, amount]``, ``["transfer", id, src, dst, amount]``."""
        match command:
            case ["open", str(name), int(amount)] if amount >= 0:
                if name in self.balances:
                    raise ValueError(f"account {name!r} exists")
                self.balances[name] = amount
                return amount
            case ["transfer", str(tid), str(src), str(dst), int(amount)] if amount > 0:
                if tid in self.done:
                    return self.done[tid]  # a resent transfer: answer as the first time
                for account in (src, dst):
                    if account not in self.balances:
                        raise ValueError(f"no account {account!r}")
                if self.balances[src] < amount:
                    raise InsufficientFunds(
                        f"{src!r} has {self.balances[src]}, cannot send {amount}"
                    )
                self.balances[src] -= amount
                self.balances[dst] += amount
                result = [self.balances[src], self.balances[dst]]
                self.done[tid] = result
                if len(self.done) > MAX_DONE_IDS:
                    del self.done[next(iter(self.done))]
                return result
        raise ValueError(f"unknown command {command!r}")

    def query(self, query: object) -> object:
        """``["balance", name]`` or ``["balances"]``."""
        match query:
            case ["balance", str(name)]:
                return self.balances.get(name)
            case ["balances"]:
                return dict(self.balances)
        raise ValueError(f"unknown query {query!r}")

    def snapshot(self) -> Iterable[bytes]:
        """The whole state, captured now (the applier calls this between two applies)."""
        return [cbor2.dumps([self.balances, list(self.done.items())])]

    def restore(self, chunks: Iterable[bytes]) -> None:
        """Replace the state with a snapshot's."""
        balances, done = cbor2.loads(b"".join(chunks))
        self.balances = dict(balances)
        self.done = dict((k, v) for k, v in done)


def new_transfer_id() -> str:
    """A fresh id for a transfer (resend the same id to retry it)."""
    return secrets.token_hex(8)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bank.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run one node of the bank's cluster")
    serve.add_argument("--config", required=True)
    serve.add_argument("--id", required=True)
    serve.add_argument("--join", action="append", default=[], help="a member's client URL")
    serve.add_argument("--peer", help="with --join: where the other nodes reach this one")
    serve.add_argument("--client", help="with --join: where clients reach this one")
    serve.add_argument("--admin", help="host:port of the admin HTTP endpoint (/health ...)")
    for name, args in (
        ("open", ("name", "amount")),
        ("transfer", ("src", "dst", "amount")),
        ("balances", ()),
    ):
        sub = commands.add_parser(name)
        for arg in args:
            sub.add_argument(arg, type=int if arg == "amount" else str)
        sub.add_argument("--url", action="append", required=True)
        sub.add_argument("--token")
    return parser


async def _client(args: argparse.Namespace) -> object:
    async with open_client(args.url, token=args.token) as client:
        if args.command == "open":
            return await client.call(["open", args.name, args.amount])
        if args.command == "transfer":
            return await client.call(
                ["transfer", new_transfer_id(), args.src, args.dst, args.amount]
            )
        return await client.query(["balances"])


def main(argv: Iterator[str] | None = None) -> int:
    args = _parser().parse_args(None if argv is None else list(argv))
    if args.command == "serve":
        serve = functools.partial(
            serve_state_machine, args.config, args.id, Bank(), join=args.join, peer=args.peer,
            client=args.client, admin=args.admin,
        )  # fmt: skip
        trio.run(serve)
        return 0
    try:
        print(trio.run(_client, args))
    except CommandFailedError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
