"""Every check that CI runs, runnable locally with ``python -m nox -s NAME``.

``.ci/run`` runs the default sessions (tests, processes, lint, typecheck, docs); ``python -m
nox -s tests processes`` runs the whole test suite. Arguments after ``--`` reach the underlying
tool, e.g. ``nox -s tests -- -k election -n 0`` (a later ``-n`` overrides the default ``-n 2``)
or ``TRIO_RAFT_SEEDS=50 nox -s sim -- -x``. ``nox -s hypothesis`` runs the property tests random
(CI runs them derandomized).

The suite is split in two by the ``process`` marker: ``tests`` runs everything else (virtual
time, in-process, port 0), ``processes`` the tests that start OS processes or bind fixed ports
(real time, real sockets; see ``tests/_ports.py`` and ``tests/_process_guard.py``).

CI runs the whole suite on the default Python (3.11 on CI) and ``tests_newest``, a cross-version
check of the unit and in-process suites, on the newest supported Python (skipped where it is not
installed). ``nox -s tests_all_pythons`` (optional, not in CI) runs the ``tests`` session on every
supported Python (3.11, 3.12, 3.13) found on the PATH.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

import nox

nox.options.sessions = ["tests", "processes", "tests_newest", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
SIM_SEEDS_DEFAULT = "2000"


def _install(session: nox.Session, *extras: str, project: bool = True) -> None:
    """Install the project with ``extras``, or only the extras' requirements.

    Args:
        session: The nox session to install into.
        *extras: Names of ``[project.optional-dependencies]`` groups in pyproject.toml.
        project: If false, install only the requirements listed under ``extras``, not the
            package itself (for tools such as ruff that never import it).
    """
    if project:
        # setuptools reuses build/lib between builds, so a deleted module would live on there.
        shutil.rmtree(ROOT / "build", ignore_errors=True)
        session.install(f".[{','.join(extras)}]" if extras else ".")
        return
    with (ROOT / "pyproject.toml").open("rb") as f:
        optional: dict[str, list[str]] = tomllib.load(f)["project"]["optional-dependencies"]
    session.install(*(req for extra in extras for req in optional[extra]))


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite on two workers (pytest-xdist), except the tests marked ``process``."""
    _install(session, "test")
    session.run("pytest", "-n", "2", "-m", "not process", *session.posargs)


NEWEST_PYTHON = "3.13"
NEWEST_PYTHON_TESTS = (
    "tests/core", "tests/storage", "tests/net", "tests/kv", "tests/admin", "tests/testing",
    "tests/test_public_api.py", "tests/test_docs_code.py",
)  # fmt: skip
"""What ``tests_newest`` runs: the units (core, codec, WAL, transport, KV, admin) and the public
API, about 1,000 tests in a minute or two. The simulator suites exercise the same code on the
default Python; running them twice would double CI's time for little."""


@nox.session(python=NEWEST_PYTHON)
def tests_newest(session: nox.Session) -> None:
    """Run the unit and in-process suites on the newest supported Python (CI runs it; a
    missing interpreter is skipped)."""
    _install(session, "test")
    session.run("pytest", "-n", "2", "-m", "not process", *NEWEST_PYTHON_TESTS, *session.posargs)


@nox.session(python=["3.11", "3.12", "3.13"])
def tests_all_pythons(session: nox.Session) -> None:
    """Optional, not run by CI (its time is capped): the ``tests`` session's tests on each
    supported Python that is installed (``nox -s tests_all_pythons-3.13`` picks one); a
    missing interpreter is skipped."""
    _install(session, "test")
    session.run("pytest", "-n", "2", "-m", "not process", *session.posargs)


@nox.session
def processes(session: nox.Session) -> None:
    """Run the tests marked ``process`` (real OS processes, fixed ports, real time) on two
    workers: clusters of ``trio-raft serve`` processes, ``kill -9``, the CLI end to end."""
    _install(session, "test")
    session.run("pytest", "-n", "2", "-m", "process", *session.posargs)


@nox.session
def sim(session: nox.Session) -> None:
    """Run the ``slow`` simulation tests over many seeds (TRIO_RAFT_SEEDS, default 2000)."""
    _install(session, "test")
    seeds = os.environ.get("TRIO_RAFT_SEEDS", SIM_SEEDS_DEFAULT)
    session.run("pytest", "-n", "2", "-m", "slow", *session.posargs, env={"TRIO_RAFT_SEEDS": seeds})


@nox.session
def hypothesis(session: nox.Session) -> None:
    """Run the property tests random, not derandomized as in CI, with ten times their examples
    (``TRIO_RAFT_HYPOTHESIS_EXAMPLES``, if set); failures are kept in ``.hypothesis`` and
    replayed first next time. Arguments after ``--`` choose the tests (default: the storage
    corruption test, the one that takes its settings from ``tests/conftest.py``)."""
    _install(session, "test")
    session.run(
        "pytest", "-n", "2", *(session.posargs or ["tests/storage/test_corruption.py"]),
        env={"TRIO_RAFT_HYPOTHESIS_RANDOM": "1"},
    )  # fmt: skip


@nox.session
def lint(session: nox.Session) -> None:
    """Check lint rules and formatting with ruff."""
    _install(session, "lint", project=False)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package, the benchmarks, the tests and this noxfile with strict mypy
    (the ``test`` extra and nox are installed for the imports of the tests and the noxfile)."""
    _install(session, "typecheck", "test")
    session.install("nox")
    session.run("mypy", "trio_raft", "benchmarks", "tests", "noxfile.py", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML docs; any Sphinx warning (nitpicky) fails the build."""
    _install(session, "docs")
    session.run(
        "sphinx-build",
        "-W",
        "--keep-going",
        "-E",  # re-read every page, so an incremental build cannot hide old warnings
        "-b",
        "html",
        "docs/source",
        "docs/_build/html",
        *session.posargs,
    )


@nox.session
def demo(session: nox.Session) -> None:
    """Run the demos: a simulated 3-node cluster with failover, then the same over three real
    processes on 127.0.0.1 (``kill -9`` of the leader included). Both end by themselves."""
    _install(session)
    session.run("python", "-m", "trio_raft", "demo", *session.posargs)
    session.run("python", "-m", "trio_raft", "cluster", "--demo")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks (``python -m benchmarks``, e.g. ``nox -s bench -- --quick``), with
    the ``bench`` extra: PySyncObj (the cluster benchmark's baseline), matplotlib and rich."""
    if not (ROOT / "benchmarks" / "__main__.py").exists():
        session.skip("benchmarks/__main__.py does not exist yet")
    _install(session, "bench")
    session.run("python", "-m", "benchmarks", *session.posargs)
