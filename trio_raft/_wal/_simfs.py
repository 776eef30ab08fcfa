"""A fault-injecting in-memory :class:`~trio_raft._wal._fs.FileSystem` for tests.

:class:`SimulatedFileSystem` counts every mutating operation ("fault point"), can crash at
point N, and models what survives a power cut.

The crash model of :class:`SimulatedFileSystem` (deliberately pessimistic, and simple):

* each file has *volatile* content (what reads see) and *durable* content (as of its last
  ``fsync``); a directory has a volatile and a durable name table, and creating, renaming or
  unlinking a name is durable only after ``fsync_dir`` of its directory;
* at a crash, fsynced content and fsynced names always survive; what was not fsynced survives
  according to a :class:`Survival` mode: ``LOSE`` all of it, ``KEEP`` all of it, or ``TORN``: a
  random prefix of each file's unsynced appended bytes and a random prefix (in order) of the
  unsynced name operations.
"""

from __future__ import annotations

import enum
import errno
import io
import posixpath
import random
from collections.abc import Iterator
from typing import final

import attrs

from ._fs import AppendFile, FileLock, ReadFile


class SimulatedCrash(Exception):
    """Raised by :class:`SimulatedFileSystem` at its crash point, and by every later call."""


class Survival(enum.Enum):
    """What a simulated crash keeps of the writes that were not yet fsynced."""

    LOSE = "lose"
    """Nothing: exactly the fsynced state survives."""
    TORN = "torn"
    """A random prefix of each file's unsynced bytes and of the unsynced name operations."""
    KEEP = "keep"
    """Everything (the OS got to write it all back before the power went)."""


@attrs.define(eq=False)
class _Inode:
    data: bytearray = attrs.Factory(bytearray)
    synced: bytes = b""


class _Dir:
    pass


_DIR = _Dir()
_Node = _Inode | _Dir


@attrs.frozen
class _NameOp:
    """One change to a directory's name table: remove a name, add one, or both (a rename)."""

    directory: str
    remove: str | None
    add: str | None
    node: _Node | None


@final
class _SimReadFile:
    def __init__(self, fs: SimulatedFileSystem, data: bytes) -> None:
        self._fs = fs
        self._buffer = io.BytesIO(data)

    def read(self, size: int) -> bytes:
        self._fs._check_alive()
        return self._buffer.read(size)

    def close(self) -> None:
        pass


@final
class _SimAppendFile:
    def __init__(self, fs: SimulatedFileSystem, path: str, inode: _Inode) -> None:
        self._fs = fs
        self._path = path
        self._inode = inode

    def write(self, data: bytes) -> None:
        self._fs._point(f"write {len(data)} bytes to {self._path}")
        free = self._fs.free_bytes("/")
        if free is not None and len(data) > free:
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        self._inode.data += data
        self._fs.bytes_written += len(data)

    def fsync(self) -> None:
        self._fs._point(f"fsync {self._path}")
        self._inode.synced = bytes(self._inode.data)
        self._fs.fsyncs += 1

    def truncate(self, size: int) -> None:
        self._fs._point(f"truncate {self._path} to {size}")
        del self._inode.data[size:]

    def close(self) -> None:
        pass


@final
class _SimLock:
    def __init__(self, fs: SimulatedFileSystem, path: str) -> None:
        self._fs = fs
        self._path = path

    def release(self) -> None:
        self._fs._locks.discard(self._path)


@final
class SimulatedFileSystem:
    """An in-memory file system with fault points and a power-cut model (see the module doc).

    Args:
        crash_at: Raise :class:`SimulatedCrash` instead of performing the ``crash_at``-th
            mutating operation (1-based), and on every call after it. ``None``: never.
        capacity: Size of the disk in bytes (the sum of all files' sizes), or ``None`` for no
            limit; a write past it raises ``OSError(ENOSPC)``. May be changed at any time.

    Attributes:
        points: Mutating operations performed (or attempted, at the crash) so far: each
            write, truncate, fsync, directory fsync, file creation, rename, unlink and mkdir.
        trace: A description of each of those operations, for failure messages.
        fsyncs: File fsyncs performed; ``dir_fsyncs``: directory fsyncs; ``bytes_written``.
    """

    def __init__(self, *, crash_at: int | None = None, capacity: int | None = None) -> None:
        self.crash_at = crash_at
        self.capacity = capacity
        self.crashed = False
        self.points = 0
        self.trace: list[str] = []
        self.fsyncs = 0
        self.dir_fsyncs = 0
        self.bytes_written = 0
        self._names: dict[str, _Node] = {"/": _DIR}
        self._durable_names: dict[str, _Node] = {"/": _DIR}
        self._pending: list[_NameOp] = []
        self._locks: set[str] = set()

    # -- fault points ----------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self.crashed:
            raise SimulatedCrash("the simulated machine has crashed; use the crash() result")

    def _point(self, what: str) -> None:
        self._check_alive()
        self.points += 1
        self.trace.append(what)
        if self.points == self.crash_at:
            self.crashed = True
            raise SimulatedCrash(f"simulated crash at fault point {self.points}: {what}")

    # -- the FileSystem protocol -----------------------------------------------------------

    @staticmethod
    def _norm(path: str) -> str:
        return posixpath.normpath(posixpath.join("/", path))

    def _parent_must_exist(self, path: str) -> None:
        if not isinstance(self._names.get(posixpath.dirname(path)), _Dir):
            raise FileNotFoundError(f"no directory {posixpath.dirname(path)!r}")

    def _change(
        self, directory: str, remove: str | None, add: str | None, node: _Node | None
    ) -> None:
        op = _NameOp(directory, remove, add, node)
        _apply_name_op(self._names, op)
        self._pending.append(op)

    def makedirs(self, path: str) -> bool:
        path = self._norm(path)
        if isinstance(self._names.get(path), _Dir):
            return False
        parent = posixpath.dirname(path)
        if parent != path:
            self.makedirs(parent)
        if path in self._names:
            raise FileExistsError(f"{path!r} is a file")
        self._point(f"mkdir {path}")
        self._change(parent, None, path, _DIR)
        return True

    def listdir(self, path: str) -> list[str]:
        self._check_alive()
        path = self._norm(path)
        if not isinstance(self._names.get(path), _Dir):
            raise FileNotFoundError(f"no directory {path!r}")
        return sorted(
            posixpath.basename(p) for p in self._names if p != path and posixpath.dirname(p) == path
        )

    def exists(self, path: str) -> bool:
        self._check_alive()
        return self._norm(path) in self._names

    def _inode(self, path: str) -> _Inode:
        node = self._names.get(self._norm(path))
        if not isinstance(node, _Inode):
            raise FileNotFoundError(f"no file {path!r}")
        return node

    def open_read(self, path: str) -> ReadFile:
        self._check_alive()
        return _SimReadFile(self, bytes(self._inode(path).data))

    def open_append(self, path: str, *, create: bool) -> AppendFile:
        path = self._norm(path)
        if not create:
            self._check_alive()
            return _SimAppendFile(self, path, self._inode(path))
        self._parent_must_exist(path)
        if path in self._names:
            raise FileExistsError(f"{path!r} exists")
        self._point(f"create {path}")
        inode = _Inode()
        self._change(posixpath.dirname(path), None, path, inode)
        return _SimAppendFile(self, path, inode)

    def rename(self, src: str, dst: str) -> None:
        src, dst = self._norm(src), self._norm(dst)
        inode = self._inode(src)
        if posixpath.dirname(src) != posixpath.dirname(dst):
            raise OSError("SimulatedFileSystem renames only within one directory")
        self._point(f"rename {src} -> {dst}")
        # One name operation for both ends, so the rename stays atomic across a crash.
        self._change(posixpath.dirname(src), src, dst, inode)

    def unlink(self, path: str) -> None:
        path = self._norm(path)
        self._inode(path)
        self._point(f"unlink {path}")
        self._change(posixpath.dirname(path), path, None, None)

    def fsync_dir(self, path: str) -> None:
        path = self._norm(path)
        if not isinstance(self._names.get(path), _Dir):
            raise FileNotFoundError(f"no directory {path!r}")
        self._point(f"fsync directory {path}")
        self.dir_fsyncs += 1
        keep: list[_NameOp] = []
        for op in self._pending:
            if op.directory == path:
                _apply_name_op(self._durable_names, op)
            else:
                keep.append(op)
        self._pending = keep

    def lock(self, path: str) -> FileLock:
        self._check_alive()
        path = self._norm(path)
        if path in self._locks:
            raise BlockingIOError(f"{path!r} is locked")
        if path not in self._names:
            self._parent_must_exist(path)
            # Like O_CREAT. Not a fault point: the lock file's content and existence never matter.
            self._change(posixpath.dirname(path), None, path, _Inode())
        self._locks.add(path)
        return _SimLock(self, path)

    def free_bytes(self, path: str) -> int | None:
        self._check_alive()
        if self.capacity is None:
            return None
        used = sum(len(n.data) for n in self._live_inodes())
        return max(self.capacity - used, 0)

    def _live_inodes(self) -> list[_Inode]:
        seen: dict[int, _Inode] = {}
        for node in self._names.values():
            if isinstance(node, _Inode):
                seen[id(node)] = node
        return list(seen.values())

    # -- crashing and inspecting -----------------------------------------------------------

    def crash(self, survival: Survival, rng: random.Random) -> SimulatedFileSystem:
        """Cut the power now: return a new file system holding what survives, per ``survival``
        (``rng`` draws the torn prefixes). This one is dead afterwards; locks do not survive."""
        self.crashed = True
        names = dict(self._durable_names)
        pending = self._pending
        if survival is Survival.LOSE:
            pending = []
        elif survival is Survival.TORN:
            pending = pending[: rng.randint(0, len(pending))]
        for op in pending:
            _apply_name_op(names, op)
        survivor = SimulatedFileSystem()
        copies: dict[int, _Inode] = {}
        for path in sorted(names):  # sorted: parents first, and a deterministic rng order
            node = names[path]
            if path != "/" and not isinstance(names.get(posixpath.dirname(path)), _Dir):
                continue  # its directory's own entry was lost
            if isinstance(node, _Inode):
                if id(node) not in copies:
                    kept = _surviving_content(node, survival, rng)
                    copies[id(node)] = _Inode(bytearray(kept), kept)
                node = copies[id(node)]
            survivor._names[path] = node
            survivor._durable_names[path] = node
        return survivor

    def files(self) -> dict[str, bytes]:
        """The current (volatile) content of every file, by path."""
        return {p: bytes(n.data) for p, n in self._names.items() if isinstance(n, _Inode)}

    def put_file(self, path: str, data: bytes) -> None:
        """Replace or create a file durably, bypassing fault points (for damaging data)."""
        path = self._norm(path)
        self._parent_must_exist(path)
        node = self._names.get(path)
        if not isinstance(node, _Inode):
            node = _Inode()
            self._names[path] = node
            self._durable_names[path] = node
        node.data = bytearray(data)
        node.synced = bytes(data)

    def walk_files(self) -> Iterator[str]:
        """Paths of all files, sorted."""
        return iter(sorted(p for p, n in self._names.items() if isinstance(n, _Inode)))


def _apply_name_op(names: dict[str, _Node], op: _NameOp) -> None:
    if op.remove is not None:
        names.pop(op.remove, None)
    if op.add is not None:
        assert op.node is not None
        names[op.add] = op.node


def _surviving_content(inode: _Inode, survival: Survival, rng: random.Random) -> bytes:
    data, synced = bytes(inode.data), inode.synced
    if survival is Survival.LOSE or data == synced:
        return synced
    if survival is Survival.KEEP:
        return data
    if data.startswith(synced):  # appends since the last fsync: keep a prefix of them
        return data[: len(synced) + rng.randint(0, len(data) - len(synced))]
    return rng.choice([synced, data])  # a truncation since the last fsync: one or the other
