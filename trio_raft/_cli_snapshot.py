"""``trio-raft snapshot save``/``restore`` and ``trio-raft inspect``: backups and a look inside
a data directory.

``snapshot save`` asks the leader for a fresh snapshot over the client port (the ``snapshot``
op, admin credential; it holds every acknowledged write) and writes it as a snapshot file:
``OUT.partial`` first, its SHA-256 checked against the node's and every frame verified,
fsynced, then renamed to ``OUT``.

``snapshot restore`` seeds a *new* node's data directory from such a file, etcd's model: the
directory gets the identity of the cluster file's ``cluster_id`` and the node's id, the
snapshot as its starting point with the configuration rewritten to the cluster file's nodes
(the one in the file belongs to the old cluster), and a term at the snapshot's. Every node of
the new cluster is restored from the same file; then they are started with ``trio-raft serve``.
It writes through :class:`FileStorage` into a temporary directory next to the target, renamed
into place once complete, so a failed restore leaves nothing half-done.

``inspect`` reads a data directory without changing or locking it
(:mod:`trio_raft._wal._inspect`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Final

import trio

from ._cli_client import (
    EXIT_FAILED,
    EXIT_USAGE,
    CliError,
    OneLineParser,
    add_client_options,
    check_urls,
    option,
    report,
    target,
)
from ._serve import ConfigError, bootstrap_membership, load_cluster_file
from ._types import HardState, SnapshotMeta
from ._wal._errors import StorageCorruptError, StorageError
from ._wal._file_storage import DEFAULT_MAX_RECORD_BYTES, open_file_storage
from ._wal._fs import OsFileSystem
from ._wal._inspect import DirectoryReport, inspect_directory
from ._wal._snapshot_file import SnapshotReader, verify_snapshot
from .kv import KVAuthError, KVError, open_client

EXIT_OK: Final = 0
SAVE_TIMEOUT_S: Final = 60.0
"""``snapshot save``'s default ``--timeout``: a large state takes a while to stream."""
_CLIENT_OPTIONS: Final = ("url", "config", "token", "token_file", "timeout", "ca", "json")


def add_snapshot_commands(commands: argparse._SubParsersAction[OneLineParser]) -> None:
    """Register ``snapshot`` (``save``, ``restore``) and ``inspect``."""
    snapshot = commands.add_parser(
        "snapshot",
        help="back up a running cluster, or seed a new one from a backup",
        description="save: a consistent snapshot of a live cluster into a file. restore: a new "
        "node's data directory from such a file (restore every node of the new cluster from "
        "the same file, then start them with trio-raft serve).",
    )
    actions = snapshot.add_subparsers(dest="action", metavar="ACTION", required=True)
    save = actions.add_parser(
        "save",
        help="save a snapshot of a live cluster into OUT",
        description="Ask the leader (through any node of --url or the cluster file: a "
        "follower redirects) for a fresh snapshot holding every acknowledged write, and write "
        "it to OUT (through OUT.partial, checked, fsynced, renamed). Needs the admin token "
        "(--config reads the file's admin_token, else token). --timeout (the whole download) "
        "defaults to 60 s here.",
    )
    save.add_argument("out", metavar="OUT", type=Path, help="the backup file to write")
    save.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    add_client_options(save)
    restore = actions.add_parser(
        "restore",
        help="seed a new node's data directory from a backup",
        description="Write the data directory of node --id of the cluster described by "
        "--config (a new cluster: its own cluster_id and nodes) so that it starts from the "
        "backup IN. Refuses a directory that is not empty.",
    )
    restore.add_argument("backup", metavar="IN", type=Path, help="the backup file to read")
    restore.add_argument(
        "--config", required=True, type=Path, metavar="FILE", help="the new cluster's file"
    )
    restore.add_argument("--id", required=True, metavar="ID", help="which [nodes.ID] to seed")
    restore.add_argument(
        "--data-dir", type=Path, default=None, metavar="DIR",
        help="the directory to write (default: the cluster file's data_dir/ID, where serve "
        "looks)",
    )  # fmt: skip
    inspect = commands.add_parser(
        "inspect",
        help="show what a node's data directory holds (read-only)",
        description="Print a data directory's identity, term and vote, log range, snapshot and "
        "segments, and what opening it would repair or refuse. Never writes, never takes the "
        "directory's lock: safe on a running node's directory. Exits 1 if opening it would be "
        "refused.",
    )
    inspect.add_argument("data_dir", metavar="DATA_DIR", type=Path)
    inspect.add_argument("--json", action="store_true", help="print one JSON object instead")


def misplaced_snapshot_options(args: argparse.Namespace) -> list[str]:
    """The client options given to ``snapshot restore`` or ``inspect``, which take none (but
    their own ``--config`` and ``--json``)."""
    if args.command == "snapshot" and args.action == "save":
        return []
    own = {"config"} if args.command == "snapshot" else {"json"}
    return [
        f"--{n.replace('_', '-')}" for n in _CLIENT_OPTIONS if hasattr(args, n) and n not in own
    ]


def run_snapshot_command(args: argparse.Namespace) -> int:
    """Run ``snapshot save``/``restore`` or ``inspect``; return the exit code (errors are
    printed, one line each)."""
    if args.command == "inspect":
        return inspect_command(args)
    if args.action == "save":
        return trio.run(save_command, args)
    return trio.run(restore_command, args)


# -- save ------------------------------------------------------------------------------------


async def save_command(args: argparse.Namespace) -> int:
    """``trio-raft snapshot save`` in the current trio run."""
    out: Path = args.out
    partial = out.with_name(out.name + ".partial")
    try:
        where = target(args, admin=True)
        _check_out(out, force=args.force)
        await check_urls(where)
        timeout_s = float(option(args, "timeout", SAVE_TIMEOUT_S))  # type: ignore[arg-type]
        file = await trio.open_file(partial, "wb")
        try:
            async with file, open_client(
                where.urls, token=where.token, timeout_s=timeout_s,
                ssl_context=where.ssl_context,
            ) as kv:  # fmt: skip

                async def write(offset: int, data: bytes) -> None:
                    if offset == 0:  # the download started (over)
                        await file.seek(0)
                        await file.truncate()
                    await file.write(data)

                info = await kv.snapshot(write)
                await file.flush()
                await trio.to_thread.run_sync(os.fsync, file.fileno())
            meta = await trio.to_thread.run_sync(
                verify_snapshot, OsFileSystem(), str(partial), DEFAULT_MAX_RECORD_BYTES
            )
            if meta is None or (meta.index, meta.term) != (info["index"], info["term"]):
                raise CliError(f"{partial} does not hold the snapshot the node sent; retry")
            await trio.to_thread.run_sync(_rename_durably, partial, out)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_remove_quietly, partial)
            raise
    except KVAuthError as exc:
        text = " ".join(str(exc).split()).removesuffix("; pass the servers' token")
        if "admin_token" not in text:
            text += "; backups need the cluster's admin_token"
        where_from = "--token-file FILE, $TRIO_RAFT_TOKEN or --config FILE"
        print(f"trio-raft snapshot save: {text} ({where_from})", file=sys.stderr)
        return EXIT_FAILED
    except (CliError, KVError, OSError, StorageError) as exc:
        return report("snapshot save", exc, admin=True)
    if where.json:
        print(json.dumps({**info, "file": str(out)}, sort_keys=True))
    else:
        members = ", ".join(info["voters"])  # type: ignore[arg-type]
        print(
            f"saved {out}: {info['size']} bytes, sha256 {info['sha256']}; the state of node "
            f"{info['node']} (cluster {info['cluster_id']}) at index {info['index']}, term "
            f"{info['term']}; voters {members}"
        )
    return EXIT_OK


def _check_out(out: Path, *, force: bool) -> None:
    if out.exists() and not force:
        raise CliError(f"{out} exists; pass --force to overwrite it, or choose another name")
    if not out.parent.is_dir():
        raise CliError(f"cannot write {out}: {out.parent} is not a directory")


def _rename_durably(src: Path, dst: Path) -> None:
    os.replace(src, dst)
    OsFileSystem().fsync_dir(str(dst.parent.resolve()))


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# -- restore ---------------------------------------------------------------------------------


async def restore_command(args: argparse.Namespace) -> int:
    """``trio-raft snapshot restore`` in the current trio run."""
    try:
        text = await restore(args.backup, args.config, args.id, args.data_dir)
    except (CliError, ConfigError, OSError, StorageError) as exc:
        return report("snapshot restore", exc, admin=False)
    print(text)
    return EXIT_OK


async def restore(backup: Path, config: Path, node_id: str, data_dir: Path | None) -> str:
    """Seed ``node_id``'s data directory from ``backup``; the line to print.

    Raises:
        CliError: the node is not in the cluster file, the directory is not empty, or the
            backup is not a valid snapshot file.
        ConfigError: the cluster file is wrong.
        StorageError, OSError: writing failed.
    """
    cluster = load_cluster_file(config)
    if node_id not in cluster.nodes:
        raise CliError(
            f"{config} has no [nodes.{node_id}] table; its nodes are {sorted(cluster.nodes)}: "
            "restore each of them",
            EXIT_USAGE,
        )
    directory = (data_dir if data_dir is not None else cluster.data_dir / node_id).absolute()
    _check_empty(directory)
    fs = OsFileSystem()
    try:
        meta = await trio.to_thread.run_sync(
            verify_snapshot, fs, str(backup), DEFAULT_MAX_RECORD_BYTES
        )
    except FileNotFoundError:
        raise CliError(f"cannot read {backup}: no such file") from None
    except StorageCorruptError as exc:
        at = "" if exc.offset is None else f" at byte {exc.offset}"
        raise CliError(
            f"{backup} is not a valid backup: {exc.reason}{at}; it is damaged or truncated: "
            "use another copy, or save a new one"
        ) from None
    if meta is None:  # pragma: no cover  (verify_snapshot checked it exists)
        raise CliError(f"cannot read {backup}: no such file")
    membership = bootstrap_membership(cluster)
    staging = await trio.to_thread.run_sync(_staging, directory)
    try:
        async with open_file_storage(
            staging, cluster_id=cluster.cluster_id, node_id=node_id
        ) as storage:
            # The term the cluster was in at the snapshot: the new one's first election is later.
            await storage.save(hard_state=HardState(meta.term))
            new_meta = SnapshotMeta(meta.index, meta.term, membership)
            await storage.save_snapshot(new_meta, _chunks(fs, backup))
            await storage.compact(meta.index, meta.term)
            await storage.sync()
        await trio.to_thread.run_sync(_install, staging, directory)
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(lambda: shutil.rmtree(staging, ignore_errors=True))
        raise
    return (
        f"restored {directory} for node {node_id} of cluster {cluster.cluster_id} from "
        f"{backup}: state at index {meta.index}, term {meta.term}; voters "
        f"{', '.join(sorted(membership.voters))}. Restore every node listed in {config}, then "
        f"start each with: trio-raft serve --config {config} --id ID"
    )


def _check_empty(directory: Path) -> None:
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise CliError(
            f"{directory} is not empty: restore seeds a new node's data directory; move the old "
            "one away (or give --data-dir an empty or new directory)"
        )


def _staging(directory: Path) -> Path:
    """The temporary directory a restore writes, next to ``directory`` (emptied)."""
    staging = directory.parent / f".{directory.name}.restoring"
    directory.parent.mkdir(parents=True, exist_ok=True)
    if staging.exists():  # left by a restore that failed
        shutil.rmtree(staging)
    return staging


def _install(staging: Path, directory: Path) -> None:
    if directory.exists():
        directory.rmdir()  # empty (checked before), or this fails
    _rename_durably(staging, directory)


async def _chunks(fs: OsFileSystem, backup: Path) -> AsyncGenerator[bytes, None]:
    """The state machine's bytes in ``backup``, each chunk verified as it is read."""
    reader = await trio.to_thread.run_sync(
        SnapshotReader, fs, str(backup), DEFAULT_MAX_RECORD_BYTES
    )
    try:
        while (chunk := await trio.to_thread.run_sync(reader.next_chunk)) is not None:
            yield chunk
    finally:
        reader.close()


# -- inspect ---------------------------------------------------------------------------------


def inspect_command(args: argparse.Namespace) -> int:
    """``trio-raft inspect DATA_DIR [--json]``."""
    try:
        found = inspect_directory(str(args.data_dir), max_record_bytes=DEFAULT_MAX_RECORD_BYTES)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(f"trio-raft inspect: cannot read {args.data_dir}: {reason}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(found.as_json(), sort_keys=True))
    else:
        print(render_report(found))
    return EXIT_FAILED if found.problems else EXIT_OK


def _span(span: tuple[int, int] | None) -> str:
    return "none" if span is None else f"{span[0]}..{span[1]}"


def render_report(found: DirectoryReport) -> str:
    """The text view of ``trio-raft inspect``."""
    lines = [f"data directory {found.path} (read without its lock; nothing changed)"]
    ident = found.identity
    lines.append(
        "identity: none (opened without one so far)"
        if ident is None
        else f"identity: cluster {ident.cluster_id}, node {ident.node_id}"
    )
    hard = found.hard_state
    if hard is None:
        lines.append("hard state: none (no state file)")
    else:
        lines.append(f"hard state: term {hard.term}, voted for {hard.voted_for or 'nobody'}")
    if found.log_start is not None:
        start, start_term = found.log_start
        last = found.last_index
        compacted = f"compacted up to index {start}, term {start_term}"
        if last is None:
            lines.append(f"log: unknown, not replayed ({compacted})")
        elif last == start:
            lines.append(f"log: no entries ({compacted})")
        else:
            lines.append(f"log: entries {start + 1}..{last} ({compacted})")
    snap = found.snapshot
    if snap is None:
        lines.append("snapshot: none")
    else:
        m = snap.membership
        voters = "the bootstrap configuration" if m is None else ", ".join(sorted(m.voters))
        learners = (
            "" if m is None or not m.learners else f"; learners {', '.join(sorted(m.learners))}"
        )
        lines.append(
            f"snapshot: index {snap.index}, term {snap.term}, {snap.size_bytes} bytes; voters "
            f"{voters}{learners}"
        )
    lines.append(f"segments: {len(found.segments)}")
    for s in found.segments:
        lines.append(
            f"  {s.name}  entries {_span(s.entries)}  live {_span(s.live)}  {s.size_bytes} bytes"
            f"  format {s.format}"
        )
    lines += [f"opening would repair: {r}" for r in found.repairs]
    lines += [f"opening would refuse: {p}" for p in found.problems]
    if not found.problems:
        lines.append("opening would succeed")
    return "\n".join(lines)
