"""The JSON log formatter, the rate limiter for warnings strangers can trigger, and
``serve``'s logging options."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from tests import _ports
from trio_raft._cli import build_parser
from trio_raft._logging import RAFT_FIELDS, JsonFormatter, RateLimiter, configure, log_limited


def _record(message: str, *args: object, facts: object = None) -> logging.LogRecord:
    record = logging.LogRecord("trio_raft.node", logging.WARNING, __file__, 1, message, args, None)
    if facts is not None:
        setattr(record, RAFT_FIELDS, facts)
    return record


def test_json_lines_carry_the_message_the_facts_and_static_fields() -> None:
    line = JsonFormatter(node="n1").format(
        _record("node %r: %s", "n1", "x\ny", facts={"term": 4, "reason": "check_quorum"})
    )
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "node 'n1': x\ny"
    assert data["level"] == "warning" and data["logger"] == "trio_raft.node"
    assert data["node"] == "n1" and data["term"] == 4 and data["reason"] == "check_quorum"
    assert data["time"].endswith("+00:00")


def test_json_facts_never_replace_the_standard_fields_and_odd_values_become_repr() -> None:
    data = json.loads(
        JsonFormatter().format(_record("hi", facts={"message": "forged", "obj": {1, 2}}))
    )
    assert data["message"] == "hi"
    assert data["obj"] == repr({1, 2})


def test_json_includes_the_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    data = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in data["exception"]


def test_rate_limiter_lets_the_first_through_then_one_per_interval_with_a_count() -> None:
    limiter = RateLimiter(10.0)
    assert limiter.check("a", 0.0) == 0
    assert limiter.check("a", 1.0) is None
    assert limiter.check("a", 2.0) is None
    assert limiter.check("b", 2.0) == 0  # keys are independent
    assert limiter.check("a", 10.0) == 2  # two were suppressed meanwhile
    assert limiter.check("a", 11.0) is None


def test_log_limited_says_how_many_were_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_raft")
    logger = logging.getLogger("trio_raft.transport")
    limiter = RateLimiter(60.0)
    logged = [
        log_limited(logger, limiter, "key", now, "refused x", {"node": "n1", "reason": "r"})
        for now in (0.0, 1.0, 2.0, 60.0)
    ]
    assert logged == [True, False, False, True]
    first, second = caplog.records
    assert first.getMessage() == "refused x" and first.levelno == logging.WARNING
    assert getattr(first, RAFT_FIELDS) == {"node": "n1", "reason": "r"}
    assert second.getMessage() == "refused x (2 more like it since the last report)"
    assert getattr(second, RAFT_FIELDS) == {"node": "n1", "reason": "r", "suppressed": 2}
    assert first.filename == Path(__file__).name  # the caller's line, not the helper's


def test_rate_limiter_remembers_a_bounded_number_of_keys() -> None:
    limiter = RateLimiter(10.0)
    for i in range(RateLimiter.MAX_KEYS * 3):
        assert limiter.check(i, 0.0) == 0
    assert len(limiter._keys) <= RateLimiter.MAX_KEYS
    assert limiter.check(RateLimiter.MAX_KEYS * 3 - 1, 1.0) is None  # recent: still known


@pytest.mark.parametrize(
    ("level", "fmt", "words"), [("loud", "text", "log level"), ("info", "xml", "log format")]
)
def test_configure_refuses_unknown_values(level: str, fmt: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        configure(level, fmt, "n1")
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0)


def test_serve_parses_the_logging_options() -> None:
    parser = build_parser()
    args = parser.parse_args(["serve", "--config", "c.toml", "--id", "n1"])
    assert (args.log_level, args.log_format) == ("info", "text")
    args = parser.parse_args(
        ["serve", "--config", "c.toml", "--id", "n1", "--log-level", "debug", "--log-format",
         "json"]
    )  # fmt: skip
    assert (args.log_level, args.log_format) == ("debug", "json")


@pytest.mark.process
def test_serve_logs_json_lines(tmp_path: Path) -> None:
    """A one-node cluster with ``--log-format json``: every line on stderr is a JSON object,
    and its election is one of them, with its facts."""
    peer, client = _ports.allocate(2)
    config = tmp_path / "cluster.toml"
    config.write_text(
        f'cluster_id = "log"\nsecret = "{"s" * 32}"\ndata_dir = "data"\n'
        f'[nodes.n1]\npeer = "ws://127.0.0.1:{peer}/raft"\n'
        f'client = "ws://127.0.0.1:{client}/kv"\n',
        encoding="utf-8",
    )
    lines: list[dict[str, object]] = []
    with subprocess.Popen(
        [sys.executable, "-m", "trio_raft", "serve", "--config", str(config), "--id", "n1",
         "--log-format", "json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    ) as process:  # fmt: skip
        try:
            assert process.stderr is not None
            for raw in process.stderr:
                lines.append(json.loads(raw))
                if lines[-1].get("reason") == "election_won" or len(lines) > 200:
                    break
        finally:
            process.terminate()
            process.wait(30)
    won = [line for line in lines if line.get("reason") == "election_won"]
    assert won, lines
    assert won[0]["node"] == "n1" and won[0]["role"] == "leader" and won[0]["term"] == 1
    assert won[0]["logger"] == "trio_raft.node" and won[0]["level"] == "info"
