"""Student vs teacher CPU inference: latency at batch 1 and 32, throughput, and the teacher/student ratios.

By default both models are built here from random weights (speed does not depend on the weights, and no
download is needed): a BERT-base-sized teacher (12 layers, 768 hidden, 12 heads, vocabulary 32,000) and the
reference student of issue 5 (6 layers, 384 hidden, 12 heads, vocabulary 32,000), both ``BertForMaskedLM``.
``--teacher DIR`` / ``--student DIR`` measure saved checkpoints instead (any ``AutoModelForMaskedLM``
directory, e.g. ``runs/zoo/demo-multi`` and ``runs/demo/export`` after ``make demo``).

Each number is ``mergedistill.heldout_eval.latency_ms`` (the one the eval stage reports): the full masked-LM
forward (``--encoder-only``: the encoder without the vocabulary head) on random ids of the same shape for
both models, under ``torch.inference_mode``, one warm-up, the median of ``--repeats`` timed calls.
Throughput is sequences/s at the large batch. A real mBERT teacher (119,547-piece head) is slower than the
32,000-piece default, so the default ratios are conservative for it.

    python benchmarks/inference_latency.py [--repeats 3] [--threads N] [--teacher DIR --student DIR] [--quick]
                                           [--device cuda --dtype bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from common import add_device_args, resolve  # noqa: E402
from common import describe as describe_device

from mergedistill.heldout_eval import latency_ms  # noqa: E402

# (layers, hidden, heads, intermediate, vocab)
SIZES = {
    "default": {"teacher": (12, 768, 12, 3072, 32_000), "student": (6, 384, 12, 1536, 32_000)},
    "quick": {"teacher": (2, 128, 2, 512, 2_000), "student": (1, 64, 2, 256, 2_000)},
}


def synthetic_mlm(layers, hidden, heads, intermediate, vocab, max_position, seed):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_position,
    )
    return BertForMaskedLM(config).eval()


def load_mlm(directory):
    from transformers import AutoModelForMaskedLM

    return AutoModelForMaskedLM.from_pretrained(directory, local_files_only=True).eval()


def describe(model) -> str:
    c = model.config
    return f"{c.model_type} {c.num_hidden_layers}x{c.hidden_size}, vocab {c.vocab_size:,}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--teacher", help="saved masked-LM checkpoint directory (default: a synthetic BERT-base-sized teacher)"
    )
    parser.add_argument(
        "--student", help="saved masked-LM checkpoint directory (default: the synthetic reference student)"
    )
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32, help="the large batch (batch 1 is always measured)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed calls per shape, median reported (default 9 at batch 1, 3 at the large batch)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, = the CPU count)")
    parser.add_argument("--encoder-only", action="store_true", help="time the encoder without the vocabulary head")
    parser.add_argument("--quick", action="store_true", help="tiny models, seq 32, batch 4 (smoke test)")
    add_device_args(parser)
    args = parser.parse_args(argv)
    device, dtype = resolve(parser, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.seq, args.batch = min(args.seq, 32), min(args.batch, 4)
    sizes = SIZES["quick" if args.quick else "default"]
    began = time.perf_counter()
    models = {}
    for role, seed in (("teacher", 1), ("student", 0)):
        directory = getattr(args, role)
        models[role] = (
            load_mlm(directory)
            if directory
            else synthetic_mlm(*sizes[role], max_position=max(512, args.seq + 2), seed=seed)
        )
        models[role].to(device=device, dtype=dtype)
        limit = getattr(models[role].config, "max_position_embeddings", None)
        if getattr(models[role].config, "position_biased_input", True) and limit and args.seq > limit:
            parser.error(f"--seq {args.seq} exceeds the {role}'s max_position_embeddings ({limit})")
    batches = [1] if args.batch == 1 else [1, args.batch]
    results, params = {}, {}
    for role, model in models.items():
        params[role] = sum(p.numel() for p in model.parameters())
        results[role] = {}
        for batch in batches:
            repeats = args.repeats or (9 if batch == 1 else 3)
            runnable = model.base_model if args.encoder_only else model
            ms = latency_ms(runnable, model.config.vocab_size, batch, args.seq, repeats=repeats)
            results[role][batch] = {"latency_ms": ms, "seq_per_s": batch * 1000.0 / ms}

    big = batches[-1]
    t, s = results["teacher"], results["student"]
    print(
        f"{describe_device(device, dtype)}, threads {torch.get_num_threads()}, seq {args.seq}, {'encoder only' if args.encoder_only else 'full masked-LM forward'}"
    )
    print(
        f"teacher: {describe(models['teacher'])}, {params['teacher'] / 1e6:.1f} M params"
        + (f" ({args.teacher})" if args.teacher else " (synthetic)")
    )
    print(
        f"student: {describe(models['student'])}, {params['student'] / 1e6:.1f} M params"
        + (f" ({args.student})" if args.student else " (synthetic)")
    )
    print()
    print("| measure | teacher | student | ratio |")
    print("|---|---:|---:|---:|")
    for batch in batches:
        print(
            f"| latency ms, batch {batch} | {t[batch]['latency_ms']:.1f} | {s[batch]['latency_ms']:.1f} | {t[batch]['latency_ms'] / s[batch]['latency_ms']:.2f}x (teacher / student) |"
        )
    for batch in batches:
        print(
            f"| sequences/s, batch {batch} | {t[batch]['seq_per_s']:.1f} | {s[batch]['seq_per_s']:.1f} | {s[batch]['seq_per_s'] / t[batch]['seq_per_s']:.2f}x (student / teacher) |"
        )
    print(
        f"| parameters | {params['teacher']:,} | {params['student']:,} | {params['teacher'] / params['student']:.2f}x |"
    )
    result = {
        "benchmark": "inference_latency",
        "teacher": args.teacher or "synthetic",
        "student": args.student or "synthetic",
        "teacher_model": describe(models["teacher"]),
        "student_model": describe(models["student"]),
        "teacher_params": params["teacher"],
        "student_params": params["student"],
        "param_ratio": round(params["teacher"] / params["student"], 3),
        **describe_device(device, dtype),
        "seq": args.seq,
        "batch": big,
        "encoder_only": args.encoder_only,
        "threads": torch.get_num_threads(),
        "teacher_latency_ms_b1": round(t[1]["latency_ms"], 2),
        "student_latency_ms_b1": round(s[1]["latency_ms"], 2),
        "teacher_latency_ms_big_batch": round(t[big]["latency_ms"], 2),
        "student_latency_ms_big_batch": round(s[big]["latency_ms"], 2),
        "teacher_seq_per_s": round(t[big]["seq_per_s"], 2),
        "student_seq_per_s": round(s[big]["seq_per_s"], 2),
        "latency_ratio_teacher_over_student_b1": round(t[1]["latency_ms"] / s[1]["latency_ms"], 3),
        "latency_ratio_teacher_over_student_big_batch": round(t[big]["latency_ms"] / s[big]["latency_ms"], 3),
        "throughput_ratio_student_over_teacher": round(s[big]["seq_per_s"] / t[big]["seq_per_s"], 3),
        "seconds": round(time.perf_counter() - began, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
