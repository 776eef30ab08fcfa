"""The pure Raft rules: no trio, no I/O, no clock, no randomness.

Everything here is synchronous and deterministic. Time enters only as a ``now`` argument and
randomness as values the caller drew. :mod:`trio_raft._node` does the I/O the rules ask for.
"""
