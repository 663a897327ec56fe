"""Phase 1: general bilingual distillation of the trimmed teacher into its layer-reduced copy.

Batches are monolingual and the languages alternate, so each language gets the same number of batches.
Teacher and student see the same masked input. Loss = alpha_attn · Σ_i MSE(student attention i, teacher
attention (i+1)s−1) + alpha_hidden · Σ_i MSE(student hidden i, teacher hidden i·s) (+ alpha_kd · soft CE on
the masked positions' MLM logits); every term excludes padding. The checkpoint with the lowest eval loss wins.

``objective="mlm"`` trains the same student on the same batches with masked-LM cross-entropy to the gold
tokens and no teacher: the paper's "bilingual model trained from scratch" baseline when the student
starts from random weights.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Mapping, Sequence

import numpy as np

from mergedistill.layers import attention_pairs, hidden_pairs, layer_stride
from mergedistill.losses import attention_mse, hidden_mse, soft_ce
from mergedistill.masking import example_rng, mask_sequence, pack, pad_batch


def phase1_loss(
    student_out,
    teacher_out,
    attention_mask,
    stride: int,
    alpha_attn: float,
    alpha_hidden: float,
    alpha_kd: float = 0.0,
    student_logits=None,
    teacher_logits=None,
    temperature: float = 1.0,
) -> tuple:
    """(total, {term: float}) from HF encoder outputs with ``attentions`` and ``hidden_states``;
    ``*_logits``: MLM logits at the masked positions only (rows), for the optional logit term."""

    n_student = len(student_out.hidden_states) - 1
    terms = {}
    zero = student_out.hidden_states[0].sum() * 0.0
    terms["attn"] = (
        sum(
            (
                attention_mse(student_out.attentions[i], teacher_out.attentions[j], attention_mask)
                for i, j in attention_pairs(n_student, stride)
            ),
            zero,
        )
        if alpha_attn > 0
        else zero
    )
    terms["hidden"] = (
        sum(
            (
                hidden_mse(student_out.hidden_states[i], teacher_out.hidden_states[j], attention_mask)
                for i, j in hidden_pairs(n_student, stride)
            ),
            zero,
        )
        if alpha_hidden > 0
        else zero
    )
    if alpha_kd > 0 and student_logits is not None and len(student_logits):
        terms["logit"] = soft_ce(student_logits, teacher_logits, temperature)
    else:
        terms["logit"] = zero
    total = alpha_attn * terms["attn"] + alpha_hidden * terms["hidden"] + alpha_kd * terms["logit"]
    return total, {k: float(v.detach()) for k, v in terms.items()}


def pack_language(tokenizer, texts: Sequence[str], max_length: int) -> list[np.ndarray]:
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return pack([row for row in ids if row], max_length, tokenizer.cls_token_id, tokenizer.sep_token_id)


def masked_batch(sequences: Sequence[np.ndarray], tokenizer, prob: float, seed: int, *key) -> dict:
    """Pad and mask a batch deterministically (same ``seed`` and ``key`` -> same batch)."""
    import torch

    special_ids = np.array(sorted(set(tokenizer.all_special_ids)))
    pool = np.setdiff1d(np.arange(len(tokenizer)), special_ids)
    inputs, masks = [], []
    for row, seq in enumerate(sequences):
        rng = example_rng(seed, *key, row)
        ids, masked = mask_sequence(
            np.asarray(seq, dtype=np.int64), np.isin(seq, special_ids), rng, prob, tokenizer.mask_token_id, pool
        )
        inputs.append(ids)
        masks.append(masked)
    ids, attention = pad_batch(inputs, tokenizer.pad_token_id)
    masked = np.zeros_like(attention, dtype=bool)
    originals = np.full_like(ids, -100)
    for row, (m, seq) in enumerate(zip(masks, sequences)):
        masked[row, : len(m)] = m
        originals[row, : len(m)] = np.where(m, seq, -100)
    return {
        "input_ids": torch.as_tensor(ids),
        "attention_mask": torch.as_tensor(attention),
        "masked": torch.as_tensor(masked),
        "labels": torch.as_tensor(originals, dtype=torch.long),
    }


def balanced_schedule(sizes: Mapping[str, int], batch_size: int, steps: int, seed: int) -> list[tuple[str, list[int]]]:
    """(language, example indices) per step: languages alternate; each language's examples are reshuffled per epoch."""
    langs = sorted(sizes)
    order = {lang: [] for lang in langs}
    epoch = {lang: 0 for lang in langs}
    plan = []
    for step in range(steps):
        lang = langs[step % len(langs)]
        while len(order[lang]) < batch_size:
            order[lang] += example_rng(seed, "order", lang, epoch[lang]).permutation(sizes[lang]).tolist()
            epoch[lang] += 1
        plan.append((lang, order[lang][:batch_size]))
        order[lang] = order[lang][batch_size:]
    return plan


def _forward(model, batch, need_logits: bool) -> tuple:
    """(encoder outputs, MLM logits at the masked positions or None). The vocabulary projection is the
    costliest part of a small masked-LM, so it runs only when the logit term is on, and only where masked."""
    from mergedistill.device import device_of, to_device
    from mergedistill.heads import masked_lm_logits

    inputs = dict(
        to_device({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, device_of(model)),
        output_attentions=True,
        output_hidden_states=True,
    )
    if need_logits:
        logits, out = masked_lm_logits(model, batch["input_ids"], batch["attention_mask"], batch["masked"], True, True)
        return out, logits
    return getattr(model, model.base_model_prefix)(**inputs), None


def mlm_loss(student, batch) -> tuple:
    """(masked-LM cross-entropy to the gold tokens at the masked positions, {"mlm": float}); no teacher."""
    from mergedistill.heads import masked_lm_loss

    loss = masked_lm_loss(student, batch["input_ids"], batch["attention_mask"], batch["labels"])
    return loss, {"mlm": float(loss.detach())}


def _loss(student, teacher, batch, stride, weights, objective: str = "distil") -> tuple:
    import torch

    if objective == "mlm":
        return mlm_loss(student, batch)
    need_logits = weights["alpha_kd"] > 0
    with torch.no_grad():
        t_out, t_logits = _forward(teacher, batch, need_logits)
    s_out, s_logits = _forward(student, batch, need_logits)
    return phase1_loss(
        s_out, t_out, batch["attention_mask"], stride, student_logits=s_logits, teacher_logits=t_logits, **weights
    )


def train_phase1(
    teacher,
    student,
    tokenizer,
    train: Mapping[str, list],
    valid: Mapping[str, list],
    cfg,
    seed: int = 0,
    log: Callable[[str], None] = print,
    objective: str = "distil",
) -> tuple:
    """Distil ``teacher`` into ``student`` (both eager-attention masked-LMs over ``tokenizer``), or with
    ``objective="mlm"`` train ``student`` on masked-LM alone (``teacher`` unused).

    ``train``/``valid``: language -> packed sequences. Returns (student with the best weights, history rows).
    """
    if objective not in ("distil", "mlm"):
        raise ValueError(f"phase 1 objective must be distil or mlm, got {objective!r}")
    import torch
    from tqdm import tqdm

    from mergedistill.device import device_of, to_device

    torch.manual_seed(seed)
    if teacher is not None:
        teacher.eval()
    student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = lambda step: min(1.0, (step + 1) / max(1, cfg.warmup_steps)) * max(0.0, 1 - step / cfg.steps)  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    stride = 1
    if teacher is not None:
        stride = layer_stride(
            teacher.config.num_hidden_layers, student.config.num_hidden_layers, getattr(cfg, "layer_stride", None)
        )
    weights = dict(
        alpha_attn=cfg.alpha_attn, alpha_hidden=cfg.alpha_hidden, alpha_kd=cfg.alpha_kd, temperature=cfg.temperature
    )
    on = device_of(student)  # the teacher is on the same device (the run's ``device``)
    eval_batches = [
        masked_batch(
            seqs[b * cfg.batch_size : (b + 1) * cfg.batch_size], tokenizer, cfg.mlm_probability, seed, "eval", lang, b
        )
        for lang, seqs in sorted(valid.items())
        for b in range(min(cfg.eval_batches, math.ceil(len(seqs) / cfg.batch_size)))
    ]
    eval_batches = [to_device(batch, on) for batch in eval_batches]

    def evaluate() -> float:
        student.eval()
        total = 0.0
        with torch.no_grad():
            for batch in eval_batches:
                total += _loss(student, teacher, batch, stride, weights, objective)[0].item()
        student.train()
        return total / max(1, len(eval_batches))

    best = (evaluate(), 0, copy.deepcopy(student.state_dict()))
    history = [{"step": 0, "eval_loss": best[0]}]
    log(f"phase1: step 0 eval loss {best[0]:.4f}")
    plan = balanced_schedule({lang: len(seqs) for lang, seqs in train.items()}, cfg.batch_size, cfg.steps, seed)
    for step, (lang, indices) in enumerate(tqdm(plan, desc="phase1", leave=False, disable=None), start=1):
        batch = to_device(
            masked_batch([train[lang][i] for i in indices], tokenizer, cfg.mlm_probability, seed, "train", step), on
        )
        loss, terms = _loss(student, teacher, batch, stride, weights, objective)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            eval_loss = evaluate()
            history.append(
                {"step": step, "lang": lang, "train_loss": float(loss.detach()), **terms, "eval_loss": eval_loss}
            )
            log(f"phase1: step {step} train loss {float(loss.detach()):.4f} eval loss {eval_loss:.4f}")
            if eval_loss < best[0]:
                best = (eval_loss, step, copy.deepcopy(student.state_dict()))
    student.load_state_dict(best[2])
    student.eval()
    history.append({"best_step": best[1], "best_eval_loss": best[0]})
    return student, history
