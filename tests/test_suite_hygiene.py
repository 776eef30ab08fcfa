"""The suite's own rules: the ``process`` split cannot rot, and fixed ports come from one place.

The tests here are not marked ``process``, so :mod:`tests._process_guard` is active in them:
each checks that a way of starting a process or binding a fixed port fails with the message
that says what to do, and that what stays allowed (port 0) works.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from ._ports import PortAllocator, PortsExhaustedError, port_range
from ._process_guard import MARKER, UnmarkedProcessTestError

MESSAGE = rf"is not marked `{MARKER}`.*nox -s processes"


def free(port: int) -> bool:
    """Every port counts as free (the real check binds, which the guard forbids here)."""
    return True


def test_subprocess_outside_process_tests_fails() -> None:
    with pytest.raises(UnmarkedProcessTestError, match=MESSAGE):
        subprocess.run([sys.executable, "-c", "pass"], check=False)


async def test_trio_run_process_outside_process_tests_fails() -> None:
    with pytest.raises(UnmarkedProcessTestError, match=MESSAGE):
        await trio.run_process([sys.executable, "-c", "pass"])


def test_fork_outside_process_tests_fails() -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no os.fork on this platform")
    with pytest.raises(UnmarkedProcessTestError, match=MESSAGE):
        pid = os.fork()
        if pid == 0:  # pragma: no cover  (only if the guard failed: the child must not go on)
            os._exit(0)
        os.waitpid(pid, 0)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_fixed_port_bind_outside_process_tests_fails(family: socket.AddressFamily) -> None:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family) as sock:
        with pytest.raises(UnmarkedProcessTestError, match=MESSAGE):
            sock.bind((host, 12345))


async def test_trio_listener_on_a_fixed_port_outside_process_tests_fails() -> None:
    with pytest.raises(UnmarkedProcessTestError, match=MESSAGE):
        await trio.open_tcp_listeners(12345, host="127.0.0.1")


async def test_port_zero_stays_allowed() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0]:
        assert listeners[0].socket.getsockname()[1] != 0


def test_the_allocator_stays_below_the_ephemeral_range() -> None:
    assert port_range((32768, 60999)) == range(10_000, 32768)
    assert port_range((1024, 60000)) == range(60001, 65536)  # no room below: above it
    with pytest.raises(PortsExhaustedError, match="ip_local_port_range"):
        port_range((1024, 65000))


def test_allocators_of_two_processes_never_share_a_port(tmp_path: Path) -> None:
    # Two allocators on one lock directory stand for two workers or two sessions: a port
    # reserved by one is skipped by the other even where their slices overlap.
    first = PortAllocator(range(20_000, 20_010), tmp_path, is_free=free)
    second = PortAllocator(range(20_000, 20_010), tmp_path, is_free=free)
    mine = first.allocate(4)
    theirs = second.allocate(4)
    assert len(set(mine)) == 4 and not set(mine) & set(theirs)
    first.release_all()
    assert first.held == []
    assert set(second.allocate(6)) >= set(mine)  # released ports are available again


def test_a_block_keeps_its_shape(tmp_path: Path) -> None:
    allocator = PortAllocator(range(20_000, 20_400), tmp_path, is_free=free)
    taken = allocator.allocate(1)[0]
    base = allocator.allocate_block([1, 2, 101, 102])
    assert {base + 1, base + 2, base + 101, base + 102} <= set(allocator.held)
    assert taken not in (base + 1, base + 2, base + 101, base + 102)
    with pytest.raises(PortsExhaustedError):
        PortAllocator(range(20_000, 20_400), tmp_path, is_free=free).allocate_block(range(400))


def test_a_port_in_use_is_skipped(tmp_path: Path) -> None:
    busy = {20_001}
    allocator = PortAllocator(range(20_000, 20_010), tmp_path, is_free=lambda p: p not in busy)
    assert allocator.allocate(3) == [20_000, 20_002, 20_003]
