"""One single-teacher, same-vocabulary distillation run done by mergedistill's loss path and by a peer.

Same teacher, same student initialization, same pre-generated batches, same number of steps, same seed and
the same optimizer loop (``torch.optim.AdamW``, gradient clipping 1.0, no schedule) for every run; only the
way the loss is computed differs:

- **mergedistill**: the code path of ``mergedistill.train``: teacher top-k at the masked positions through
  ``Teacher.topk`` / ``cache.OnlineTargets`` (k = 8, identity id map), the student's vocabulary projection
  at the masked positions only (``heads.masked_lm_logits``), ``losses.kd_soft_ce`` (× T²) + ``losses.mlm_ce``
  combined by ``losses.combine``. (The pipeline runs this under DeepSpeed; the optimizer is kept identical
  here so that the comparison isolates the loss path.)
- **peer**: ``textbrewer`` (``BasicDistiller``, soft cross-entropy over the full vocabulary at every non-pad
  position, weight T², plus the model's own MLM loss) when it is importable; otherwise (or with
  ``--peer hf``) a plain loop in the style of HuggingFace's DistilBERT distillation: KL(teacher ‖ student)
  at temperature T over the full-vocabulary logits of every non-pad position (``model(...).logits``,
  ``batchmean``, × T²) + the MLM loss. ``--peer both`` runs the two peers.

The teacher is a random 4-layer 256-hidden BERT whose (tied) word embeddings are scaled so that its
distributions at masked positions are about as peaked as a trained masked LM's (the top-k mass is
printed); the student is a random 2-layer 128-hidden BERT; token ids are Zipf-distributed, lengths vary
(padding), 15 % of tokens are masked BERT-style (80/10/10). Reported: steps/s (1 / the median step time;
the first step is warm-up and not timed), each run's own training loss (mean of the last 5 steps; the
definitions differ, so these are not comparable), and on a held-out batch, for every student the same way:
full-vocabulary KL(teacher ‖ student) at T = 1 at the masked positions and at all non-pad positions, top-1
agreement with the teacher at the masked positions, and the gold masked-token cross-entropy.

    python benchmarks/peer_distill.py [--steps 30] [--batch 16] [--peer auto|textbrewer|hf|both] [--quick]

textbrewer is not a dependency of mergedistill; to include it, run this script with an interpreter that
can import it (for example a separate virtual environment that also sees the project's packages).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mergedistill.cache import OnlineTargets  # noqa: E402
from mergedistill.config import StudentConfig  # noqa: E402
from mergedistill.heads import masked_lm_logits  # noqa: E402
from mergedistill.losses import combine, kd_kl, kd_soft_ce, mlm_ce  # noqa: E402
from mergedistill.student import build_student  # noqa: E402
from mergedistill.teachers import Teacher, TeacherCard  # noqa: E402

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
GRAD_CLIP = 1.0


# ---------------------------------------------------------------------------------------------- set-up
def synthetic_tokenizer(vocab_size: int):
    """A fast WordPiece tokenizer over pieces w0, w1, ... with BERT's specials at ids 0-4 (no training)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(vocab_size - 5)]
    backend = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def synthetic_teacher(vocab_size, layers, hidden, seq, embedding_scale, seed=1) -> Teacher:
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=max(1, hidden // 64),
            intermediate_size=4 * hidden,
            max_position_embeddings=seq + 2,
            pad_token_id=PAD,
        )
    ).eval()
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight.mul_(
            embedding_scale
        )  # tied to the output layer: sharper distributions
    for param in model.parameters():
        param.requires_grad_(False)
    card = TeacherCard(name="teacher", source="synthetic", languages=["xx"], max_length=seq)
    return Teacher(card, model, synthetic_tokenizer(vocab_size))


def make_batches(n, batch_size, seq, vocab_size, seed):
    """Pre-generated batches in mergedistill's batch format (same tensors for every run)."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab_size - 5 + 1, dtype=np.float64)
    zipf = (1.0 / ranks) / (1.0 / ranks).sum()
    out = []
    for _ in range(n):
        ids = np.full((batch_size, seq), PAD, dtype=np.int64)
        labels = np.full((batch_size, seq), -100, dtype=np.int64)
        for row in range(batch_size):
            length = int(rng.integers(seq // 2, seq + 1))
            tokens = 5 + rng.choice(vocab_size - 5, size=length - 2, p=zipf)
            masked = rng.random(length - 2) < 0.15
            if not masked.any():
                masked[rng.integers(length - 2)] = True
            labels[row, 1 : length - 1][masked] = tokens[masked]
            action = rng.random(length - 2)
            inputs = tokens.copy()
            inputs[masked & (action < 0.8)] = MASK
            swap = masked & (action >= 0.8) & (action < 0.9)
            inputs[swap] = rng.integers(5, vocab_size, size=int(swap.sum()))
            ids[row, 0], ids[row, 1 : length - 1], ids[row, length - 1] = CLS, inputs, SEP
        input_ids = torch.from_numpy(ids)
        attention = (input_ids != PAD).long()
        out.append(
            {
                "input_ids": input_ids,
                "attention_mask": attention,
                "labels": torch.from_numpy(labels),
                "teacher_input_ids": input_ids,
                "teacher": "teacher",
                "lang": "xx",
            }
        )
    return out


def make_optimizer(student, lr):
    return torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.01)


def clip_and_step(student, optimizer):
    torch.nn.utils.clip_grad_norm_(student.parameters(), GRAD_CLIP)
    optimizer.step()


def steps_per_s(stamps):
    """1 / the median step time; stamps[i] = time at which step i finished, stamps[0] = after the (untimed)
    warm-up step. The median, not the mean, so that a burst of load from another process does not decide it."""
    return 1.0 / max(float(np.median(np.diff(stamps))), 1e-9)


# ---------------------------------------------------------------------------------------------- the runs
def run_mergedistill(student, teacher, batches, args):
    """mergedistill.train's loss path (masked positions only, teacher top-k, soft CE + gold MLM)."""
    targets = OnlineTargets({"teacher": teacher}, {"teacher": np.arange(args.vocab, dtype=np.int32)}, args.k)
    optimizer = make_optimizer(student, args.lr)
    weights = {"kd": 1.0, "mlm": 1.0}
    student.train()
    losses, stamps = [], []
    for index, batch in enumerate(batches):
        masked = batch["labels"] != -100
        topk_ids, topk_logits = targets(index, batch)
        logits, _ = masked_lm_logits(student, batch["input_ids"], batch["attention_mask"], masked)
        terms = {
            "mlm": mlm_ce(logits, batch["labels"][masked]),
            "kd": kd_soft_ce(logits, topk_ids, topk_logits, args.temperature, t2_scaling=True),
        }
        loss, logged = combine(terms, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_and_step(student, optimizer)
        losses.append(logged["loss"])
        stamps.append(time.perf_counter())
    return losses, stamps


def run_hf_loop(student, teacher, batches, args):
    """DistilBERT-style: full-vocabulary KL at temperature T over every non-pad position + MLM loss."""
    optimizer = make_optimizer(student, args.lr)
    temperature = args.temperature
    student.train()
    losses, stamps = [], []
    for batch in batches:
        with torch.no_grad():
            t_logits = teacher.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        keep = batch["attention_mask"].bool()
        s_rows, t_rows = out.logits[keep], t_logits[keep]  # [n_tokens, V]
        loss_kd = (
            F.kl_div(
                F.log_softmax(s_rows / temperature, dim=-1),
                F.softmax(t_rows / temperature, dim=-1),
                reduction="batchmean",
            )
            * temperature**2
        )
        loss = loss_kd + out.loss  # alpha_kd = alpha_mlm = 1
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_and_step(student, optimizer)
        losses.append(float(loss.detach()))
        stamps.append(time.perf_counter())
    return losses, stamps


def textbrewer_version():
    try:
        import textbrewer
    except Exception:  # missing or broken: the benchmark falls back to the HF-style loop
        return None
    return getattr(textbrewer, "__version__", "unknown")


def run_textbrewer(student, teacher, batches, args):
    """textbrewer.BasicDistiller: soft CE over the full vocabulary at non-pad positions (weight T²) + MLM loss."""
    import logging

    import textbrewer
    from textbrewer import BasicDistiller, DistillationConfig, TrainingConfig

    logging.getLogger("Distillation").setLevel(logging.WARNING)
    losses, stamps = [], []

    class Recorder:  # textbrewer logs the total loss of each step through its writer
        def add_scalar(self, name, value, step):
            if name == "scalar/total_loss":
                losses.append(float(value))

    def feed():
        for batch in batches:
            stamps.append(time.perf_counter())  # the next batch is asked for once the previous step is done
            yield {
                "teacher": {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
                "student": {
                    "input_ids": batch["input_ids"],
                    "attention_mask": batch["attention_mask"],
                    "labels": batch["labels"],
                },
            }

    def adaptor_t(batch, outputs):
        return {"logits": outputs.logits, "logits_mask": batch["attention_mask"]}

    def adaptor_s(batch, outputs):
        return {"logits": outputs.logits, "logits_mask": batch["attention_mask"], "losses": outputs.loss}

    with tempfile.TemporaryDirectory() as tmp:
        train_config = TrainingConfig(device="cpu", output_dir=tmp, ckpt_steps=len(batches), log_dir=None)
        distill_config = DistillationConfig(
            temperature=args.temperature, kd_loss_type="ce", kd_loss_weight=args.temperature**2, hard_label_weight=1.0
        )
        distiller = BasicDistiller(train_config, distill_config, teacher.model, student, adaptor_t, adaptor_s)
        distiller.tb_writer = Recorder()
        optimizer = make_optimizer(student, args.lr)
        with distiller:
            distiller.train(optimizer, feed(), num_steps=len(batches), max_grad_norm=GRAD_CLIP)
        stamps.append(time.perf_counter())
    return losses, stamps[1:], textbrewer.__version__  # stamps[1] = end of the warm-up step


# ---------------------------------------------------------------------------------------------- evaluation
def heldout_metrics(student, teacher, batch) -> dict:
    """The same measures for every student: full-vocabulary KL(teacher ‖ student) at T = 1 (masked and all
    non-pad positions, through losses.kd_kl with every id as the 'top-k') and the gold masked-token CE."""
    student.eval()
    with torch.inference_mode():
        t_logits = teacher.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        masked, real = batch["labels"] != -100, batch["attention_mask"].bool()
        every = torch.arange(t_logits.shape[-1]).expand(int(real.sum()), -1)
        out = {
            "heldout_kl_masked": float(
                kd_kl(s_logits[masked], every[: int(masked.sum())], t_logits[masked], 1.0, False)
            ),
            "heldout_kl_all": float(kd_kl(s_logits[real], every, t_logits[real], 1.0, False)),
            "heldout_mlm_ce": float(mlm_ce(s_logits[masked], batch["labels"][masked])),
            "heldout_top1_agreement_masked": float(
                (s_logits[masked].argmax(-1) == t_logits[masked].argmax(-1)).float().mean()
            ),
        }
    return out


def topk_mass(teacher, batch, k) -> float:
    with torch.inference_mode():
        masked = batch["labels"] != -100
        probs = torch.softmax(teacher.logits_at(batch["input_ids"], batch["attention_mask"], masked), -1)
        return float(probs.topk(k, -1).values.sum(-1).mean())


# ---------------------------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--teacher-layers", type=int, default=4)
    parser.add_argument("--teacher-hidden", type=int, default=256)
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--student-hidden", type=int, default=128)
    parser.add_argument(
        "--teacher-embedding-scale", type=float, default=15.0, help="sharpens the random teacher's distributions"
    )
    parser.add_argument("--k", type=int, default=8, help="teacher top-k of mergedistill's path (cache.top_k default)")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, = the CPU count)")
    parser.add_argument(
        "--peer",
        choices=("auto", "textbrewer", "hf", "both"),
        default="auto",
        help="auto = textbrewer when importable, else the HF DistilBERT-style loop",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 4 steps (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch, args.seq, args.vocab = (
            min(args.steps, 4),
            min(args.batch, 4),
            min(args.seq, 32),
            min(args.vocab, 1000),
        )
        args.teacher_layers, args.teacher_hidden, args.student_layers, args.student_hidden = 1, 64, 1, 32
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is an untimed warm-up)")
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    tb_version = textbrewer_version()
    if args.peer == "textbrewer" and tb_version is None:
        parser.error("--peer textbrewer: textbrewer is not importable with this interpreter")
    peers = {
        "auto": ["textbrewer" if tb_version else "hf"],
        "textbrewer": ["textbrewer"],
        "hf": ["hf"],
        "both": (["textbrewer"] if tb_version else []) + ["hf"],
    }[args.peer]

    teacher = synthetic_teacher(
        args.vocab, args.teacher_layers, args.teacher_hidden, args.seq, args.teacher_embedding_scale
    )
    student_cfg = StudentConfig(
        layers=args.student_layers,
        hidden=args.student_hidden,
        heads=max(1, args.student_hidden // 64),
        intermediate=4 * args.student_hidden,
        max_position=args.seq + 2,
        dropout=0.1,
    )
    initial = build_student(student_cfg, args.vocab, seed=args.seed)
    batches = make_batches(args.steps + 1, args.batch, args.seq, args.vocab, args.seed)
    train_batches, heldout = batches[:-1], batches[-1]
    mass = topk_mass(teacher, heldout, args.k)

    runners = {"mergedistill": run_mergedistill, "hf": run_hf_loop, "textbrewer": run_textbrewer}
    runs = {}
    for name in ["mergedistill"] + peers:
        student = copy.deepcopy(initial)
        torch.manual_seed(args.seed)  # same dropout stream start for every run
        result = runners[name](student, teacher, train_batches, args)
        losses, stamps = result[0], result[1]
        runs[name] = {
            "steps_per_s": steps_per_s(stamps),
            "final_loss": float(np.mean(losses[-5:])),
            "first_loss": losses[0],
            **heldout_metrics(student, teacher, heldout),
        }
    initial_metrics = heldout_metrics(initial, teacher, heldout)

    peer = peers[0]
    names = {
        "mergedistill": "mergedistill (masked-only, top-k)",
        "textbrewer": f"textbrewer {tb_version} (full vocab, all positions)",
        "hf": "HF DistilBERT-style loop (full vocab, all positions)",
    }
    n_teacher = sum(p.numel() for p in teacher.model.parameters())
    n_student = sum(p.numel() for p in initial.parameters())
    print(
        f"teacher {args.teacher_layers}x{args.teacher_hidden} ({n_teacher / 1e6:.2f} M), student {args.student_layers}x{args.student_hidden} "
        f"({n_student / 1e6:.2f} M), vocab {args.vocab:,}, batch {args.batch} x {args.seq}, {args.steps} steps, T={args.temperature}, "
        f"k={args.k} (teacher top-{args.k} mass at masked positions {mass:.2f}), threads {torch.get_num_threads()}"
    )
    print()
    print(
        "| run | steps/s | train loss first -> last5 | held-out KL masked | held-out KL all | held-out MLM CE | top-1 agree |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| initial student | | | {initial_metrics['heldout_kl_masked']:.3f} | {initial_metrics['heldout_kl_all']:.3f} | "
        f"{initial_metrics['heldout_mlm_ce']:.3f} | {initial_metrics['heldout_top1_agreement_masked']:.3f} |"
    )
    for name, r in runs.items():
        print(
            f"| {names[name]} | {r['steps_per_s']:.2f} | {r['first_loss']:.3f} -> {r['final_loss']:.3f} | {r['heldout_kl_masked']:.3f} | "
            f"{r['heldout_kl_all']:.3f} | {r['heldout_mlm_ce']:.3f} | {r['heldout_top1_agreement_masked']:.3f} |"
        )
    print(
        "(train losses are each run's own objective and not comparable; the held-out columns are computed the same way for all)"
    )
    md, pr = runs["mergedistill"], runs[peer]
    result = {
        "benchmark": "peer_distill",
        "peer": "textbrewer" if peer == "textbrewer" else "hf-distilbert-loop",
        "peer_version": tb_version if peer == "textbrewer" else None,
        "steps": args.steps,
        "batch": args.batch,
        "seq": args.seq,
        "vocab": args.vocab,
        "temperature": args.temperature,
        "k": args.k,
        "teacher_params": n_teacher,
        "student_params": n_student,
        "teacher_topk_mass": round(mass, 3),
        "threads": torch.get_num_threads(),
        "mergedistill_steps_per_s": round(md["steps_per_s"], 3),
        "peer_steps_per_s": round(pr["steps_per_s"], 3),
        "steps_per_s_ratio_mergedistill_over_peer": round(md["steps_per_s"] / pr["steps_per_s"], 3),
        "mergedistill_final_loss": round(md["final_loss"], 4),
        "peer_final_loss": round(pr["final_loss"], 4),
        "mergedistill_heldout_kl_masked": round(md["heldout_kl_masked"], 4),
        "peer_heldout_kl_masked": round(pr["heldout_kl_masked"], 4),
        "mergedistill_heldout_kl_all": round(md["heldout_kl_all"], 4),
        "peer_heldout_kl_all": round(pr["heldout_kl_all"], 4),
        "mergedistill_heldout_mlm_ce": round(md["heldout_mlm_ce"], 4),
        "peer_heldout_mlm_ce": round(pr["heldout_mlm_ce"], 4),
        "initial_heldout_kl_masked": round(initial_metrics["heldout_kl_masked"], 4),
        "seconds": round(time.perf_counter() - began, 1),
    }
    if len(peers) > 1:
        result["other_peers"] = {name: {k: round(v, 4) for k, v in runs[name].items()} for name in peers[1:]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
