"""A tiny deterministic key-value state machine, the workload of the simulator's clients.

Commands are plain CBOR-friendly sequences (tuples, or the lists a decoder returns), one key each:

==================================  ==========================================================
command                             effect and result
==================================  ==========================================================
``("get", key)``                    no effect; the current value, or ``None`` if absent
``("put", key, value)``             sets the value; ``None``
``("append", key, suffix)``         string append (an absent key counts as ``""``); the new value
``("cas", key, expected, new)``     sets ``new`` iff the value equals ``expected`` (``None``
                                    means "absent"); ``True`` if it did, else ``False``
``("delete", key)``                 removes the key; ``None``
==================================  ==========================================================

Keys and values are :class:`str`. :func:`kv_step` is the single source of truth for these
semantics: :class:`KVStateMachine` applies it to a dict, and the linearizability checker
(:mod:`trio_raft.testing._linearizability`) uses it as its sequential model of one key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, final

import cbor2

__all__ = ["KVStateMachine", "command_key", "is_read_only", "kv_step"]

_READ_ONLY: Final = frozenset({"get"})
_CHUNK: Final = 64 * 1024


def kv_step(value: str | None, op: Sequence[object]) -> tuple[str | None, object]:
    """Apply one command to the value of its key, purely.

    Args:
        value: The key's current value, ``None`` if the key is absent.
        op: A command (see the module docstring), as a tuple or list.

    Returns:
        ``(new_value, result)``: the key's value after the command (``None`` = absent) and the
        result the client observes. The function has no side effects and is deterministic.

    Raises:
        ValueError: ``op`` is not a well-formed command (unknown name, wrong arity, or a key or
            value that is not a :class:`str`).
    """
    match op:
        case ("get", str()):
            return value, value
        case ("put", str(), str() as new):
            return new, None
        case ("append", str(), str() as suffix):
            appended = (value or "") + suffix
            return appended, appended
        case ("cas", str(), (str() | None) as expected, str() as new):
            if value == expected:
                return new, True
            return value, False
        case ("delete", str()):
            return None, None
    raise ValueError(_malformed(op))


def command_key(op: Sequence[object]) -> str:
    """Return the key a well-formed command touches.

    Raises:
        ValueError: ``op`` is not a well-formed command.
    """
    kv_step(None, op)  # validates
    key = op[1]
    assert isinstance(key, str)
    return key


def is_read_only(op: Sequence[object]) -> bool:
    """Return whether a well-formed command never changes the state (only ``get`` does not).

    Raises:
        ValueError: ``op`` is not a well-formed command.
    """
    kv_step(None, op)  # validates
    return op[0] in _READ_ONLY


def _malformed(op: object) -> str:
    return (
        f"malformed KV command {op!r}: expected ('get', key), ('put', key, value), "
        "('append', key, suffix), ('cas', key, expected_or_None, new) or ('delete', key), "
        "with str keys and values"
    )


@final
class KVStateMachine:
    """An in-memory ``str -> str`` map implementing the :class:`~trio_raft._abc.StateMachine`
    protocol with the commands of :func:`kv_step`.

    Deterministic: the same commands in the same order give the same results and state on every
    replica. Not thread-safe and not meant to be: the node's applier calls it from one task.
    """

    def __init__(self) -> None:
        self._data: dict[str, str] = {}

    def apply(self, command: object) -> object:
        """Apply one committed command and return its result.

        Args:
            command: Any command of :func:`kv_step`, ``get`` included (a read through the log).

        Raises:
            ValueError: ``command`` is malformed; the state is left unchanged.
        """
        if not isinstance(command, (tuple, list)):
            raise ValueError(_malformed(command))
        key = command_key(command)
        new, result = kv_step(self._data.get(key), command)
        if new is None:
            self._data.pop(key, None)
        else:
            self._data[key] = new
        return result

    def query(self, query: object) -> object:
        """Answer a read-only ``("get", key)`` query: the value, or ``None`` if absent.

        Raises:
            ValueError: ``query`` is not a well-formed ``get`` (mutating commands must go
                through :meth:`apply`).
        """
        if not isinstance(query, (tuple, list)) or not is_read_only(query):
            raise ValueError(f"query must be ('get', key), got {query!r}")
        key = command_key(query)
        return self._data.get(key)

    def snapshot(self) -> Iterable[bytes]:
        """Capture the whole map now (a copy); serialize it as CBOR in chunks of 64 KiB."""
        data = cbor2.dumps(sorted(self._data.items()))
        return [data[i : i + _CHUNK] for i in range(0, len(data), _CHUNK)] or [data]

    def restore(self, chunks: Iterable[bytes]) -> None:
        """Replace the map with one serialized by :meth:`snapshot`.

        Raises:
            ValueError: the bytes are not such a snapshot (the state is then unchanged).
        """
        try:
            items = cbor2.loads(b"".join(chunks))
            data = {str(k): str(v) for k, v in items}
        except (cbor2.CBORDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"not a KVStateMachine snapshot: {exc}") from exc
        self._data = data

    def as_dict(self) -> dict[str, str]:
        """Return a copy of the whole map, e.g. to compare replicas (State Machine Safety)."""
        return dict(self._data)
