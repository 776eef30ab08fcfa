"""The one allocator of fixed TCP ports, for the tests that cannot bind port 0.

A ``trio-raft serve`` process must know every member's ports before any member starts (the
cluster file names them), so the real-process tests (marked ``process``) cannot let the kernel
pick a port for them. They take their ports from here; everything else binds port 0.

* **Below the ephemeral range** (``/proc/sys/net/ipv4/ip_local_port_range``; 32768-60999 by
  default on Linux): the kernel never hands one of these ports to an outgoing connection or to a
  ``bind(0)`` (KV clients, the fault proxy) while a node is starting or restarting.
* **One slice per pytest-xdist worker**: each worker starts at its own offset in the range and
  moves on from where its last allocation ended, so two workers do not race for the same ports
  and a port is not reused right after a test released it (TIME_WAIT, a slow exit).
* **Reserved across processes**: an exclusive ``flock`` on one file per port under
  ``<tmp>/trio-raft-test-ports-<uid>``. Concurrent sessions (two checkouts, two nox runs) skip
  each other's ports; a reservation ends with :func:`release_all` (after every test, see
  ``tests/conftest.py``) or with the process holding it, even on ``kill -9``. The files stay
  (deleting a lock file while another process may open it would let two processes lock it).
* **Checked free right before use**: the port is bound with ``SO_REUSEADDR`` (as the nodes bind
  it) and closed again; a port that something listens on is skipped.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from trio_raft._util import bind_error

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: only the per-worker slices separate sessions)
    fcntl = None  # type: ignore[assignment]

HOST = "127.0.0.1"
LOWEST_PORT = 10_000
"""The allocator never goes below this (well-known and commonly configured ports)."""
MIN_PORTS = 1_000
"""The smallest range the allocator accepts."""
EPHEMERAL_FALLBACK = (32768, 65535)
"""Where the ephemeral range is assumed to be without ``/proc`` (it starts at 49152 on macOS,
the BSDs and Windows; 32768 covers Linux's default too)."""
RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


class PortsExhaustedError(RuntimeError):
    """No free port was left in the allocator's range."""


def ephemeral_range(path: Path = RANGE_FILE) -> tuple[int, int]:
    """The kernel's ephemeral port range ``(low, high)``, both included."""
    try:
        low, high = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        return EPHEMERAL_FALLBACK
    return low, high


def port_range(ephemeral: tuple[int, int] | None = None) -> range:
    """The ports the allocator hands out: below the ephemeral range, else above it."""
    low, high = ephemeral or ephemeral_range()
    if low - LOWEST_PORT >= MIN_PORTS:
        return range(LOWEST_PORT, low)
    if 65535 - high >= MIN_PORTS:
        return range(high + 1, 65536)
    raise PortsExhaustedError(
        f"the ephemeral port range {low}-{high} leaves fewer than {MIN_PORTS} ports for the "
        "process tests; narrow it (sysctl net.ipv4.ip_local_port_range) and run them again"
    )


def _worker() -> tuple[int, int]:
    """This process's pytest-xdist worker number and the worker count (0 and 1 without xdist)."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")
    index = int(name) if name.isdigit() else 0
    workers = max(int(count) if count.isdigit() else 1, index + 1)
    return index, workers


class PortAllocator:
    """Reserves ports of ``ports`` for this process; see the module docstring."""

    def __init__(
        self,
        ports: range,
        directory: Path,
        *,
        worker: int = 0,
        workers: int = 1,
        is_free: Callable[[int], bool] | None = None,
    ) -> None:
        """Hand out ``ports``, locking them in ``directory``; xdist worker ``worker`` of
        ``workers`` starts in its own slice. ``is_free(port)`` checks a port right before it
        is handed out (default: bind it on 127.0.0.1 with ``SO_REUSEADDR``)."""
        self.ports = ports
        self.directory = directory
        self._is_free = is_free or _bindable
        self._cursor = ports.start + worker * (len(ports) // workers)
        self._held: dict[int, int | None] = {}
        """Each reserved port and the descriptor of its locked file (None without fcntl)."""

    @property
    def held(self) -> list[int]:
        """The ports reserved now."""
        return sorted(self._held)

    def allocate(self, count: int) -> list[int]:
        """``count`` distinct free ports, reserved until :meth:`release_all`."""
        return [self.allocate_block((0,)) for _ in range(count)]

    def allocate_block(self, offsets: Sequence[int]) -> int:
        """A base port ``b`` such that every ``b + offset`` is free and now reserved.

        For a program that derives its ports from one base (``trio-raft cluster --base-port``).
        """
        span = max(offsets) + 1
        assert min(offsets) >= 0 and span <= len(self.ports), offsets
        for _ in range(len(self.ports)):
            base = self._cursor
            self._cursor += span
            if self._cursor + span > self.ports.stop:
                self._cursor = self.ports.start
            if base + span > self.ports.stop:
                continue
            taken: list[int] = []
            for offset in offsets:
                if not self._take(base + offset):
                    break
                taken.append(base + offset)
            else:
                return base
            for port in taken:
                self._release(port)
        raise PortsExhaustedError(
            f"no free ports for offsets {list(offsets)} in {self.ports.start}-"
            f"{self.ports.stop - 1}: other test sessions or servers hold them (locks in "
            f"{self.directory})"
        )

    def release_all(self) -> None:
        """End every reservation of this process."""
        for port in list(self._held):
            self._release(port)

    def _take(self, port: int) -> bool:
        if port in self._held:
            return False
        fd = None
        if fcntl is not None:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.directory / str(port), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
        self._held[port] = fd
        if not self._is_free(port):
            self._release(port)
            return False
        return True

    def _release(self, port: int) -> None:
        fd = self._held.pop(port)
        if fd is not None:
            os.close(fd)  # closing the only descriptor of the open file drops the flock


def _bindable(port: int) -> bool:
    return bind_error(HOST, port) is None


_allocator: PortAllocator | None = None


def _the_allocator() -> PortAllocator:
    global _allocator
    if _allocator is None:
        worker, workers = _worker()
        user = os.getuid() if hasattr(os, "getuid") else os.getlogin()
        directory = Path(tempfile.gettempdir()) / f"trio-raft-test-ports-{user}"
        _allocator = PortAllocator(port_range(), directory, worker=worker, workers=workers)
    return _allocator


def allocate(count: int) -> list[int]:
    """``count`` free ports on 127.0.0.1, reserved for the rest of the current test."""
    return _the_allocator().allocate(count)


def allocate_block(offsets: Sequence[int]) -> int:
    """A base port whose ``base + offset`` ports are free, reserved for the rest of the test."""
    return _the_allocator().allocate_block(offsets)


def release_all() -> None:
    """End this process's reservations (``tests/conftest.py`` calls it after every test)."""
    if _allocator is not None:
        _allocator.release_all()
