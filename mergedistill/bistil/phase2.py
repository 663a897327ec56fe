"""Phase 2: task distillation (BiStil §3.3).

The task teacher is the (trimmed) MMT fine-tuned on the source-language task. The student is the
phase-1 model with a new head, trained on the same source data with soft cross-entropy to the teacher's
predictions at temperature T (× T²), optional gold-label CE and the phase-1 attention/hidden terms, under
LT-SFT. Phase-1 weights that are not eligible for the diff (the word embeddings unless
``include_embeddings``) stay frozen in every variant, so diff + head always rebuild the trained model.
Variants: ``bistil`` (that), ``dense`` (same losses, full fine-tuning of the eligible body), ``self-taught`` (gold labels
only, LT-SFT), ``scratch`` (the same phase 2 on the paper's from-scratch bilingual model: random weights, phase 1
masked-LM without the teacher), ``random-init`` (the same phase 2 on a random-weight student distilled in phase 1).
"""

from __future__ import annotations

from pathlib import Path

from mergedistill.bistil.ltsft import SparseDiff, lt_sft, snapshot, train_steps
from mergedistill.bistil.phase1 import phase1_loss
from mergedistill.layers import layer_stride


def task_model(source, kind: str, num_labels: int, seed: int = 0, eager: bool = True):
    """A sequence/token classifier whose body comes from ``source`` (a checkpoint dir); the head is new."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    cls = AutoModelForSequenceClassification if kind == "sequence" else AutoModelForTokenClassification
    torch.manual_seed(seed)
    extra = {"attn_implementation": "eager"} if eager else {}
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized head" is expected here
    try:
        return cls.from_pretrained(str(source), num_labels=num_labels, **extra)
    finally:
        hf_logging.set_verbosity(verbosity)


def _rows(logits, labels):
    """(logits, labels) at the scored rows: all examples (sequence) or labelled tokens (token)."""
    if labels.dim() == 1:
        return logits, labels
    keep = labels != -100
    return logits[keep], labels[keep]


def distill_loss_fn(
    teacher,
    stride: int,
    temperature: float,
    alpha_kd: float,
    alpha_gold: float,
    alpha_attn: float,
    alpha_hidden: float,
):
    """loss(student, batch) for ``train_steps``; the teacher runs online (no gradients)."""
    import torch

    from mergedistill.device import device_of, to_device
    from mergedistill.losses import mlm_ce, soft_ce

    need_internals = alpha_attn > 0 or alpha_hidden > 0

    def loss_fn(student, batch):
        batch = to_device(batch, device_of(student))  # the teacher is on the same device (the run's ``device``)
        inputs = dict(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_attentions=need_internals,
            output_hidden_states=need_internals,
        )
        s_out = student(**inputs)
        s_logits, gold = _rows(s_out.logits, batch["labels"])
        total = s_logits.sum() * 0.0
        if alpha_kd > 0 or need_internals:
            with torch.no_grad():
                t_out = teacher(**to_device(inputs, device_of(teacher)))
            if alpha_kd > 0:
                total = total + alpha_kd * soft_ce(s_logits, _rows(t_out.logits, batch["labels"])[0], temperature)
            if need_internals:
                total = total + phase1_loss(s_out, t_out, batch["attention_mask"], stride, alpha_attn, alpha_hidden)[0]
        if alpha_gold > 0 and len(gold):
            total = total + alpha_gold * mlm_ce(s_logits, gold)
        return total

    return loss_fn


def gold_loss(model, batch):
    from mergedistill.device import device_of, to_device

    batch = to_device(batch, device_of(model))
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def train_task_teacher(base_dir, kind: str, num_labels: int, batches, lr: float, seed: int = 0, device="cpu"):
    """The MMT fine-tuned densely on gold source-language labels (on ``device``)."""
    model = task_model(base_dir, kind, num_labels, seed=seed).to(device)
    train_steps(model, list(model.parameters()), gold_loss, batches, lr, weight_decay=0.01, desc="task teacher")
    return model.eval()


def eligible_names(model, base_keys, include_embeddings: bool) -> list[str]:
    """Body parameters that came from the phase-1 model (LT-SFT may touch them); the rest is the new head."""
    return [
        n for n, _ in model.named_parameters() if n in base_keys and (include_embeddings or "word_embeddings" not in n)
    ]


def base_parameter_names(model, phase1_dir) -> set:
    """Names in the task model whose weights were loaded from the phase-1 checkpoint."""
    from safetensors import safe_open

    with safe_open(str(Path(phase1_dir) / "model.safetensors"), framework="pt") as handle:
        stored = set(handle.keys())
    return {n for n, _ in model.named_parameters() if n in stored}


def train_student(
    phase1_dir, teacher, kind: str, num_labels: int, variant: str, cfg, dense_batches, sparse_batches, seed: int = 0
):
    """Train one student variant; returns (model, SparseDiff vs the phase-1 body, head state, losses)."""
    from mergedistill.device import device_of

    student = task_model(phase1_dir, kind, num_labels, seed=seed).to(device_of(teacher))
    stride = layer_stride(teacher.config.num_hidden_layers, student.config.num_hidden_layers)
    gold_only = variant == "self-taught"
    loss_fn = distill_loss_fn(
        teacher,
        stride,
        cfg.temperature,
        0.0 if gold_only else cfg.alpha_kd,
        1.0 if gold_only else cfg.alpha_gold,
        0.0 if gold_only else cfg.alpha_attn,
        0.0 if gold_only else cfg.alpha_hidden,
    )
    base = base_parameter_names(student, phase1_dir)
    eligible = eligible_names(student, base, cfg.include_embeddings)
    for (
        name,
        param,
    ) in student.named_parameters():  # phase-1 weights outside the diff (word embeddings by default) stay fixed
        if name in base and name not in eligible:
            param.requires_grad_(False)
    theta0 = snapshot(student, eligible)

    def param_groups():  # the new task head learns at phase2.head_lr, the body at phase2.lr
        named = list(student.named_parameters())
        return [
            {"params": [p for n, p in named if n in base], "lr": cfg.lr},
            {"params": [p for n, p in named if n not in base], "lr": cfg.head_lr},
        ]

    if variant == "dense":
        losses = {
            "dense": train_steps(
                student,
                param_groups(),
                loss_fn,
                list(dense_batches) + list(sparse_batches),
                cfg.lr,
                0.01,
                desc="dense student",
            )
        }
    else:
        _, _, losses = lt_sft(
            student, eligible, loss_fn, dense_batches, sparse_batches, cfg.density, cfg.lr, 0.01, param_groups
        )
    diff = SparseDiff.between(theta0, snapshot(student, eligible))
    head = {n: p.detach().cpu().clone() for n, p in student.named_parameters() if n not in base}
    return student.eval(), diff, head, losses


def load_student(phase1_dir, variant_dir, kind: str, num_labels: int, eager: bool = False):
    """Rebuild a phase-2 student: the phase-1 model + the saved head + the sparse diff applied."""
    from safetensors.torch import load_file

    model = task_model(phase1_dir, kind, num_labels, eager=eager)
    model.load_state_dict(load_file(str(Path(variant_dir) / "head.safetensors")), strict=False)
    SparseDiff.load(Path(variant_dir) / "diff.safetensors").apply(model)
    return model.eval()
