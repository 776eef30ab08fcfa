"""trio-raft benchmarks: ``python -m benchmarks`` (or ``nox -s bench``).

Every scenario prints its figures and its ratio to a baseline measured in the same run, so the
numbers compare across machines. Nothing here is asserted: speed goals are read, not tested.
"""
