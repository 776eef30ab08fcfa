"""``python _traced_node.py --config FILE --id ID``: ``trio-raft serve`` that also prints a line
for every InstallSnapshot chunk it receives and every snapshot it installs, for the tests to read
in its log.

A node exposes neither event (no log line, nothing in ``status``), so this wraps the two private
functions of :mod:`trio_raft._snapshot` that handle them. Everything else is the real CLI.
"""

from __future__ import annotations

import sys

from trio_raft import _snapshot
from trio_raft._cli import main
from trio_raft._messages import SnapshotRequest
from trio_raft._node import Node

TRACE_CHUNK = "TRACE snapshot chunk"
TRACE_INSTALL = "TRACE snapshot installed"
_on_chunk = _snapshot.on_chunk
_install = _snapshot.install


def _traced_on_chunk(node: Node, m: SnapshotRequest) -> None:
    print(
        f"{node.id}: {TRACE_CHUNK} index={m.index} term={m.snapshot_term} offset={m.offset} "
        f"bytes={len(m.data)} done={m.done} from={m.src}",
        flush=True,
    )
    _on_chunk(node, m)


async def _traced_install(node: Node, event: _snapshot.SnapshotReceived) -> None:
    await _install(node, event)
    meta = event.meta
    print(f"{node.id}: {TRACE_INSTALL} index={meta.index} term={meta.term}", flush=True)


if __name__ == "__main__":
    _snapshot.on_chunk = _traced_on_chunk
    _snapshot.install = _traced_install
    sys.exit(main(["serve", *sys.argv[1:]]))
