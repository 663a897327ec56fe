"""Intermediate-layer distillation terms: hidden-state and attention-probability matching (optional).

Routed tokenization gives the student exactly its teacher's positions (one student id per teacher id), so a
student layer can be compared with a teacher layer token by token. With stride s = teacher layers //
student layers, student hidden state i meets teacher hidden state i·s (HF ``hidden_states`` index, 0 = the
embeddings) and student attention i (0-based) meets teacher attention (i+1)·s−1, the BiStil pairing
(``bistil.layers``). A teacher takes part when its hidden size (hidden term) and head count (attention
term) equal the student's, e.g. the teacher the student was initialized from (``student.init: teacher``);
batches served by another teacher get the logit terms only. The cache stores top-k logits, not hidden
states, so these terms need online teachers (``cache.mode: online``): one extra teacher forward per batch.
"""

from __future__ import annotations

from typing import Mapping

from mergedistill.bistil.layers import attention_pairs, hidden_pairs
from mergedistill.errors import UserError
from mergedistill.losses import attention_mse, hidden_cosine, hidden_mse


def stride(n_student: int, n_teacher: int) -> int:
    return n_teacher // n_student


def compatible(student_config, teacher_config, want_hidden: bool, want_attn: bool) -> str | None:
    """None if the teacher can serve the requested terms for this student, else the reason it cannot."""
    if teacher_config.num_hidden_layers < student_config.num_hidden_layers:
        return f"{teacher_config.num_hidden_layers} layers < the student's {student_config.num_hidden_layers}"
    if want_hidden and teacher_config.hidden_size != student_config.hidden_size:
        return f"hidden size {teacher_config.hidden_size} != the student's {student_config.hidden_size}"
    if want_attn and teacher_config.num_attention_heads != student_config.num_attention_heads:
        return f"{teacher_config.num_attention_heads} attention heads != the student's {student_config.num_attention_heads}"
    return None


def internal_terms(
    student_out,
    teacher_out,
    attention_mask,
    layer_stride: int,
    want_hidden: bool,
    want_attn: bool,
    hidden_loss: str = "mse",
) -> dict:
    """{"hidden": mean over paired layers, "attn": mean over paired layers} (only the requested terms)."""
    terms = {}
    if want_hidden:
        measure = hidden_mse if hidden_loss == "mse" else hidden_cosine
        pairs = hidden_pairs(len(student_out.hidden_states) - 1, layer_stride)
        terms["hidden"] = sum(
            measure(student_out.hidden_states[s], teacher_out.hidden_states[t], attention_mask) for s, t in pairs
        ) / len(pairs)
    if want_attn:
        pairs = attention_pairs(len(student_out.attentions), layer_stride)
        terms["attn"] = sum(
            attention_mse(student_out.attentions[s], teacher_out.attentions[t], attention_mask) for s, t in pairs
        ) / len(pairs)
    return terms


class TeacherInternals:
    """Runs the batch's teacher (frozen) for its hidden states / attention probabilities, when it is compatible."""

    def __init__(self, teachers: Mapping[str, object], student_config, want_hidden: bool, want_attn: bool, log=print):
        self.teachers, self.want_hidden, self.want_attn = dict(teachers), want_hidden, want_attn
        self.strides: dict[str, int] = {}
        reasons = {}
        for name, teacher in self.teachers.items():
            reason = compatible(student_config, teacher.model.config, want_hidden, want_attn)
            if reason is None:
                self.strides[name] = stride(student_config.num_hidden_layers, teacher.model.config.num_hidden_layers)
                if want_attn:
                    teacher.model.set_attn_implementation("eager")  # attention probabilities are a loss term
            else:
                reasons[name] = reason
        if not self.strides:
            detail = "; ".join(f"{n}: {r}" for n, r in sorted(reasons.items()))
            raise UserError(
                f"train.alpha_hidden/alpha_attn: no teacher matches the student ({detail}); initialize the student from a "
                "teacher (student.init: teacher) or give it that teacher's hidden size and heads, or set both weights to 0"
            )
        for name, reason in sorted(reasons.items()):
            log(f"[train] hidden/attention terms skip batches of teacher {name}: {reason}")

    def __call__(self, batch):
        """(teacher encoder outputs on the teacher's device, layer stride) or None when the batch's teacher does not take part."""
        import torch

        name = batch["teacher"]
        if name not in self.strides:
            return None
        from mergedistill.device import device_of, to_device

        model = self.teachers[name].model
        encoder = getattr(model, model.base_model_prefix)
        input_ids, attention_mask = to_device((batch["teacher_input_ids"], batch["attention_mask"]), device_of(model))
        with torch.no_grad():  # not inference_mode: these tensors meet the student's in the autograd graph
            out = encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                output_hidden_states=self.want_hidden,
                output_attentions=self.want_attn,
            )
        return out, self.strides[name]
