"""Logging helpers: the loggers' names, a JSON formatter for ``serve --log-format json``, and a
rate limiter for warnings a stranger can trigger at will.

Every layer logs on its own child of the ``trio_raft`` logger (``trio_raft.node``,
``trio_raft.transport``, ``trio_raft.kv``, ...), with the facts of the record in
``extra={"raft": {...}}`` so that the JSON formatter can emit them as fields.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Final

RAFT_FIELDS: Final = "raft"
"""The attribute of a :class:`logging.LogRecord` carrying its structured facts (a dict)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    the record's ``raft`` facts merged in, and ``exception`` when there is one. Values that
    JSON cannot carry are written as their ``repr``."""

    def __init__(self, **static: object) -> None:
        """``static`` fields (e.g. ``node="n1"``) are added to every line."""
        super().__init__()
        self._static = static

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one line of JSON."""
        line: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            **self._static,
            "message": record.getMessage(),
        }
        facts = getattr(record, RAFT_FIELDS, None)
        if isinstance(facts, dict):
            for key, value in facts.items():
                line.setdefault(str(key), value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=repr, ensure_ascii=False)


class RateLimiter:
    """Let through the first event of each key, then at most one per ``interval_s``, telling
    how many were suppressed in between (so a flood of bad connections costs one log line per
    interval, not one per connection). ``clock`` is ``trio.current_time`` in the library."""

    MAX_KEYS: Final = 1024
    """Keys remembered at most; the oldest are forgotten first (strangers choose the keys)."""

    def __init__(self, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s!r}")
        self._interval_s = interval_s
        self._keys: dict[object, tuple[float, int]] = {}  # key -> (next allowed, suppressed)

    def check(self, key: object, now: float) -> int | None:
        """Whether to log an event of ``key`` at ``now``: ``None`` to suppress it, else how
        many events of that key were suppressed since the last one logged."""
        due, suppressed = self._keys.get(key, (-float("inf"), 0))
        if now < due:
            self._keys[key] = (due, suppressed + 1)
            return None
        self._keys.pop(key, None)
        if len(self._keys) >= self.MAX_KEYS:
            del self._keys[next(iter(self._keys))]
        self._keys[key] = (now + self._interval_s, 0)
        return suppressed


def configure(level: str, fmt: str, node_id: str) -> None:
    """Set up the root logger for ``trio-raft serve``: ``level`` one of ``debug``, ``info``,
    ``warning``, ``error``; ``fmt`` ``text`` or ``json``.

    Raises:
        ValueError: an unknown level or format.
    """
    levels = {
        "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
        "error": logging.ERROR,
    }  # fmt: skip
    if level not in levels:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(levels)}")
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(node=node_id))
    elif fmt == "text":
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {node_id} %(name)s %(levelname)s: %(message)s")
        )
    else:
        raise ValueError(f"unknown log format {fmt!r}; use text or json")
    root = logging.getLogger()
    root.setLevel(levels[level])
    if not root.handlers:  # like logging.basicConfig: a host that set up logging keeps it
        root.addHandler(handler)


def log_limited(
    logger: logging.Logger,
    limiter: RateLimiter,
    key: object,
    now: float,
    message: str,
    facts: dict[str, object],
    *,
    level: int = logging.WARNING,
) -> bool:
    """Log ``message`` (no ``%`` arguments) with ``facts`` unless ``limiter`` suppresses
    ``key`` at ``now``; a line that follows suppressed ones says how many there were (and has
    them as the ``suppressed`` fact). Returns whether it logged."""
    suppressed = limiter.check(key, now)
    if suppressed is None:
        return False
    if suppressed:
        message += f" ({suppressed} more like it since the last report)"
        facts = {**facts, "suppressed": suppressed}
    logger.log(level, "%s", message, extra={RAFT_FIELDS: facts}, stacklevel=2)
    return True
