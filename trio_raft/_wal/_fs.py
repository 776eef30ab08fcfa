"""The file-system seam: every disk operation of the WAL goes through a :class:`FileSystem`.

:class:`OsFileSystem` is the real one (``os`` calls, ``fcntl.flock`` for the lock); the
fault-injecting in-memory one for tests is :class:`~trio_raft._wal._simfs.SimulatedFileSystem`.
All methods are blocking; the storage calls them from worker threads, one at a time.
"""

from __future__ import annotations

import os
import sys
from typing import Protocol, final

if sys.platform != "win32":
    import fcntl


class ReadFile(Protocol):
    """A file opened for sequential reading."""

    def read(self, size: int) -> bytes:
        """Read up to ``size`` bytes (fewer only at the end of the file)."""
        ...

    def close(self) -> None:
        """Release the file."""
        ...


class AppendFile(Protocol):
    """A file opened for appending."""

    def write(self, data: bytes) -> None:
        """Append all of ``data`` (to the OS: not durable until :meth:`fsync`)."""
        ...

    def fsync(self) -> None:
        """Make the file's content durable; returns only when it is."""
        ...

    def truncate(self, size: int) -> None:
        """Cut the file to ``size`` bytes (durable after :meth:`fsync`)."""
        ...

    def close(self) -> None:
        """Release the file (does not make anything durable)."""
        ...


class FileLock(Protocol):
    """An exclusive lock held on a file."""

    def release(self) -> None:
        """Release the lock."""
        ...


class FileSystem(Protocol):
    """What the WAL needs from a file system. Paths are strings; every call may block."""

    def makedirs(self, path: str) -> bool:
        """Create directory ``path`` and missing parents; return whether it was created."""
        ...

    def listdir(self, path: str) -> list[str]:
        """Names in directory ``path``."""
        ...

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists."""
        ...

    def open_read(self, path: str) -> ReadFile:
        """Open an existing file for reading."""
        ...

    def open_append(self, path: str, *, create: bool) -> AppendFile:
        """Open ``path`` for appending; with ``create`` it must not exist yet (``O_EXCL``)."""
        ...

    def rename(self, src: str, dst: str) -> None:
        """Atomically replace ``dst`` with ``src`` (durable after :meth:`fsync_dir`)."""
        ...

    def unlink(self, path: str) -> None:
        """Remove file ``path`` (durable after :meth:`fsync_dir`)."""
        ...

    def fsync_dir(self, path: str) -> None:
        """Make the creations, renames and removals in directory ``path`` durable."""
        ...

    def lock(self, path: str) -> FileLock:
        """Take an exclusive, non-blocking lock on ``path``: a directory, or a file (created
        if missing).

        Raises:
            BlockingIOError: someone else holds it.
        """
        ...

    def free_bytes(self, path: str) -> int | None:
        """Bytes this process may still write on the file system holding ``path``, or
        ``None`` if that cannot be known."""
        ...


# -- the real file system ----------------------------------------------------------------------


def _full_fsync(fd: int) -> None:
    # On macOS fsync only reaches the drive's cache; F_FULLFSYNC asks the drive to flush it.
    if sys.platform == "darwin":
        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    else:
        os.fsync(fd)


@final
class _OsAppendFile:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def fsync(self) -> None:
        _full_fsync(self._fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)

    def close(self) -> None:
        os.close(self._fd)


@final
class _OsLock:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        os.close(self._fd)  # closing the descriptor releases its flock


@final
class OsFileSystem:
    """The real file system (POSIX semantics; tested on Linux)."""

    def makedirs(self, path: str) -> bool:
        if os.path.isdir(path):
            return False
        os.makedirs(path)
        return True

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def open_read(self, path: str) -> ReadFile:
        return open(path, "rb", buffering=1 << 20)

    def open_append(self, path: str, *, create: bool) -> AppendFile:
        flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        return _OsAppendFile(os.open(path, flags, 0o644))

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def fsync_dir(self, path: str) -> None:
        if sys.platform == "win32":  # pragma: no cover  (directories cannot be fsynced there)
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            _full_fsync(fd)
        finally:
            os.close(fd)

    def lock(self, path: str) -> FileLock:
        # A directory is locked through a read-only descriptor of the directory itself:
        # unlike a lock file, it cannot be unlinked (and recreated) under a running node.
        if os.path.isdir(path):
            if sys.platform == "win32":  # pragma: no cover  (no flock on directories there)
                return _OsLock(os.open(os.devnull, os.O_RDONLY))
            flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
        else:
            flags = os.O_RDWR | os.O_CREAT
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            if sys.platform == "win32":  # pragma: no cover
                import msvcrt

                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                # flock locks belong to the open file description, so a second open in the same
                # process conflicts too (unlike fcntl/POSIX record locks).
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        return _OsLock(fd)

    def free_bytes(self, path: str) -> int | None:
        if not hasattr(os, "statvfs"):  # pragma: no cover  (Windows)
            return None
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize
