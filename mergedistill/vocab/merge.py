"""Merge teacher vocabularies into one student vocabulary, with a dense id map per teacher.

Which teacher pieces are kept (``select_pieces``): those whose unigram probability on the text of the
languages the teacher serves is >= ``min_freq`` (``vocab.min_freq``, BiStil's rule). A rarer piece is
dropped even though it occurs: routed tokenization then gives the student ``[UNK]`` there and the teacher's
outputs on it are not targets. ``min_freq: 0`` keeps every piece, seen or not; without counts (no corpus
given) every piece is kept. Kept pieces that occur in the text are *required*.
With ``max_size`` the least frequent pieces are dropped first, never specials nor required pieces.

Student ids: the canonical specials ``[PAD] [UNK] [CLS] [SEP] [MASK]`` are ids 0-4, then the union of kept
keys ordered by (descending total count, key) — deterministic. Keys already reconcile the families'
conventions (``mergedistill.pieces``), so ``##ing``/``ing`` and ``▁the``/``Ġthe``/``the`` meet.
A lowercasing teacher's keys are lowercase and merge with cased pieces only where the strings are equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from mergedistill.errors import UserError
from mergedistill.pieces import ROLES, NormalizedVocab

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SPECIAL_IDS = {role: i for i, role in enumerate(ROLES)}  # pad 0, unk 1, cls 2, sep 3, mask 4
BYTE_PIECES = tuple(f"<0x{b:02X}>" for b in range(256))


@dataclass
class MergedVocab:
    pieces: list[str]  # student id -> key (ids 0-4: the special tokens)
    id_maps: dict[str, np.ndarray]  # teacher name -> int32 [teacher vocab size]: student id or -1
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # student id -> corpus count
    metadata: dict = field(default_factory=dict)
    scores: np.ndarray = field(
        default_factory=lambda: np.zeros(0)
    )  # student id -> unified Unigram score (empty: from counts)
    glued_maps: dict[str, np.ndarray] = field(
        default_factory=dict
    )  # teacher -> student id where no space precedes (vocab.build)
    spaced_maps: dict[str, np.ndarray] = field(
        default_factory=dict
    )  # teacher -> student id at the X of a teacher's ▁ X (vocab.build)

    def __len__(self) -> int:
        return len(self.pieces)

    def map_ids(self, teacher: str, teacher_ids) -> np.ndarray:
        """Teacher ids -> student ids for model INPUT: a dropped piece becomes [UNK]."""
        mapped = self.id_maps[teacher][np.asarray(teacher_ids)]
        return np.where(mapped < 0, SPECIAL_IDS["unk"], mapped)


def piece_counts(tokenizer, texts, batch: int = 1000) -> np.ndarray:
    """How often each teacher id occurs when ``tokenizer`` tokenizes ``texts`` (no special tokens)."""
    counts = np.zeros(len(tokenizer), dtype=np.int64)
    for start in range(0, len(texts), batch):
        ids = tokenizer(list(texts[start : start + batch]), add_special_tokens=False)["input_ids"]
        flat = np.fromiter((i for seq in ids for i in seq), dtype=np.int64)
        counts += np.bincount(flat, minlength=len(counts))[: len(counts)]
    return counts


def select_pieces(vocab: NormalizedVocab, counts: np.ndarray | None, min_freq: float) -> np.ndarray:
    """Bool over teacher ids: which pieces (with a key) to keep: those whose unigram probability on the
    teacher's text (count / all counted pieces) is >= ``min_freq`` (``vocab.min_freq``; 0 keeps every piece)."""
    has_key = np.array([k is not None for k in vocab.keys], dtype=bool)
    if counts is None:
        return has_key
    total = max(int(counts.sum()), 1)
    return has_key & (counts / total >= min_freq)


def merge_vocabs(
    vocabs: Mapping[str, NormalizedVocab],
    counts: Mapping[str, np.ndarray | None] | None = None,
    min_freq: float = 1e-6,
    max_size: int | None = None,
    add_byte_pieces: bool = False,
    extra_counts: Mapping[str, int] | None = None,
    min_freq_by_teacher: Mapping[str, float] | None = None,
) -> MergedVocab:
    """Build the student vocabulary and the id maps. ``counts`` = teacher name -> id counts on its text;
    ``extra_counts``: further required pieces (the unified tokenizer's student-convention pieces) -> count;
    ``min_freq_by_teacher``: teacher name -> its own threshold instead of ``min_freq``."""
    counts = counts or {}
    by_teacher = min_freq_by_teacher or {}
    totals: dict[str, int] = {}
    required: set[str] = set()
    for name in sorted(vocabs):
        vocab = vocabs[name]
        teacher_counts = counts.get(name)
        keep = select_pieces(vocab, teacher_counts, by_teacher.get(name, min_freq))
        for teacher_id in np.flatnonzero(keep):
            key = vocab.keys[teacher_id]
            totals[key] = totals.get(key, 0) + (int(teacher_counts[teacher_id]) if teacher_counts is not None else 0)
            if teacher_counts is not None and teacher_counts[teacher_id] > 0:
                required.add(key)
    for key, count in sorted((extra_counts or {}).items()):
        totals[key] = max(totals.get(key, 0), int(count))
        required.add(key)
    if add_byte_pieces:  # byte fallback of the unified tokenizer needs all 256 byte pieces
        for piece in BYTE_PIECES:
            totals.setdefault(piece, 0)
            required.add(piece)
    ordered = sorted(totals, key=lambda k: (-totals[k], k))
    if max_size is not None:
        room = max_size - len(SPECIAL_TOKENS)
        needed = [k for k in ordered if k in required]
        if len(needed) > room:
            raise UserError(
                f"vocab.max_size={max_size} is below the {len(needed) + len(SPECIAL_TOKENS)} pieces the teachers need "
                "to tokenize their languages (specials included); raise vocab.max_size or set it to null"
            )
        optional = [k for k in ordered if k not in required][: room - len(needed)]
        chosen = set(needed) | set(optional)
        ordered = [k for k in ordered if k in chosen]
    pieces = list(SPECIAL_TOKENS) + ordered
    student_id = {key: i for i, key in enumerate(pieces)}
    id_maps = {}
    for name in sorted(vocabs):
        vocab = vocabs[name]
        id_map = np.full(len(vocab.keys), -1, dtype=np.int32)
        for i, key in enumerate(vocab.keys):
            if key is not None and key in student_id and key not in SPECIAL_TOKENS:
                id_map[i] = student_id[key]
        for role, teacher_id in vocab.roles.items():
            id_map[teacher_id] = SPECIAL_IDS[role]
        id_maps[name] = id_map
    student_counts = np.array([0] * len(SPECIAL_TOKENS) + [totals[k] for k in ordered], dtype=np.int64)
    return MergedVocab(pieces, id_maps, student_counts)


def map_topk(teacher_ids, logits, id_map):
    """Map top-k teacher ids to student ids: unmapped entries get id -1 and logit -inf (shape kept), so a
    softmax over each row renormalizes over the kept ids. Ids at or past the end of the id map (an output
    layer wider than the tokenizer, e.g. DeBERTa-v3's 128,100 logits for 128,001 tokens) are dropped too.
    Works on torch tensors or numpy arrays."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None and isinstance(teacher_ids, torch.Tensor):
        table = torch.from_numpy(np.array(id_map, dtype=np.int64))  # a copy: id maps are read-only memory maps
        ids = teacher_ids.long()
        inside = ids < len(table)
        student = torch.where(inside, table[ids.clamp(max=len(table) - 1)], torch.full_like(ids, -1))
        dropped = student < 0
        return student.masked_fill(dropped, -1), logits.masked_fill(dropped, float("-inf"))
    table = np.asarray(id_map)
    ids = np.asarray(teacher_ids)
    inside = ids < len(table)
    student = np.where(inside, table[np.minimum(ids, len(table) - 1)], -1)
    dropped = student < 0
    return np.where(dropped, -1, student), np.where(dropped, -np.inf, logits)
