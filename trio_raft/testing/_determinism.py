"""The one place that reaches into trio's private scheduler (quarantined here on purpose).

Trio shuffles runnable tasks on purpose, to flush out code that depends on scheduling order.
A simulation must be repeatable from its seed, so the simulator makes that shuffle depend on
the seed, exactly as trio itself does when Hypothesis drives it
(``trio._core._run._hypothesis_plugin_setup``).
"""

from __future__ import annotations

import trio


def seed_scheduler(seed: int) -> None:
    """Make trio's choice among runnable tasks a function of ``seed`` from now on.

    Raises:
        RuntimeError: this trio version lays out its scheduler differently; the simulator cannot
            promise repeatable runs on it (pin a tested trio version).
    """
    run_module = getattr(trio._core, "_run", None)
    rng = getattr(run_module, "_r", None)
    if (
        run_module is None
        or rng is None
        or not hasattr(run_module, "_ALLOW_DETERMINISTIC_SCHEDULING")
    ):
        raise RuntimeError(
            f"trio {trio.__version__} has no seedable scheduler; trio_raft.testing needs one "
            "(tested with trio 0.31-0.35)"
        )
    run_module._ALLOW_DETERMINISTIC_SCHEDULING = True
    rng.seed(seed)
