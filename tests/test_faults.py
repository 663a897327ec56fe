"""``mergedistill.faults``: the kill points the fault sweep (tests/reliability/test_fault_sweep.py) relies on."""

import os
import signal
import subprocess
import sys

PASSES = "from mergedistill import faults\nfor name in ['a', 'b', 'a', 'a']:\n    print(name, flush=True)\n    faults.point(name)\n"


def run(tmp_path, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MERGEDISTILL_") and k != "RANK"}
    return subprocess.run(
        [sys.executable, "-c", PASSES], env={**clean, **env}, capture_output=True, text=True, cwd=tmp_path, timeout=120
    )


def test_the_nth_pass_of_a_point_is_a_sigkill_and_a_trace_lists_every_pass(tmp_path):
    killed = run(tmp_path, MERGEDISTILL_KILL_AT="a@2", MERGEDISTILL_FAULT_TRACE=str(tmp_path / "trace"))
    assert killed.returncode == -signal.SIGKILL and killed.stdout.split() == ["a", "b", "a"]
    assert (tmp_path / "trace.0").read_text().split() == ["a", "b", "a"]  # written before the kill
    assert run(tmp_path, MERGEDISTILL_KILL_AT="a@2@1", RANK="0").returncode == 0  # another rank's kill
    assert run(tmp_path, MERGEDISTILL_KILL_AT="a@3@1", RANK="1").returncode == -signal.SIGKILL
    untouched = run(tmp_path)
    assert untouched.returncode == 0 and untouched.stdout.split() == ["a", "b", "a", "a"]
