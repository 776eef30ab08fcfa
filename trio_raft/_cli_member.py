"""The membership commands of ``trio-raft``: ``member list|add|promote|demote|remove`` and
``transfer-leader``, all through the KV service's membership ops (see :mod:`trio_raft.kv`).

Each prints a short human summary (or, with ``--json``, one JSON object) on standard output,
and on failure says why and what to do on standard error. Exit codes: 0 done, 1 refused or
failed, 2 usage (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Final

import trio

from ._cli_client import (
    CliError,
    OneLineParser,
    add_client_options,
    check_urls,
    peer_url_argument,
    report,
    seconds_argument,
    target,
    url_argument,
)
from ._config import Config
from .kv import (
    KVClient,
    KVError,
    MembershipRefusedError,
    TransferFailedError,
    open_client,
)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
PROMOTE_MARGIN_S: Final = 10.0
"""A promote's client timeout is its catch-up timeout plus this."""

_HINTS: Final = {
    "change_in_progress": "another change (or a leadership transfer) is in flight: wait until "
    "`trio-raft member list` shows a committed configuration that is not joint, then retry",
    "invalid_membership": "nothing changed; fix the request (`trio-raft member list` shows the "
    "members and their roles)",
    "not_caught_up": "it stays a learner; check it (`trio-raft member list` shows its lag), "
    "then retry with a longer --catch-up-timeout, or remove it",
    "quorum_unavailable": "nothing changed; bring the unreachable voters back, then retry",
}


def add_member_commands(commands: argparse._SubParsersAction[OneLineParser]) -> None:
    """Register ``member`` and ``transfer-leader`` on the ``trio-raft`` parser."""
    member = commands.add_parser(
        "member",
        help="list, add, promote, demote or remove the members of a running cluster",
        description="Change who is in the cluster, one step at a time (see the operations "
        "guide in the documentation). Exits 0 when done, 1 when refused or failed.",
    )
    add_client_options(member)
    actions = member.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the configuration, with each member's progress")
    add_client_options(listing)
    add = actions.add_parser(
        "add",
        help="add a node as a learner (or change a member's URLs)",
        description="Add ID as a learner; start it first with `trio-raft serve --join`. "
        "With --voter, promote it once it has caught up.",
    )
    add.add_argument("id", metavar="ID")
    add.add_argument(
        "--peer", required=True, type=peer_url_argument, metavar="URL", help="its Raft URL"
    )
    add.add_argument("--client", required=True, type=url_argument, metavar="URL", help="its KV URL")
    add.add_argument("--voter", action="store_true", help="then promote it")
    _catch_up_option(add)
    add_client_options(add)
    promote = actions.add_parser("promote", help="make a learner a voter once it caught up")
    promote.add_argument("id", metavar="ID")
    _catch_up_option(promote)
    add_client_options(promote)
    for name, text in (("demote", "make a voter a learner"), ("remove", "remove a member")):
        parser = actions.add_parser(name, help=text)
        parser.add_argument("id", metavar="ID")
        add_client_options(parser)
    transfer = commands.add_parser(
        "transfer-leader",
        help="hand leadership to another voter",
        description="Hand leadership to --to (default: the most up-to-date voter).",
    )
    transfer.add_argument("--to", default=None, metavar="ID", help="the voter to lead next")
    add_client_options(transfer)


def _catch_up_option(parser: argparse.ArgumentParser) -> None:
    default = Config().catch_up_timeout_s
    parser.add_argument(
        "--catch-up-timeout",
        type=seconds_argument,
        default=None,
        metavar="SECONDS",
        help="how long the leader waits for the learner to catch up (default: the cluster's "
        f"catch_up_timeout_s, {default:g} s unless configured); the command waits 10 s more",
    )


async def run_member_command(args: argparse.Namespace) -> int:
    """Run ``member ...`` or ``transfer-leader``; return the exit code."""
    name = "transfer-leader" if args.command == "transfer-leader" else f"member {args.action}"
    try:
        where = target(args, admin=True)
        await check_urls(where)
        args.json = where.json
        args.timeout = where.timeout_s
        async with open_client(
            where.urls, token=where.token, timeout_s=where.timeout_s, ssl_context=where.ssl_context
        ) as kv:
            if args.command == "transfer-leader":
                return await _transfer(kv, args)
            if args.action == "list":
                return await _list(kv, args)
            if args.action == "add":
                return await _add(kv, args)
            result = await _change(kv, args.action, args.id, args)
            _report(args, result, _outcome(args.action, args.id, result))
            return EXIT_OK
    except MembershipRefusedError as exc:
        _fail(name, f"refused ({exc.code}): {exc}", _HINTS.get(exc.code))
    except TransferFailedError as exc:
        _fail(name, str(exc), "retry, or name another voter with --to")
    except (CliError, KVError, OSError) as exc:  # OSError: e.g. the --ca file
        return report(name, exc, admin=True)
    return EXIT_FAILED


def _fail(name: str, message: str, hint: str | None) -> None:
    print(f"trio-raft {name}: {message}{'' if hint is None else f'; {hint}'}", file=sys.stderr)


async def _change(
    kv: KVClient, action: str, node: str, args: argparse.Namespace
) -> dict[str, object]:
    if action == "promote":
        wait = args.catch_up_timeout or Config().catch_up_timeout_s
        return await kv.promote(
            node,
            catch_up_timeout_s=args.catch_up_timeout,
            timeout_s=max(args.timeout, wait + PROMOTE_MARGIN_S),
        )
    if action == "demote":
        return await kv.demote(node)
    assert action == "remove"
    return await kv.remove(node)


def _outcome(action: str, node: str, result: Mapping[str, object]) -> str:
    role = _role_of(node, result)
    if action == "remove":
        return f"{node}: removed" if role is None else f"{node}: still a member ({role})"
    return f"{node}: {role or 'not a member'}"


async def _add(kv: KVClient, args: argparse.Namespace) -> int:
    node = args.id
    result = await kv.add_learner(node, peer=args.peer, client=args.client)
    role = _role_of(node, result)
    if not args.voter or role == "voter":
        done = "addresses updated" if role == "voter" else "learner"
        _report(args, result, f"{node}: {done}")
        return EXIT_OK
    if not args.json:
        wait = args.catch_up_timeout or Config().catch_up_timeout_s
        print(f"{node}: learner; promoting (waiting up to {wait:g} s for it to catch up)")
        sys.stdout.flush()
    try:
        result = await _change(kv, "promote", node, args)
    except KVError:
        print(
            f"trio-raft member add: {node} was added as a learner but not promoted; promote it "
            f"later with `trio-raft member promote {node}` (or remove it)",
            file=sys.stderr,
        )
        raise
    _report(args, result, _outcome("promote", node, result))
    return EXIT_OK


async def _transfer(kv: KVClient, args: argparse.Namespace) -> int:
    before = (await kv.members())["leader"]
    started = trio.current_time()
    leader = await kv.transfer_leader(args.to)
    seconds = trio.current_time() - started
    if args.json:
        _print_json({"from": before, "leader": leader, "seconds": round(seconds, 6)})
    elif leader == before:
        print(f"{leader} already leads")
    else:
        print(f"leadership moved from {before} to {leader} in {seconds:.3f} s")
    return EXIT_OK


async def _list(kv: KVClient, args: argparse.Namespace) -> int:
    result = await kv.members()
    status = await kv.status()  # the node answering members (the leader), unless it changed
    progress: dict[str, dict[str, int | None]] = {}
    if status.get("node") == result["leader"] and status.get("role") == "leader":
        last = status.get("last_index")
        followers = status.get("followers")
        if type(last) is int and isinstance(followers, dict):
            progress[str(status["node"])] = {"match": last, "lag": None}
            for peer, f in followers.items():
                match = f.get("match") if isinstance(f, dict) else None
                if type(match) is int:
                    progress[str(peer)] = {"match": match, "lag": last - match}
    if args.json:
        _print_json({**result, "progress": progress})
        return EXIT_OK
    print(describe_configuration(result))
    rows = [("node", "role", "peer", "client", "match", "lag")]
    for node, role, address in _members(result):
        peer, client = _urls(address)
        p = progress.get(node, {})
        match, lag = p.get("match"), p.get("lag")
        rows.append(
            (node, role, peer, client, "" if match is None else str(match), "" if lag is None
             else str(lag))
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def describe_configuration(result: Mapping[str, object]) -> str:
    """``configuration at index 812 (committed), leader n1`` (and the voters being left while
    the configuration is joint)."""
    state = "committed" if result.get("committed") else "not committed"
    outgoing = result.get("outgoing")
    if isinstance(outgoing, list) and outgoing:
        state += f"; joint, leaving voters {', '.join(map(str, outgoing))}"
    leader = result.get("leader")
    return (
        f"configuration at index {result.get('index')} ({state}), "
        f"leader {leader if leader is not None else '(none known)'}"
    )


def configuration_line(statuses: Mapping[str, Mapping[str, object] | None]) -> str | None:
    """For ``trio-raft status``: the configuration the leader (else any node) reports, as
    ``configuration at index 812 (committed): voters n1, n2, n3; learners n4``; None if no
    node reports one (servers older than membership changes)."""
    known = [s for s in statuses.values() if s is not None and "config_index" in s]
    if not known:
        return None
    s = next((s for s in known if s.get("role") == "leader"), known[0])
    state = "committed" if s.get("config_committed") else "not committed"
    parts = []
    for key, label in (("voters", "voters"), ("learners", "learners"), ("outgoing", "leaving")):
        ids = s.get(key)
        if isinstance(ids, list) and ids:
            parts.append(f"{label} {', '.join(map(str, ids))}")
    return f"configuration at index {s['config_index']} ({state}): {'; '.join(parts)}"


def _members(result: Mapping[str, object]) -> list[tuple[str, str, object]]:
    """(id, role, address) of each member: voters, then learners, then the voters being left
    (a joint configuration)."""
    rows: list[tuple[str, str, object]] = []
    seen: set[str] = set()
    for key, role in (("voters", "voter"), ("learners", "learner")):
        group = result.get(key)
        if isinstance(group, dict):
            for node, address in sorted(group.items()):
                rows.append((str(node), role, address))
                seen.add(str(node))
    outgoing = result.get("outgoing")
    if isinstance(outgoing, list):
        rows += [(str(n), "leaving", None) for n in sorted(map(str, outgoing)) if n not in seen]
    return rows


def _role_of(node: str, result: Mapping[str, object]) -> str | None:
    return next((role for n, role, _ in _members(result) if n == node), None)


def _urls(address: object) -> tuple[str, str]:
    if isinstance(address, dict):
        peer, client = address.get("peer"), address.get("client")
        return (peer if isinstance(peer, str) else "-", client if isinstance(client, str) else "-")
    return "-", "-"


def _report(args: argparse.Namespace, result: Mapping[str, object], outcome: str) -> None:
    if args.json:
        _print_json(dict(result))
        return
    print(outcome)
    parts = []
    for key, label in (("voters", "voters"), ("learners", "learners")):
        group = result.get(key)
        if isinstance(group, dict) and group:
            parts.append(f"{label} {', '.join(sorted(map(str, group)))}")
    print(f"{describe_configuration(result)}: {'; '.join(parts)}")


def _print_json(value: object) -> None:
    print(json.dumps(value, sort_keys=True, default=_jsonable))


def _jsonable(value: object) -> object:
    """Addresses may hold CBOR values JSON lacks: bytes become hex strings."""
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot show a {type(value).__name__} as JSON")
