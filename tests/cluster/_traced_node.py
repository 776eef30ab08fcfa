"""``python _traced_node.py --config FILE --id ID``: ``trio-raft serve`` that also prints a line
for every InstallSnapshot chunk it receives and every snapshot it installs, for the tests to read
in its log. With :data:`CONNECT_TIMEOUT_ENV` set, its peer dialer uses that connect timeout
(seconds) instead of the default.

A node exposes neither event (no log line, nothing in ``status``), so this wraps the two private
functions of :mod:`trio_raft._snapshot` that handle them. Everything else is the real CLI.
"""

from __future__ import annotations

import os
import sys
from functools import partial

from trio_raft import _serve, _snapshot
from trio_raft._cli import main
from trio_raft._messages import SnapshotRequest
from trio_raft._node import Node
from trio_raft._transport import open_websocket_transport

TRACE_CHUNK = "TRACE snapshot chunk"
TRACE_INSTALL = "TRACE snapshot installed"
CONNECT_TIMEOUT_ENV = "TRIO_RAFT_TEST_CONNECT_TIMEOUT_S"
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
    if CONNECT_TIMEOUT_ENV in os.environ:
        connect_timeout_s = float(os.environ[CONNECT_TIMEOUT_ENV])
        # Patched through the module's namespace: _serve imports the name, it does not export it.
        vars(_serve)["open_websocket_transport"] = partial(
            open_websocket_transport, connect_timeout_s=connect_timeout_s
        )
    sys.exit(main(["serve", *sys.argv[1:]]))
