"""Unified-mode alignment: the student's (merged-tokenizer) pieces against a teacher's pieces of the same text.

In unified mode (``data.tokenization: unified``) the student reads text through its own tokenizer while the
teacher keeps its own, so positions no longer match 1:1. Both segmentations are cut into *groups*: the
shortest character spans whose ends are piece ends on both sides (a piece belongs to the group of the
first common end at or after its own end). A group with exactly one piece on each side covers the same
characters in both tokenizations: there a teacher's prediction for its piece stands for the student's
piece. One more kind of group gets a KD target, a *spaced* group: the student's ``▁X`` against a teacher's
bare word marker ``▁`` and ``X`` (SentencePiece teachers cut a word start so when they lack ``▁X``); the
teacher's prediction at ``X`` stands for ``▁X`` (mapped through the vocabulary's ``spaced_maps``). Masking
is by group (every piece of a chosen group is masked on both sides, like whole-word masking), so neither
model sees what the other must predict.

All functions are pure numpy over offsets and id arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MARKERS = ("▁", "Ġ", "##")


def piece_ends(offsets, pieces) -> np.ndarray:
    """Where each piece ends, in half characters (``2 * end``): the two sides' ends are compared, so the unit
    does not matter. A piece that is only a word marker (``▁``, ``Ġ``) covers no letter (tokenizers give it the
    span of the space or of the next character) and ends half a character after its start: it is a group of its
    own where both sides have it (``")" "▁"`` on both sides are two one-piece groups, not one two-piece group),
    and it joins the neighbouring group where the other side has ``"▁word"``."""
    ends = np.array([2 * end for _, end in offsets], dtype=np.int64)
    for index, piece in enumerate(pieces):
        stripped = piece
        for marker in MARKERS:
            stripped = stripped.replace(marker, "")
        if not stripped:
            ends[index] = 2 * offsets[index][0] + 1
    return np.maximum.accumulate(ends) if len(ends) else ends


def span_groups(student_ends: np.ndarray, teacher_ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group index of every student and teacher piece (see the module docstring)."""
    common = np.intersect1d(student_ends, teacher_ends)
    return np.searchsorted(common, student_ends, "left"), np.searchsorted(common, teacher_ends, "left")


@dataclass
class AlignedSequence:
    """One packed training sequence in both tokenizations, with special tokens; group -1 = special."""

    student_ids: np.ndarray
    teacher_ids: np.ndarray
    student_groups: np.ndarray
    teacher_groups: np.ndarray


def pack_aligned(
    paragraphs, student_max: int, teacher_max: int, student_specials: tuple[int, int], teacher_specials: tuple[int, int]
) -> list[AlignedSequence]:
    """Pack aligned paragraphs ``(student ids, teacher ids, student groups, teacher groups)`` into
    ``[CLS] p1 [SEP] p2 [SEP] ...`` on both sides, cutting only between groups, so that each side fits its
    maximum length. A group longer than a whole sequence is dropped (it cannot be cut without breaking
    the alignment). Group ids are renumbered per sequence."""
    return list(iter_pack_aligned(paragraphs, student_max, teacher_max, student_specials, teacher_specials))


def iter_pack_aligned(
    paragraphs, student_max: int, teacher_max: int, student_specials: tuple[int, int], teacher_specials: tuple[int, int]
):
    """``pack_aligned`` as a generator: yields each sequence once it is closed (holds only the one being filled)."""
    (s_cls, s_sep), (t_cls, t_sep) = student_specials, teacher_specials
    out: list[AlignedSequence] = []
    s, t, gs, gt = [s_cls], [t_cls], [-1], [-1]

    def end_paragraph():  # room for this [SEP] is reserved when a group is added
        if gs[-1] != -1:
            s.append(s_sep), t.append(t_sep), gs.append(-1), gt.append(-1)

    def close():
        nonlocal s, t, gs, gt
        end_paragraph()
        if len(s) > 2:
            out.append(AlignedSequence(*(np.array(a, dtype=np.int64) for a in (s, t, gs, gt))))
        s, t, gs, gt = [s_cls], [t_cls], [-1], [-1]

    for s_ids, t_ids, s_groups, t_groups in paragraphs:
        s_ids, t_ids, s_groups, t_groups = (np.asarray(a, dtype=np.int64) for a in (s_ids, t_ids, s_groups, t_groups))
        n_groups = int(max(s_groups.max(initial=-1), t_groups.max(initial=-1))) + 1
        s_cut = np.searchsorted(s_groups, np.arange(n_groups + 1), "left")
        t_cut = np.searchsorted(t_groups, np.arange(n_groups + 1), "left")
        for group in range(n_groups):
            s_part, t_part = s_ids[s_cut[group] : s_cut[group + 1]], t_ids[t_cut[group] : t_cut[group + 1]]
            if len(s_part) + 2 > student_max or len(t_part) + 2 > teacher_max:
                continue
            if len(s) + len(s_part) + 1 > student_max or len(t) + len(t_part) + 1 > teacher_max:
                close()
            gid = max(gs) + 1
            s += s_part.tolist()
            t += t_part.tolist()
            gs += [gid] * len(s_part)
            gt += [gid] * len(t_part)
        end_paragraph()
        yield from out
        out.clear()
    close()
    yield from out


def in_groups(groups: np.ndarray, selected: np.ndarray) -> np.ndarray:
    """``np.isin(groups, selected)`` for small non-negative group ids (-1 = special: never selected), through a
    lookup table: batches call this per sequence, where ``np.isin``'s sorting costs more than the table."""
    size = max(int(groups.max(initial=-1)), int(selected.max(initial=-1))) + 2  # slot -1 stays False
    table = np.zeros(size, bool)
    table[selected] = True
    return table[groups]


def _group_counts(student_groups: np.ndarray, teacher_groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pieces per group id on each side (same length: every id of either side)."""
    size = max(int(student_groups.max(initial=-1)), int(teacher_groups.max(initial=-1))) + 1
    return (
        np.bincount(student_groups[student_groups >= 0], minlength=size),
        np.bincount(teacher_groups[teacher_groups >= 0], minlength=size),
    )


def one_to_one(student_groups: np.ndarray, teacher_groups: np.ndarray) -> np.ndarray:
    """Sorted ids of the groups with exactly one piece on each side."""
    s_counts, t_counts = _group_counts(student_groups, teacher_groups)
    return np.flatnonzero((s_counts == 1) & (t_counts == 1))


def spaced(
    student_groups: np.ndarray, teacher_groups: np.ndarray, student_word_start: np.ndarray, teacher_bare: np.ndarray
) -> np.ndarray:
    """Sorted ids of the spaced groups (module docstring): one student piece, a word start (``student_word_start``
    per student piece), against two teacher pieces, the first a bare word marker (``teacher_bare`` per teacher
    piece) and the second not."""
    s_counts, t_counts = _group_counts(student_groups, teacher_groups)
    candidates = np.flatnonzero((s_counts == 1) & (t_counts == 2))
    if len(candidates) == 0:
        return candidates
    s_start = in_groups(student_groups, candidates) & student_word_start
    in_candidate = in_groups(teacher_groups, candidates)
    first = in_candidate & np.r_[True, teacher_groups[1:] != teacher_groups[:-1]]
    second = in_candidate & ~first
    return candidates[
        in_groups(candidates, student_groups[s_start])
        & in_groups(candidates, teacher_groups[first & teacher_bare])
        & in_groups(candidates, teacher_groups[second & ~teacher_bare])
    ]


def served(teacher_groups: np.ndarray, pairs: np.ndarray, spaced_groups: np.ndarray, teacher_bare: np.ndarray):
    """Bool per teacher piece: its prediction is a target (one per group, in group order): the piece of a
    one-piece group in ``pairs``, the ``X`` of a spaced group in ``spaced_groups``."""
    return in_groups(teacher_groups, pairs) | (in_groups(teacher_groups, spaced_groups) & ~teacher_bare)


def mask_aligned(
    seq: AlignedSequence,
    rng: np.random.Generator,
    prob: float,
    student_mask: int,
    teacher_mask: int,
    student_pool: np.ndarray,
    teacher_pool: np.ndarray,
    only: np.ndarray | None = None,
):
    """Choose ``prob`` of the groups (at least one; among ``only`` when given), then per chosen group 80 % mask
    token, 10 % random pieces, 10 % unchanged, on both sides. Returns (student input, teacher input, student
    masked, teacher masked, chosen groups)."""
    candidates = np.unique(seq.student_groups[seq.student_groups >= 0]) if only is None else only
    s_in, t_in = seq.student_ids.copy(), seq.teacher_ids.copy()
    if len(candidates) == 0:
        none_s, none_t = np.zeros(len(s_in), bool), np.zeros(len(t_in), bool)
        return s_in, t_in, none_s, none_t, candidates
    count = min(len(candidates), max(1, int(round(len(candidates) * prob))))
    chosen = np.sort(rng.choice(candidates, size=count, replace=False))
    draw = rng.random(count)
    s_masked, t_masked = in_groups(seq.student_groups, chosen), in_groups(seq.teacher_groups, chosen)
    s_to_mask, t_to_mask = (
        in_groups(seq.student_groups, chosen[draw < 0.8]),
        in_groups(seq.teacher_groups, chosen[draw < 0.8]),
    )
    random_groups = chosen[(draw >= 0.8) & (draw < 0.9)]
    s_random, t_random = in_groups(seq.student_groups, random_groups), in_groups(seq.teacher_groups, random_groups)
    s_in[s_to_mask], t_in[t_to_mask] = student_mask, teacher_mask
    if s_random.any():
        s_in[s_random] = rng.choice(student_pool, size=int(s_random.sum()))
        t_in[t_random] = rng.choice(teacher_pool, size=int(t_random.sum()))
    return s_in, t_in, s_masked, t_masked, chosen
