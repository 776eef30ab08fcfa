"""Hypothesis strategies shared by the codec and storage tests."""

from __future__ import annotations

import hypothesis.strategies as st

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
"""Every scalar of the command data model."""

commands = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=6) | st.binary(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)
"""Values of the command data model, nested (tuples arrive as lists after a round trip)."""
