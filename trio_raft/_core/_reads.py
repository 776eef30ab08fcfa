"""Linearizable reads on the leader (ReadIndex, Raft thesis §6.4): reads wait in order until a
round of heartbeats sent after them is acknowledged by a quorum.

Rounds are batched: a read that arrives while a round is in flight waits for the next one,
which the leader starts once the one in flight is confirmed, for every read that arrived
meanwhile. So at most two rounds serve any number of concurrent reads, and each read is served
by a round that started after it arrived (its seq is above every seq sent before it)."""

from __future__ import annotations

from collections import deque

import attrs


@attrs.frozen
class _PendingRead:
    read_id: int
    seq: int
    """The heartbeat round that must be acknowledged by a quorum."""
    index: int
    """The commit index to apply through before reading."""


class ReadQueue:
    """The leader's reads waiting for their leadership check, oldest first."""

    __slots__ = ("_next_id", "_pending")

    def __init__(self) -> None:
        self._pending: deque[_PendingRead] = deque()
        self._next_id = 0

    def __bool__(self) -> bool:
        return bool(self._pending)

    @property
    def newest_seq(self) -> int:
        """The round the newest waiting read needs (0 if none waits)."""
        return self._pending[-1].seq if self._pending else 0

    def add(self, seq: int, index: int) -> int:
        """Queue a read that needs round ``seq`` acknowledged; returns its read id."""
        self._next_id += 1
        self._pending.append(_PendingRead(self._next_id, seq, index))
        return self._next_id

    def confirm(self, quorum_seq: int) -> list[tuple[int, int]]:
        """Remove and return ``(read_id, index)`` of every read whose round a quorum has
        acknowledged (``quorum_seq``: the highest round acknowledged by a quorum)."""
        done = []
        while self._pending and self._pending[0].seq <= quorum_seq:
            r = self._pending.popleft()
            done.append((r.read_id, r.index))
        return done

    def fail_all(self) -> list[int]:
        """Remove and return the ids of every waiting read (leadership was lost)."""
        ids = [r.read_id for r in self._pending]
        self._pending.clear()
        return ids
