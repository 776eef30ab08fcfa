"""Properties of the admission policy both ports use (``trio_raft._inbound.Admission``), checked
against a simple model over arbitrary sequences of arrivals, handshakes and closes."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings

from trio_raft._inbound import Admission, Ticket

steps = st.lists(
    st.tuples(st.sampled_from(["arrive", "establish", "close"]), st.integers(0, 3)),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    steps,
    st.integers(1, 5),
    st.integers(1, 3),
    st.one_of(st.none(), st.integers(1, 8)),
)
def test_bounds_hold_and_the_newest_is_always_admitted(
    script: list[tuple[str, int]], max_pending: int, per_address: int, max_total: int | None
) -> None:
    admission = Admission(
        max_pending=max_pending, max_pending_per_address=per_address, max_total=max_total
    )
    live: list[Ticket] = []  # admitted, not evicted, not closed
    for action, n in script:
        if action == "arrive":
            address = f"10.0.0.{n}"
            established = sum(not t.pending for t in live)
            ticket = admission.admit(address)
            if ticket is None:  # only when every slot is held by an established connection
                assert max_total is not None and established >= max_total
            else:
                live.append(ticket)
        elif live:
            ticket = live[n % len(live)]
            if action == "establish":
                admission.establish(ticket)
            else:
                admission.release(ticket)
                live.remove(ticket)
        evicted = [t for t in live if t.evicted]
        for t in evicted:
            assert t.scope.cancel_called
            admission.release(t)  # its handler's finally
            live.remove(t)
        pending = [t for t in live if t.pending]
        assert admission.pending == len(pending) <= max_pending
        assert admission.established == len(live) - len(pending)
        for address in {t.address for t in pending}:
            assert sum(t.address == address for t in pending) <= per_address
        if max_total is not None:
            assert len(live) <= max_total
