"""Chaos runs in which every message goes through the real wire codec.

The simulator's network hands messages over as Python objects, so a message the core can build
but the codec refuses (once: the ``rejected_index=-1`` answer to a stale leader, which made real
transports drop the peer connection) went unseen by thousands of chaos seeds. Here
``wire_codec=True`` frames and decodes every message; one that does not survive stops the run
with :class:`~trio_raft.testing._network.WireCodecError` and the seed that replays it
(``pytest tests/sim/test_chaos_codec.py --seed N``).
"""

from __future__ import annotations

import functools
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from trio_raft.testing import CHAOS_CONFIG, ChaosReport, run_chaos


def _run(seed: int, **kwargs: Any) -> ChaosReport:
    try:
        report: ChaosReport = trio.run(
            functools.partial(run_chaos, seed, wire_codec=True, **kwargs),
            clock=trio.testing.MockClock(autojump_threshold=0),
        )
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise AssertionError(f"seed={seed}: {type(exc).__name__}: {exc}") from exc
    return report


@pytest.mark.slow
@pytest.mark.seeds(16)
@pytest.mark.parametrize("defences", [True, False], ids=["prevote-checkquorum", "plain-raft"])
def test_chaos_through_the_wire_codec(sim_seed: int, defences: bool) -> None:
    """The chaos recipe (partitions, crashes, 10% loss, duplication, reordering) with every
    message framed and decoded: all of them survive, and the run is as safe as ever. Without
    CheckQuorum a deposed leader keeps sending AppendEntries of its old term, so the answers to
    stale leaders are exercised in every seed."""
    config = attrs.evolve(CHAOS_CONFIG, pre_vote=defences, check_quorum=defences)
    report = _run(sim_seed, duration_s=30.0, config=config)
    assert report.linearizability.ok is True, f"seed={sim_seed}: {report.linearizability}"
    assert report.messages > 0, f"seed={sim_seed}: no message was sent"
