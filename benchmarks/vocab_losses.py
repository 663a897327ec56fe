"""The training step's vocabulary-wide loss work: MLM + top-k KD from one log-softmax (``losses.mlm_and_kd``,
what train.py runs) against the two separate terms (torch's ``cross_entropy`` + ``kd_soft_ce`` on the KD rows),
and MLM alone (teacher builds, the MLM-only baseline): the fused function without KD rows against torch's
``cross_entropy``, which ``losses.mlm_ce`` keeps (no faster alone).

Forward + backward of the loss terms only (no encoder), at the demo student's shape (about 300 masked rows of a
32 x 64 batch, 19.4 k pieces, top-16), at a 32 k-piece vocabulary, and MLM alone at the demo-multi teacher's
12 k; each pair is timed alternately in one run, and values and gradients are compared (``max_grad_diff``).
Prints one JSON line.

    python benchmarks/vocab_losses.py [--rows 300] [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mergedistill.losses import _MlmAndKd, kd_soft_ce, mlm_and_kd


def two_terms(logits, gold, rows, ids, topk_logits):
    return torch.nn.functional.cross_entropy(logits.float(), gold), kd_soft_ce(logits[rows], ids, topk_logits)


def fused(logits, gold, rows, ids, topk_logits):
    return mlm_and_kd(logits, gold, rows, ids, topk_logits)


def torch_mlm(logits, gold, rows, ids, topk_logits):  # MLM alone (teacher builds, the MLM-only baseline)
    return torch.nn.functional.cross_entropy(logits.float(), gold), logits.new_zeros(())


def our_mlm(logits, gold, rows, ids, topk_logits):  # the fused function with no KD row: why mlm_ce stays torch's
    none = torch.zeros(0, dtype=torch.long)
    return _MlmAndKd.apply(logits, gold, none, none[:, None], none[:, None].float())[0], logits.new_zeros(())


def inputs(rows: int, vocab: int, k: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    kd_rows = torch.rand(rows, generator=generator) < 0.9  # unified mode: most masked pieces have a target
    m = int(kd_rows.sum())
    ids = torch.randint(0, vocab, (m, k), generator=generator)
    ids[:, -1] = -1  # a teacher piece outside the merged vocabulary
    topk_logits = torch.randn(m, k, generator=generator)
    topk_logits[ids < 0] = float("-inf")
    gold = torch.randint(0, vocab, (rows,), generator=generator)
    return torch.randn(rows, vocab, generator=generator) * 3, gold, kd_rows, ids, topk_logits


def run(fn, base, gold, rows, ids, topk_logits):
    logits = base.clone().requires_grad_()
    mlm, kd = fn(logits, gold, rows, ids, topk_logits)
    (mlm + kd).backward()
    return torch.stack([mlm.detach(), kd.detach()]), logits.grad


def measure(rows: int, vocab: int, k: int, repeats: int, theirs=two_terms, ours=fused) -> dict:
    args = inputs(rows, vocab, k)
    values, grads, seconds = {}, {}, {"theirs": 0.0, "ours": 0.0}
    for name, fn in (("theirs", theirs), ("ours", ours)):
        for _ in range(3):  # warm-up
            values[name], grads[name] = run(fn, *args)
    for _ in range(repeats):  # alternate, so that machine noise falls on both
        for name, fn in (("theirs", theirs), ("ours", ours)):
            start = time.perf_counter()
            run(fn, *args)
            seconds[name] += time.perf_counter() - start
    return {
        "torch_ms": round(1000 * seconds["theirs"] / repeats, 2),
        "ours_ms": round(1000 * seconds["ours"] / repeats, 2),
        "speedup": round(seconds["theirs"] / seconds["ours"], 2),
        "max_value_diff": float((values["theirs"] - values["ours"]).abs().max()),
        "max_grad_diff": float((grads["theirs"] - grads["ours"]).abs().max()),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300, help="masked rows per batch")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    began = time.perf_counter()
    result = {"benchmark": "vocab_losses", "rows": args.rows, "k": 16, "threads": torch.get_num_threads()}
    cases = (
        ("demo_19k", 19370, two_terms, fused),  # the demo student's merged vocabulary
        ("vocab_32k", 32000, two_terms, fused),
        ("mlm_only_19k", 19370, torch_mlm, our_mlm),  # the MLM-only baseline student
        ("mlm_only_12k", 12000, torch_mlm, our_mlm),  # the demo-multi teacher's build step
    )
    for label, vocab, theirs, ours in cases:
        for key, value in measure(args.rows, vocab, 16, args.repeats, theirs, ours).items():
            result[f"{label}_{key}"] = value
    result["seconds"] = round(time.perf_counter() - began, 1)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
