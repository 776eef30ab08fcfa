"""A real process is killed with SIGKILL under load; every command it acknowledged survives.

This file is also the child program: ``python test_kill9.py run DIR`` runs a single-node
cluster on a :class:`FileStorage` in ``DIR`` and proposes numbered commands from a few
concurrent tasks (so batches form), printing each number once its proposal returned, i.e. once
it was committed, which for one node means synced. ``python test_kill9.py verify DIR`` restarts
the node on the same directory, waits until it has re-elected itself and applied its whole
log, and prints the applied numbers as JSON. Real time and real processes (marked ``process``:
``nox -s processes``); the test takes a few seconds, and its real-time deadlines
(:data:`DEADLINE_S`) only catch a hang.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import trio_raft
from trio_raft import Config, Message, Role
from trio_raft._wal._file_storage import open_file_storage

pytestmark = pytest.mark.process

PROPOSERS = 8
ACKS_BEFORE_KILL = 400
DEADLINE_S = 60.0
"""Real seconds: a bound that detects a hang, not a speed assertion (the child reaches
``ACKS_BEFORE_KILL`` in about a second on an idle machine)."""
FAST = Config(election_timeout_s_min=0.05, election_timeout_s_max=0.1, heartbeat_s=0.02)


class Applied:
    """State machine: the list of numbers applied, in order."""

    def __init__(self) -> None:
        self.numbers: list[int] = []

    def apply(self, command: object) -> object:
        assert isinstance(command, int)
        self.numbers.append(command)
        return command

    def query(self, query: object) -> object:
        return list(self.numbers)


class LonelyTransport:
    """A single node sends nothing and receives nothing."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[Message](0)

    def send(self, message: Message) -> None:
        pass  # pragma: no cover  (one node has no peers)

    @property
    def receive_channel(self) -> trio.abc.ReceiveChannel[Message]:
        return self._receive


async def child(mode: str, path: str) -> None:
    sm = Applied()
    async with (
        open_file_storage(path) as storage,
        trio_raft.open_node(
            "n1", ["n1"], state_machine=sm, transport=LonelyTransport(), storage=storage,
            config=FAST,
        ) as node,
    ):  # fmt: skip
        if mode == "verify":
            await node.wait_status(
                lambda s: (
                    s.role is Role.LEADER
                    and s.commit_index == s.last_log_index
                    and s.last_applied == s.commit_index
                )
            )
            print(json.dumps(sm.numbers), flush=True)
            return
        await node.wait_status(lambda s: s.role is Role.LEADER)

        async def propose(first: int) -> None:
            for number in range(first, 10**9, PROPOSERS):
                await node.propose(number)
                print(number, flush=True)

        async with trio.open_nursery() as nursery:
            for first in range(PROPOSERS):
                nursery.start_soon(propose, first)


async def read_acks(stdout: trio.abc.ReceiveStream, acked: list[int]) -> None:
    buffer = b""
    while len(acked) < ACKS_BEFORE_KILL:
        chunk = await stdout.receive_some()
        if not chunk:
            return
        *lines, buffer = (buffer + chunk).split(b"\n")
        acked.extend(int(line) for line in lines)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
async def test_acknowledged_commands_survive_kill9(tmp_path: Path) -> None:
    data = str(tmp_path / "node")
    process = await trio.lowlevel.open_process(
        [sys.executable, __file__, "run", data], stdout=subprocess.PIPE
    )
    acked: list[int] = []
    try:
        assert process.stdout is not None
        with trio.fail_after(DEADLINE_S):
            await read_acks(process.stdout, acked)  # the kill comes after a count, not a time
    finally:
        process.kill()  # SIGKILL: no cleanup, no flush, mid-batch
        with trio.fail_after(DEADLINE_S):
            await process.wait()
    assert process.returncode == -signal.SIGKILL, f"child exited by itself: {process.returncode}"
    assert len(acked) > 10, f"the child acknowledged only {len(acked)} commands"

    with trio.fail_after(DEADLINE_S):
        result = await trio.run_process(
            [sys.executable, __file__, "verify", data], capture_stdout=True, check=True
        )
    applied = json.loads(result.stdout)
    missing = sorted(set(acked) - set(applied))
    assert not missing, f"{len(missing)} acknowledged commands were lost, e.g. {missing[:10]}"
    assert len(applied) == len(set(applied)), "a command was applied twice"
    for first in range(PROPOSERS):  # each proposer waits for each answer: no holes
        mine = sorted(n for n in applied if n % PROPOSERS == first)
        assert mine == list(range(first, first + PROPOSERS * len(mine), PROPOSERS))


if __name__ == "__main__":
    trio.run(child, sys.argv[1], sys.argv[2])
