"""Which teacher layer each student layer stands for: the one rule, used by student init, the hidden/attention
loss terms (``internals``) and BiStil (``bistil.layers`` re-exports it).

A student of n_s layers stands for a teacher of n_t layers with stride s (``student.layer_stride`` /
``phase1.layer_stride``; unset: s = n_t // n_s). Student layer i (0-based) is teacher layer (i+1)·s−1, i.e.
1-based teacher layers s, 2s, 3s, ... (BiStil §3.2; the released code differs): student init copies it, and
student attention i is compared with that teacher attention. Hidden state i (HF ``hidden_states``, 0 = the
embedding output) meets teacher hidden state i·s, the output of that same teacher layer; so the embeddings are
matched too, and with s = n_t // n_s the last student state meets the last teacher state.
"""

from __future__ import annotations

from mergedistill.errors import UserError


def layer_stride(n_teacher: int, n_student: int, configured: int | None = None) -> int:
    """The stride s pairing a student of ``n_student`` layers with a teacher of ``n_teacher``: ``configured`` if set,
    else n_teacher // n_student."""
    return configured if configured else max(1, n_teacher // max(n_student, 1))


def teacher_layers(n_student: int, stride: int) -> list[int]:
    """0-based teacher layer behind each student layer: s−1, 2s−1, ... (teacher layers s, 2s, ... 1-based)."""
    return [(i + 1) * stride - 1 for i in range(n_student)]


def student_layers(n_teacher: int, stride: int) -> int:
    """Layers of a student cut from an ``n_teacher``-layer teacher with stride ``stride`` (BiStil phase 1)."""
    if stride < 1 or n_teacher // stride < 1:
        raise UserError(
            f"phase1.layer_stride={stride}: the teacher has {n_teacher} layers, so the stride must be 1..{n_teacher}"
        )
    return n_teacher // stride


def kept_layers(n_teacher: int, stride: int, choice: str = "stride") -> list[int]:
    """0-based teacher layer copied into each student layer: ``teacher_layers`` ("stride") or 0..n/s−1 ("bottom")."""
    n = student_layers(n_teacher, stride)
    if choice == "bottom":
        return list(range(n))
    if choice != "stride":
        raise UserError(f"phase1.layer_choice: must be stride or bottom, got {choice!r}")
    return teacher_layers(n, stride)


def attention_pairs(n_student: int, stride: int) -> list[tuple[int, int]]:
    """(student attention index, teacher attention index) = (i, (i+1)s−1), 0-based."""
    return list(enumerate(teacher_layers(n_student, stride)))


def hidden_pairs(n_student: int, stride: int) -> list[tuple[int, int]]:
    """(student hidden_states index, teacher hidden_states index) = (i, i·s) for i = 0..n_student (0 = embeddings)."""
    return [(i, i * stride) for i in range(n_student + 1)]
