"""Layer reduction and the phase-1 loss index formulas (BiStil §3.2), as pure functions.

With reduction factor s the student has n/s layers. Student layer i (1-based) copies teacher layer i·s,
i.e. 0-based teacher index (i+1)·s−1 for 0-based i (the paper; the released code differs). The losses
pair student attention i (0-based) with teacher attention (i+1)·s−1, and student hidden state i with
teacher hidden state i·s over HF's ``hidden_states`` tuple, where index 0 is the embedding output —
so the embeddings are matched too, and the last student state meets the last teacher state.
"""

from __future__ import annotations

from mergedistill.errors import UserError


def student_layers(n_teacher: int, stride: int) -> int:
    if stride < 1 or n_teacher // stride < 1:
        raise UserError(
            f"phase1.layer_stride={stride}: the teacher has {n_teacher} layers, so the stride must be 1..{n_teacher}"
        )
    return n_teacher // stride


def kept_layers(n_teacher: int, stride: int, choice: str = "stride") -> list[int]:
    """0-based teacher layer copied into each student layer: s−1, 2s−1, ... ("stride") or 0..n/s−1 ("bottom")."""
    n = student_layers(n_teacher, stride)
    if choice == "bottom":
        return list(range(n))
    if choice != "stride":
        raise UserError(f"phase1.layer_choice: must be stride or bottom, got {choice!r}")
    return [(i + 1) * stride - 1 for i in range(n)]


def attention_pairs(n_student: int, stride: int) -> list[tuple[int, int]]:
    """(student attention index, teacher attention index) = (i, (i+1)s−1), 0-based."""
    return [(i, (i + 1) * stride - 1) for i in range(n_student)]


def hidden_pairs(n_student: int, stride: int) -> list[tuple[int, int]]:
    """(student hidden_states index, teacher hidden_states index) = (i, i·s) for i = 0..n_student (0 = embeddings)."""
    return [(i, i * stride) for i in range(n_student + 1)]


def layer_key_map(keys, kept: list[int]) -> dict[str, str]:
    """Student state-dict key -> teacher key: ``...layer.{i}.`` <- ``...layer.{kept[i]}.``; other keys map to themselves."""
    import re

    pattern = re.compile(r"(^|\.)layer\.(\d+)\.")
    wanted = {t: s for s, t in enumerate(kept)}
    out = {}
    for key in keys:
        match = pattern.search(key)
        if match is None:
            out[key] = key
        elif int(match.group(2)) in wanted:
            student_key = key[: match.start(2)] + str(wanted[int(match.group(2))]) + key[match.end(2) :]
            out[student_key] = key
    return out


def make_student(
    teacher_model, stride: int, choice: str = "stride", dropout: float = 0.0, from_scratch: bool = False, seed: int = 0
):
    """A copy of the teacher with the kept layers and the embeddings (and MLM head), dropout off.

    ``from_scratch`` gives the same architecture randomly initialized (the scratch baseline).
    """
    import copy

    import torch

    config = copy.deepcopy(teacher_model.config)
    n_teacher = config.num_hidden_layers
    kept = kept_layers(n_teacher, stride, choice)
    config.num_hidden_layers = len(kept)
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
        if hasattr(config, name):
            setattr(config, name, dropout if name != "classifier_dropout" else None)
    config._attn_implementation = "eager"  # attention probabilities are a loss term
    torch.manual_seed(seed)
    student = type(teacher_model)(config)
    if not from_scratch:
        teacher_state = teacher_model.state_dict()
        mapping = layer_key_map(teacher_state.keys(), kept)
        student_state = student.state_dict()
        missing = [k for k in student_state if k not in mapping]
        if missing:
            raise UserError(
                f"teacher {config.model_type}: cannot map student weight {missing[0]}; use a BERT/RoBERTa-style teacher"
            )
        student.load_state_dict({k: teacher_state[mapping[k]].clone() for k in student_state})
    return student.eval()
