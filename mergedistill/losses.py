"""Every training loss of mergedistill and BiStil: small pure functions over tensors.

Soft targets come as the teacher's top-k (student ids [n,k], -1 = none; logits [n,k], -inf = none).
The teacher distribution is the softmax of the top-k logits at temperature T, i.e. renormalized over
the kept ids; the student's log-probabilities come from its FULL vocabulary at the same temperature,
gathered at those ids. With ``t2_scaling`` the soft loss is multiplied by T² (Hinton et al., 2015):
the gradient of a softened loss shrinks like 1/T², so the product keeps the soft term's weight
comparable to the hard (gold) term whatever T is. Without it, raising T silently down-weights KD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _teacher_probs(topk_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    valid = torch.isfinite(topk_logits)
    scaled = torch.where(valid, topk_logits.float() / temperature, torch.full_like(topk_logits.float(), float("-inf")))
    probs = torch.softmax(scaled, dim=-1)
    return torch.nan_to_num(probs, nan=0.0)  # a row with no valid entry contributes nothing


def kd_soft_ce(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logits: torch.Tensor,
    temperature: float = 1.0,
    t2_scaling: bool = True,
) -> torch.Tensor:
    """Mean over rows of -Σ_k p_teacher(k) · log q_student(id_k), both at temperature T."""
    if not student_logits.shape[0] == topk_ids.shape[0] == topk_logits.shape[0]:
        raise ValueError(
            f"kd_soft_ce: {student_logits.shape[0]} student rows but {topk_ids.shape[0]} teacher id rows and "
            f"{topk_logits.shape[0]} teacher logit rows; the targets do not belong to this batch (a stale cache?)"
        )
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    probs = _teacher_probs(topk_logits, temperature)
    log_q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    gathered = log_q.gather(1, topk_ids.clamp(min=0).long())
    loss = -(probs * gathered).sum(-1).mean()
    return loss * temperature**2 if t2_scaling else loss


def soft_ce(student_logits, teacher_logits, temperature: float = 1.0, t2_scaling: bool = True) -> torch.Tensor:
    """``kd_soft_ce`` with the teacher's whole distribution (every id kept): rows of student and teacher logits
    over the same labels (BiStil's task KD, phase 1's MLM-logit term)."""
    every_id = torch.arange(teacher_logits.shape[-1], device=teacher_logits.device).expand(teacher_logits.shape[0], -1)
    return kd_soft_ce(student_logits, every_id, teacher_logits, temperature, t2_scaling)


def kd_kl(student_logits, topk_ids, topk_logits, temperature: float = 1.0, t2_scaling: bool = True) -> torch.Tensor:
    """KL(teacher ‖ student) restricted to the teacher's top-k = soft cross-entropy − teacher entropy."""
    probs = _teacher_probs(topk_logits, temperature)
    entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1).mean()
    scale = temperature**2 if t2_scaling else 1.0
    return kd_soft_ce(student_logits, topk_ids, topk_logits, temperature, t2_scaling) - entropy * scale


def mlm_ce(student_logits: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Cross-entropy to the gold labels of the scored rows: masked tokens (MLM), or a task's examples/tokens."""
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    return F.cross_entropy(student_logits.float(), gold.long())  # alone, as fast as _MlmAndKd (vocab_losses.py)


class _MlmAndKd(torch.autograd.Function):
    """``mlm_ce`` and ``kd_soft_ce`` (T = 1) of the same logits from ONE log-softmax, with the gradient written
    directly (softmax - targets): the vocabulary-wide passes are most of a small student's step on a CPU."""

    @staticmethod
    def forward(ctx, logits, gold, rows, topk_ids, probs):
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        mlm = -log_probs.gather(1, gold[:, None]).mean()
        kd = -(probs * log_probs[rows[:, None], topk_ids]).sum(-1).mean() if len(rows) else mlm.new_zeros(())
        ctx.save_for_backward(log_probs, gold, rows, topk_ids, probs)
        ctx.logits_dtype = logits.dtype
        return mlm, kd

    @staticmethod
    def backward(ctx, grad_mlm, grad_kd):
        log_probs, gold, rows, topk_ids, probs = ctx.saved_tensors
        n, m = log_probs.shape[0], rows.shape[0]
        # softmax = d(lse)/d(logits), in place over the saved buffer instead of a second [n, V] one (a second backward
        # through a retained graph then fails on the saved tensor's version, never silently)
        grad = log_probs.exp_()
        per_row = torch.full((n,), 1.0, device=grad.device) * (grad_mlm / n)
        if m:
            per_row.index_add_(0, rows, probs.sum(-1) * (grad_kd / m))  # a KD row weighs its kept teacher mass
        grad.mul_(per_row[:, None])
        grad[torch.arange(n, device=grad.device), gold] -= grad_mlm / n
        if m:
            grad.index_put_((rows[:, None].expand_as(topk_ids), topk_ids), -probs * (grad_kd / m), accumulate=True)
        return grad.to(ctx.logits_dtype), None, None, None, None


def mlm_and_kd(
    student_logits: torch.Tensor,
    gold: torch.Tensor,
    kd_rows: torch.Tensor | None,
    topk_ids: torch.Tensor,
    topk_logits: torch.Tensor,
    temperature: float = 1.0,
    t2_scaling: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mlm_ce(logits, gold), kd_soft_ce(logits[kd_rows], topk_ids, topk_logits, T))``: the same two terms and
    gradients as calling both (``kd_rows``: bool per row, None = every row), from one log-softmax at T = 1.
    ``gold``: a piece id per row (the masked rows' labels; no ignore index)."""
    rows = (
        torch.arange(student_logits.shape[0], device=student_logits.device)
        if kd_rows is None
        else kd_rows.nonzero().squeeze(1)
    )
    if temperature != 1.0 or len(rows) == 0 or len(gold) == 0:
        kd_input = student_logits if kd_rows is None else student_logits[kd_rows]
        return mlm_ce(student_logits, gold), kd_soft_ce(kd_input, topk_ids, topk_logits, temperature, t2_scaling)
    if not rows.shape[0] == topk_ids.shape[0] == topk_logits.shape[0]:  # kd_soft_ce's message
        kd_soft_ce(student_logits[rows], topk_ids, topk_logits)
    probs = _teacher_probs(topk_logits, 1.0)
    return _MlmAndKd.apply(student_logits, gold.long(), rows, topk_ids.clamp(min=0).long(), probs)


def _token_mask(attention_mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return attention_mask.to(like.dtype).unsqueeze(-1)


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor, proj=None) -> torch.Tensor:
    """MSE between hidden states [B,T,H] over real (non-pad) tokens; ``proj`` maps student H to teacher H'."""
    if proj is not None:
        student = proj(student)
    mask = _token_mask(attention_mask, student)
    squared = ((student.float() - teacher.float()) ** 2) * mask
    return squared.sum() / (mask.sum() * student.shape[-1]).clamp_min(1)


def hidden_cosine(
    student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor, proj=None
) -> torch.Tensor:
    """1 − cosine similarity, averaged over real tokens."""
    if proj is not None:
        student = proj(student)
    cos = F.cosine_similarity(student.float(), teacher.float(), dim=-1)
    mask = attention_mask.float()
    return ((1 - cos) * mask).sum() / mask.sum().clamp_min(1)


def attention_mse(
    student_probs: torch.Tensor, teacher_probs: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """MSE between attention probabilities [B,h,T,T], excluding padded queries AND padded keys."""
    valid = attention_mask.bool()
    pair = (valid[:, None, :, None] & valid[:, None, None, :]).to(student_probs.dtype)  # [B,1,T,T]
    squared = ((student_probs.float() - teacher_probs.float()) ** 2) * pair
    return squared.sum() / (pair.sum() * student_probs.shape[1]).clamp_min(1)


def combine(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the terms whose weight is > 0, and the float value of every term for logging."""
    used = [(name, value) for name, value in terms.items() if weights.get(name, 0.0) > 0]
    if not used:
        raise ValueError("no loss term has a positive weight")
    total = sum(weights[name] * value for name, value in used)
    logged = {f"loss_{name}": float(value.detach()) for name, value in terms.items()}
    logged["loss"] = float(total.detach())
    return total, logged


def alignment_loss(pivot_vectors: torch.Tensor, other_vectors: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: row i of each side is the translation of row i of the other; every other row of
    the batch is a negative. Cosine similarities divided by ``temperature``."""
    a, b = F.normalize(pivot_vectors.float(), dim=-1), F.normalize(other_vectors.float(), dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(len(a), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
