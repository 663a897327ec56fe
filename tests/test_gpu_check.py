"""benchmarks/gpu_check.sh (`make gpu-check`) on a machine without a usable GPU: one line, exit 2, nothing run."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_refuses_cleanly_without_cuda(tmp_path):
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "CUDA_VISIBLE_DEVICES": "",
        "WORK": str(tmp_path / "work"),
    }  # no GPU, even on a GPU machine
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "sees no CUDA GPU" in result.stderr
    assert result.stdout == "" and not (tmp_path / "work").exists()  # refused before anything was written
