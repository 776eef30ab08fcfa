"""The disk-space alarm on a real, small file system (issue 7): a tmpfs mounted in a private
mount namespace (``unshare -rm``), so no root privileges or cleanup are needed. Skipped where the
machine does not allow it (no ``unshare``, user namespaces disabled, not Linux).

The scenario itself is ``_tmpfs_scenario.py``; this test runs it and checks its findings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tmpfs and unshare: Linux"),
]

SCENARIO = Path(__file__).with_name("_tmpfs_scenario.py")
SIZE = "24m"
HANG_S = 300
"""A deadline against hangs only (the scenario takes seconds)."""


def _in_private_tmpfs(directory: Path, *command: str) -> list[str]:
    script = f'mount -t tmpfs -o size={SIZE} tmpfs "$1" && shift && exec "$@"'
    return ["unshare", "-rm", "sh", "-c", script, "sh", str(directory), *command]


def _require_private_tmpfs(directory: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) on this machine")
    probe = subprocess.run(
        _in_private_tmpfs(directory, "true"), capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a private tmpfs here: {probe.stderr.strip()}")


def test_a_full_disk_raises_the_alarm_and_loses_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "disk"
    directory.mkdir()
    _require_private_tmpfs(directory)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        _in_private_tmpfs(directory, sys.executable, str(SCENARIO), str(directory)),
        capture_output=True, text=True, timeout=HANG_S, env=env,
    )  # fmt: skip
    assert done.returncode == 0, f"scenario failed:\n{done.stdout}\n{done.stderr}"
    found = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"tmpfs {SIZE}: {found}")
    assert found["acknowledged"] > 10, found  # the disk filled up only after real work
    assert "frees_space=True" in found["refusal"], found
    assert found["leader_alarm"] is True, found
    assert found["alarms"], found  # which ones depends on compactions racing on the shared disk
    assert found["read_during_alarm"] is True
    assert found["free_after_deletes"] >= found["capacity"] // 2, found
    assert found["all_up"] == ["n1", "n2", "n3"]
    assert found["after_restart"] == ["small"] * 5
    assert found["deleted_stay_deleted"] is True
    assert "Traceback" not in done.stderr, done.stderr
