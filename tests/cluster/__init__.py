"""Real-process tests: clusters of ``python -m trio_raft serve`` processes on 127.0.0.1.

Each test writes a cluster file into its ``tmp_path``, starts one OS process per node (logs in
``<tmp_path>/<id>.log``; the statuses and logs are printed when a test fails), drives it with the
real KV client, and kills every process in a ``finally``. Faults are real: ``kill -9``, restarts
from the data directory, and partitions through a loopback TCP proxy (:mod:`._proxy`). Time is
real too, so every test is bounded with :func:`trio.fail_after` (``DEADLINE_S``, a generous
bound that detects a hang), and no test asserts how long anything took: lines starting with
``FIGURE`` (visible with ``-s``) report the measured figures (failover and catch-up times,
operation counts). Every test here is marked ``process`` by its directory (see
``tests/conftest.py``) and runs in ``nox -s processes``; ports come from :mod:`tests._ports`.

Modules: :mod:`._harness` (ports, cluster files, processes, waits, the recorded KV load),
:mod:`._proxy` (the fault proxy), :mod:`._traced_node` (``serve`` that logs InstallSnapshot).
"""
