"""Outside tests marked ``process``, starting an OS process or binding a fixed port fails.

Tests that start processes or bind fixed ports run on real time against the machine's load and
its ports, so they run in their own session (``nox -s processes``), apart from the
deterministic suite (``nox -s tests``). ``tests/conftest.py`` wraps the setup, call and
teardown of every test not marked ``process`` in :func:`forbid_processes_and_fixed_ports`, so a
new test of that kind that is not marked fails at once, with a message saying what to do,
instead of slipping into the wrong session.

Covered: everything built on :class:`subprocess.Popen` (``subprocess.run``,
``trio.run_process``, ``trio.lowlevel.open_process``), :func:`os.fork`, :func:`os.posix_spawn`,
and :meth:`socket.socket.bind` of an IPv4 or IPv6 address with a port other than 0 (trio's
sockets and listeners bind through it). Port 0 and Unix sockets stay allowed.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import pytest

MARKER = "process"


class UnmarkedProcessTestError(Exception):
    """A test not marked ``process`` started a process or bound a fixed port."""


def _refuse(nodeid: str, what: str) -> NoReturn:
    raise UnmarkedProcessTestError(
        f"{nodeid} {what}, but it is not marked `{MARKER}`. Tests that start OS processes or "
        f"bind a fixed port run in their own session (`nox -s processes`): mark the test "
        f"(@pytest.mark.{MARKER}) or its module (pytestmark = pytest.mark.{MARKER}), or bind "
        "port 0 and read the port the kernel chose."
    )


@contextmanager
def forbid_processes_and_fixed_ports(nodeid: str) -> Iterator[None]:
    """Make process creation and fixed-port binds raise :exc:`UnmarkedProcessTestError`."""
    original_bind = socket.socket.bind

    def execute_child(self: subprocess.Popen[bytes], args: object, *rest: object) -> NoReturn:
        _refuse(nodeid, f"started a process ({args!r})")

    def spawn(*args: object, **kwargs: object) -> NoReturn:
        _refuse(nodeid, "started a process (os.fork / os.posix_spawn)")

    def bind(self: socket.socket, address: object) -> None:
        if (
            self.family in (socket.AF_INET, socket.AF_INET6)
            and isinstance(address, tuple)
            and len(address) >= 2
            and address[1] != 0
        ):
            _refuse(nodeid, f"bound the fixed port {address[1]}")
        original_bind(self, address)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "_execute_child", execute_child)
        patch.setattr(socket.socket, "bind", bind)
        for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp"):
            if hasattr(os, name):
                patch.setattr(os, name, spawn)
        yield
