"""benchmarks/gpu_check.sh (`make gpu-check`) on a machine without a usable GPU: one line, exit 2, nothing run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_command_on_the_cpu(tmp_path):
    """``DEVICE=cpu SMOKE=1``: the script's demo and BiStil commands with a few steps (~1.5 min on 2 cores), so a
    changed CLI or config key breaks here, not on a GPU lent for minutes."""
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "SMOKE": "1", "WORK": str(tmp_path / "work")}
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = (tmp_path / "work" / "summary.md").read_text(encoding="utf-8")
    assert "demo config on cpu, fp32, ZeRO-2, 4 student steps" in summary
    assert "the exported AutoTokenizer gives the ids the student was trained on: de 100/100" in summary
    assert "BiStil demo phases on cpu" in summary and "keyterms:" in summary and "topic:" in summary
