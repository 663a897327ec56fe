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
    return F.cross_entropy(student_logits.float(), gold.long())


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
