"""The KV service's replicated state: :class:`KVStateMachine`, with exactly-once writes.

The commands and the session rules are documented on the class. Every check on a
command's fields is shared with the wire protocol (``_protocol.check_*``), so the server
and the state machine agree on what is valid.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Callable, Iterable
from types import NoneType
from typing import Final, final

import cbor2

from ._protocol import (
    MAX_SEQ,
    SessionExpiredError,
    StaleSequenceError,
    check_int,
    check_key,
    check_limit,
    check_optional_key,
    check_optional_value,
    check_prefix,
    check_seq,
    check_session,
    check_value,
)
from ._strict import describe

DEFAULT_MAX_SESSIONS: Final = 10_000
"""Default bound of the session table (about 100 bytes each, so about 1 MB)."""

_SNAPSHOT_FORMAT: Final = "trio_raft.kv/1"
_CHUNK_BYTES: Final = 64 * 1024

WriteResult = bool | None
"""What a write returns, and what a session remembers of its last write."""


def _malformed(command: object) -> str:
    return (
        f"malformed KV command {describe(command)}: expected ('get', key), "
        "('list', prefix, limit, start_after), ('open', session), "
        "('put', session, seq, key, value), ('delete', session, seq, key) or "
        "('cas', session, seq, key, expected, new)"
    )


@final
class KVStateMachine:
    """A replicated ``str -> bytes`` map with sessions for exactly-once writes.

    It implements :class:`~trio_raft.SnapshottingStateMachine`: pass one per node to
    :func:`~trio_raft.open_node` (its log is then compacted) and serve it with :func:`serve_kv`.
    Keys are :class:`str` (1 to :data:`MAX_KEY_BYTES` bytes in UTF-8), values :class:`bytes`
    (at most :data:`MAX_VALUE_BYTES`). Commands are plain sequences (tuples, or the lists a
    CBOR decoder returns), so they survive the log, the disk and the wire unchanged:

    =============================================  ==========================================
    command                                        effect and result
    =============================================  ==========================================
    ``("get", key)``                               none; the value, or ``None`` if absent
    ``("list", prefix, limit, start_after)``       none; up to ``limit`` keys that start with
                                                   ``prefix`` and sort after ``start_after``
                                                   (``None``: from the first), in order
    ``("open", session)``                          registers ``session`` (idempotent); ``None``
    ``("put", session, seq, key, value)``          sets the value; ``None``
    ``("delete", session, seq, key)``              removes the key; ``True`` if it existed
    ``("cas", session, seq, key, expected, new)``  sets ``new`` iff the value is ``expected``
                                                   (``None`` means absent on both sides, so a
                                                   ``new`` of ``None`` deletes); ``True`` if it
                                                   did
    =============================================  ==========================================

    **Exactly-once writes.** A client opens a session (1 to 64 random bytes) and numbers its
    writes 1, 2, 3, ... The state machine remembers, per session, the last sequence number
    applied and its result. A write with that same number is a retry: it is not applied again
    and gets the first result. An older number is refused (:exc:`StaleSequenceError`): a
    session has at most one write in flight. A newer one is applied (gaps are allowed: a client
    may give up on a write).

    **Bounded sessions.** The table keeps at most ``max_sessions`` sessions. Opening one more
    evicts the least recently used one, in log order (an open, an applied write or a retry
    counts as a use), so every replica evicts the same one, with no clock involved. A write on
    an evicted (or never opened) session fails with :exc:`SessionExpiredError` and changes
    nothing; its client must open a new session.

    Every failure raises and leaves the state exactly as it was, as
    :class:`~trio_raft.StateMachine` requires; the node hands the exception to the proposer.
    ``apply`` is deterministic: the same commands in the same order give the same results and
    the same state (and :meth:`snapshot` bytes) on every replica. Only the node's applier calls
    it, never concurrently.

    Args:
        max_sessions: Bound of the session table (about 100 bytes per session). It must be the
            same on every node: eviction is part of the replicated state.

    Raises:
        ValueError: ``max_sessions < 1``.
    """

    def __init__(self, *, max_sessions: int = DEFAULT_MAX_SESSIONS) -> None:
        if type(max_sessions) is not int or max_sessions < 1:
            raise ValueError(f"max_sessions must be an int >= 1, got {max_sessions!r}")
        self._max_sessions = max_sessions
        self._data: dict[str, bytes] = {}
        self._keys: list[str] = []  # sorted; the keys of _data
        self._sessions: OrderedDict[bytes, tuple[int, WriteResult]] = OrderedDict()
        self._revision = 0

    # -- StateMachine ------------------------------------------------------------------------

    def apply(self, command: object) -> object:
        """Apply one committed command (any of the module's table) and return its result.

        Raises:
            ValueError: ``command`` is malformed (the message says how); nothing changed.
            StaleSequenceError: a write older than its session's last one; nothing changed.
            SessionExpiredError: a write on an unknown (evicted) session; nothing changed.
        """
        if not isinstance(command, (list, tuple)):
            raise ValueError(_malformed(command))
        match command:
            case ("get", _) | ("list", _, _, _):
                return self.query(command)
            case ("open", session):
                self._open(check_session(session))
                return None
            case ("put", session, seq, key, value):
                key, value = check_key(key), check_value(value)
                return self._write(session, seq, lambda: self._put(key, value))
            case ("delete", session, seq, key):
                key = check_key(key)
                return self._write(session, seq, lambda: self._delete(key))
            case ("cas", session, seq, key, expected, new):
                key = check_key(key)
                expected = check_optional_value(expected, "expected")
                new = check_optional_value(new, "new")
                return self._write(session, seq, lambda: self._cas(key, expected, new))
        raise ValueError(_malformed(command))

    def query(self, query: object) -> object:
        """Answer a read-only ``("get", key)`` or ``("list", prefix, limit, start_after)``.

        Raises:
            ValueError: ``query`` is not one of those, well formed.
        """
        match query:
            case ("get", key) if isinstance(query, (list, tuple)):
                return self._data.get(check_key(key))
            case ("list", prefix, limit, start_after) if isinstance(query, (list, tuple)):
                return self._list(
                    check_prefix(prefix),
                    check_limit(limit),
                    check_optional_key(start_after, "start_after"),
                )
        raise ValueError(
            f"a KV query is ('get', key) or ('list', prefix, limit, start_after), "
            f"got {describe(query)}"
        )

    # -- inspection --------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """How many writes (put, delete, cas, whether or not they changed a value) were
        applied. A deduplicated retry or a refused write does not count, so after ``n`` distinct
        writes every replica reads ``n``: exactly-once, made visible."""
        return self._revision

    @property
    def max_sessions(self) -> int:
        """The bound of the session table."""
        return self._max_sessions

    def as_dict(self) -> dict[str, bytes]:
        """A copy of the whole map, e.g. to compare replicas."""
        return dict(self._data)

    def sessions(self) -> dict[bytes, int]:
        """A copy of the session table: session id -> last applied sequence number (0 after
        the open), least recently used first (the next to be evicted)."""
        return {session: seq for session, (seq, _) in self._sessions.items()}

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> Iterable[bytes]:
        """Capture the map, the session table (in LRU order) and the revision now; return them
        as CBOR in chunks of 64 KiB. Equal states give equal bytes."""
        state = {
            "format": _SNAPSHOT_FORMAT,
            "revision": self._revision,
            "data": [[key, self._data[key]] for key in self._keys],
            "sessions": [[s, seq, result] for s, (seq, result) in self._sessions.items()],
        }
        blob = cbor2.dumps(state)
        return [blob[i : i + _CHUNK_BYTES] for i in range(0, len(blob), _CHUNK_BYTES)]

    def restore(self, chunks: Iterable[bytes]) -> None:
        """Replace the whole state with one produced by :meth:`snapshot` (any chunking).

        Raises:
            ValueError: the bytes are not such a snapshot; the state is then unchanged.
        """
        try:
            state = cbor2.loads(b"".join(chunks), allow_duplicate_keys=False)
        except (cbor2.CBORError, ValueError, TypeError) as exc:
            raise ValueError(f"not a KVStateMachine snapshot: {exc}") from None
        match state:
            case {
                "format": "trio_raft.kv/1",
                "revision": int() as revision,
                "data": list() as data_items,
                "sessions": list() as session_items,
            } if len(state) == 4 and type(revision) is int and revision >= 0:
                pass
            case _:
                raise ValueError("not a KVStateMachine snapshot (unknown format)")
        data: dict[str, bytes] = {}
        sessions: OrderedDict[bytes, tuple[int, WriteResult]] = OrderedDict()
        for item in data_items:
            if not isinstance(item, list) or len(item) != 2:
                raise ValueError(f"snapshot: bad entry {item!r:.80}")
            key = check_key(item[0])
            if key in data:
                raise ValueError(f"snapshot: duplicate key {key!r:.80}")
            data[key] = check_value(item[1])
        for item in session_items:
            if (
                not isinstance(item, list)
                or len(item) != 3
                or type(item[2]) not in (bool, NoneType)
            ):
                raise ValueError(f"snapshot: bad session {item!r:.80}")
            session = check_session(item[0])
            if session in sessions:
                raise ValueError(f"snapshot: duplicate session {session.hex()}")
            sessions[session] = (check_int(item[1], "seq", 0, MAX_SEQ), item[2])
        self._data = data
        self._keys = sorted(data)
        self._sessions = sessions
        self._revision = revision

    # -- internals ---------------------------------------------------------------------------

    def _open(self, session: bytes) -> None:
        if session in self._sessions:
            self._sessions.move_to_end(session)
            return
        while len(self._sessions) >= self._max_sessions:
            self._sessions.popitem(last=False)
        self._sessions[session] = (0, None)

    def _write(self, session: object, seq: object, effect: Callable[[], WriteResult]) -> object:
        """Apply ``effect`` once per ``(session, seq)``; every argument is already valid except
        ``session`` and ``seq``, checked here before anything changes."""
        session, seq = check_session(session), check_seq(seq)
        known = self._sessions.get(session)
        if known is None:
            raise SessionExpiredError(
                f"session {session.hex()} is unknown: it expired (more than {self._max_sessions} "
                "sessions were used since its last write) or was never opened; open a new one"
            )
        last_seq, last_result = known
        if seq < last_seq:
            raise StaleSequenceError(
                f"seq {seq} of session {session.hex()} is older than its last applied write "
                f"({last_seq}); not applied. Send one write at a time per session"
            )
        self._sessions.move_to_end(session)
        if seq == last_seq:
            return last_result  # a retry: answer as the first time, apply nothing
        result = effect()
        self._sessions[session] = (seq, result)
        self._revision += 1
        return result

    def _put(self, key: str, value: bytes) -> None:
        if key not in self._data:
            bisect.insort(self._keys, key)
        self._data[key] = value

    def _delete(self, key: str) -> bool:
        if key not in self._data:
            return False
        del self._data[key]
        del self._keys[bisect.bisect_left(self._keys, key)]
        return True

    def _cas(self, key: str, expected: bytes | None, new: bytes | None) -> bool:
        if self._data.get(key) != expected:
            return False
        if new is None:
            self._delete(key)
        else:
            self._put(key, new)
        return True

    def _list(self, prefix: str, limit: int, start_after: str | None) -> list[str]:
        keys = self._keys
        if start_after is not None and start_after >= prefix:
            i = bisect.bisect_right(keys, start_after)
        else:
            i = bisect.bisect_left(keys, prefix)
        found: list[str] = []
        while i < len(keys) and len(found) < limit and keys[i].startswith(prefix):
            found.append(keys[i])
            i += 1
        return found
