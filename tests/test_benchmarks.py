"""Smoke tests of benchmarks/: every script runs at tiny sizes and ends with the JSON line run_all collects."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def load_run_all():
    spec = importlib.util.spec_from_file_location("run_all", BENCH / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_benchmark(name: str, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = load_run_all().last_json_line(proc.stdout)
    assert result is not None, f"{name}: no final JSON line in:\n{proc.stdout[-1000:]}"
    return result


def test_every_benchmark_is_described_and_discovered():
    run_all = load_run_all()
    names = {p.stem for p in run_all.discover()}
    assert {"inference_latency", "peer_distill", "train_throughput", "vocab_merge"} <= names
    assert names == set(run_all.DESCRIPTIONS), "add a DESCRIPTIONS entry for every benchmark script"
    assert run_all.last_json_line('noise\n{"a": 1}\n') == {"a": 1}
    assert run_all.last_json_line("no json here") is None


def test_inference_latency_quick():
    result = run_benchmark("inference_latency", "--quick", "--repeats", "2")
    assert result["benchmark"] == "inference_latency"
    assert result["teacher_params"] > result["student_params"] > 0
    assert result["param_ratio"] == pytest.approx(result["teacher_params"] / result["student_params"], rel=1e-2)
    for key in (
        "latency_ratio_teacher_over_student_b1",
        "latency_ratio_teacher_over_student_big_batch",
        "throughput_ratio_student_over_teacher",
    ):
        assert result[key] > 0


def test_peer_distill_quick_trains_both_runs_from_the_same_start():
    result = run_benchmark("peer_distill", "--quick", "--peer", "hf", "--steps", "6")
    assert result["peer"] == "hf-distilbert-loop"
    assert result["mergedistill_steps_per_s"] > 0 and result["peer_steps_per_s"] > 0
    # both runs start from one initial student; training towards the teacher lowers its KL to the teacher
    assert result["mergedistill_heldout_kl_masked"] < result["initial_heldout_kl_masked"]
    assert result["peer_heldout_kl_masked"] < result["initial_heldout_kl_masked"]


def test_train_throughput_small():
    result = run_benchmark("train_throughput", "--steps", "1", "--batch", "2")
    assert result["benchmark"] == "train_throughput"
    assert 0 < result["mfu_ratio"] < 1.5
    assert result["full_head_over_masked_only_step_time"] > 0 and result["offline_over_online_tokens_per_s"] > 0


@pytest.mark.parametrize(
    "name,args",
    [("train_throughput", ("--steps", "1", "--batch", "2")), ("inference_latency", ("--quick", "--repeats", "2"))],
)
def test_speed_benchmarks_take_the_gpu_suites_bf16_path(name, args):
    """`make bench-gpu` passes --device cuda --dtype bf16; the bf16 half of that path runs here on the CPU."""
    result = run_benchmark(name, *args, "--dtype", "bf16")
    assert result["dtype"] == "bfloat16" and result["device"] == "cpu"
    if name == "train_throughput":
        assert 0 < result["mfu_ratio"] and result["tokens_per_s_masked_only_head"] > 0
    else:
        assert result["student_latency_ms_b1"] > 0 and result["teacher_latency_ms_b1"] > 0


def test_gpu_suite_refuses_a_machine_without_cuda(monkeypatch, tmp_path, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "RESULTS-gpu.md"
    with pytest.raises(SystemExit) as stop:
        load_run_all().main(["--gpu", "--out", str(out)])
    assert stop.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not out.exists()
