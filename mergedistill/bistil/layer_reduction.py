"""BiStil's layer reduction (§3.2): the student model cut from the teacher. Which teacher layer each student
layer stands for, and the loss pairs, are the core rule in ``mergedistill.layers``.
"""

from __future__ import annotations

from mergedistill.errors import UserError
from mergedistill.layers import kept_layers


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
