"""Student training-step throughput, MFU-style ratio, masked-only head gain, offline vs online targets.

Reference student (issue 5): 6 layers, 384 hidden, 12 heads, sequence 128, merged vocabulary of 32,000.
Synthetic token ids (throughput does not depend on the text). All ratios come from this one run:
- tokens/s of the distillation step (forward, KD + MLM loss, backward, AdamW) with the masked-only head;
- achieved FLOP/s (6 x parameters touched per token, the head only at masked positions, plus attention)
  divided by the fp32 matmul peak measured here (a 2048^3 matmul): an MFU-style ratio;
- step time with the full vocabulary head (every position projected) / with the masked-only head;
- training tokens/s with offline cached top-k targets / with an online teacher (6-layer 512-hidden BERT)
  run every step; and the cache's bytes per masked token.

    python benchmarks/train_throughput.py [--steps 6] [--batch 16] [--device cuda --dtype bf16]

On a GPU (``--device cuda --dtype bf16``) the peak is a bf16 matmul, the student steps under autocast with
fp32 weights, the online teacher runs in bf16; batches and cached targets are built on the CPU and copied
to the device every step, as the training loop does.
"""

import argparse
import json
import tempfile

import numpy as np
import torch
from common import add_device_args, autocast, clock, describe, resolve

from mergedistill.cache import OfflineTargets, OnlineTargets, build_cache, finalize_cache
from mergedistill.config import StudentConfig
from mergedistill.heads import masked_lm_logits
from mergedistill.losses import kd_soft_ce, mlm_ce
from mergedistill.student import build_student

VOCAB, LENGTH, K = 32_000, 128, 8


def matmul_peak(device, dtype, n=2048, repeats=5) -> float:
    n = n if device.type == "cpu" else 8192  # a GPU needs a larger product to reach its peak
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    start = clock(device)
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (clock(device) - start)


class Batches:
    """Deterministic synthetic batches in the pinned batch format (the plan interface the cache uses)."""

    def __init__(self, n_batches, batch_size):
        self.n_batches, self.batch_size = n_batches, batch_size

    def batch(self, index):
        g = torch.Generator().manual_seed(index)
        ids = torch.randint(5, VOCAB, (self.batch_size, LENGTH), generator=g)
        masked = torch.rand(ids.shape, generator=g) < 0.15
        labels = torch.where(masked, ids, torch.full_like(ids, -100))
        inputs = ids.masked_fill(masked, 4)
        return {
            "input_ids": inputs,
            "attention_mask": torch.ones_like(ids),
            "labels": labels,
            "teacher_input_ids": inputs,
            "teacher": "t",
        }


class SyntheticTeacher:
    def __init__(self, device, dtype):
        from transformers import BertConfig, BertForMaskedLM

        torch.manual_seed(1)
        self.device = device
        self.model = (
            BertForMaskedLM(
                BertConfig(
                    vocab_size=VOCAB,
                    hidden_size=512,
                    num_hidden_layers=6,
                    num_attention_heads=8,
                    intermediate_size=2048,
                    max_position_embeddings=LENGTH + 2,
                )
            )
            .eval()
            .to(device=device, dtype=dtype)
        )

    def topk(self, input_ids, attention_mask, positions, k):
        """Top-k on the CPU, where the cache writer and the id maps expect it."""
        with torch.inference_mode():
            on = [t.to(self.device) for t in (input_ids, attention_mask, positions)]
            logits, _ = masked_lm_logits(self.model, *on)
            values, ids = torch.topk(logits.float(), k, -1)
        return ids.cpu(), values.cpu()


def step_time(student, optimizer, batches, targets, steps, device, dtype, full_head=False):
    tokens = 0
    start = None
    for i in range(steps + 1):
        if i == 1:
            start, tokens = clock(device), 0  # the first step warms up
        batch = batches.batch(i)
        input_ids, attention_mask, labels = (batch[key].to(device) for key in ("input_ids", "attention_mask", "labels"))
        masked = labels != -100
        with autocast(device, dtype):
            if full_head:
                logits = student(input_ids=input_ids, attention_mask=attention_mask).logits[masked]
            else:
                logits, _ = masked_lm_logits(student, input_ids, attention_mask, masked)
        logits = logits.float()
        loss = mlm_ce(logits, labels[masked])
        if targets is not None:
            ids, values = (t.to(device) for t in targets(i, batch))
            loss = loss + kd_soft_ce(logits, ids, values)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tokens += int(batch["attention_mask"].sum())
    seconds = clock(device) - start
    return seconds / steps, tokens / seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16)
    add_device_args(parser)
    args = parser.parse_args()
    device, dtype = resolve(parser, args)
    torch.manual_seed(0)
    peak = matmul_peak(device, dtype)
    student = build_student(
        StudentConfig(layers=6, hidden=384, heads=12, intermediate=1536, max_position=LENGTH + 2, dropout=0.0), VOCAB
    )
    student.to(device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    batches = Batches(args.steps + 1, args.batch)
    teacher = SyntheticTeacher(device, dtype)
    identity = np.arange(VOCAB, dtype=np.int32)
    with tempfile.TemporaryDirectory() as tmp:
        build_cache(f"{tmp}/c", batches, {"t": teacher}, {"t": identity}, K, "bench", progress=False)
        summary = finalize_cache(f"{tmp}/c", "bench", batches)
        offline = OfflineTargets(f"{tmp}/c", "bench")
        offline_s, offline_tps = step_time(student, optimizer, batches, offline, args.steps, device, dtype)
    online = OnlineTargets({"t": teacher}, {"t": identity}, K)
    online_s, online_tps = step_time(student, optimizer, batches, online, args.steps, device, dtype)
    full_s, _ = step_time(student, optimizer, batches, None, args.steps, device, dtype, full_head=True)
    masked_s, masked_tps = step_time(student, optimizer, batches, None, args.steps, device, dtype)

    params = sum(p.numel() for p in student.parameters())
    embedding = student.bert.embeddings.word_embeddings.weight.numel()
    body = params - embedding  # the tied decoder is the embedding matrix
    tokens = args.batch * LENGTH
    masked_tokens = 0.15 * tokens
    cfg = student.config
    attention = 2 * 2 * cfg.num_hidden_layers * LENGTH * cfg.hidden_size * tokens  # QK^T and AV, forward
    flops_per_step = 6 * body * tokens + 6 * embedding * masked_tokens + 3 * attention
    achieved = flops_per_step / masked_s
    result = {
        "benchmark": "train_throughput",
        **describe(device, dtype),
        "student_params": params,
        "vocab": VOCAB,
        "batch": args.batch,
        "seq": LENGTH,
        "tokens_per_s_masked_only_head": round(masked_tps, 1),
        "achieved_gflops": round(achieved / 1e9, 2),
        "matmul_peak_gflops": round(peak / 1e9, 2),
        "mfu_ratio": round(achieved / peak, 3),
        "full_head_over_masked_only_step_time": round(full_s / masked_s, 2),
        "offline_over_online_tokens_per_s": round(offline_tps / online_tps, 2),
        "offline_tokens_per_s": round(offline_tps, 1),
        "online_tokens_per_s": round(online_tps, 1),
        "cache_bytes_per_masked_token": round(summary["bytes"] / (masked_tokens * batches.n_batches), 1),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
