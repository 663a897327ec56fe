"""MLM masking and sequence packing: pure numpy functions shared by teacher pretraining, the distillation
data pipeline and evaluation.

Masking is BERT's: choose ``prob`` of the maskable positions (never special tokens); of those, 80 % become
the mask token, 10 % a random piece from ``random_pool`` and 10 % stay unchanged. With whole-word masking
the choice is made per word (a word = a word-initial piece and the continuation pieces after it), and
every piece of a chosen word is masked.
"""

from __future__ import annotations

import hashlib

import numpy as np


def example_rng(seed: int, *parts) -> np.random.Generator:
    """A generator seeded by ``seed`` and any identifying parts (language, example index, epoch, ...)."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def word_ids(word_start: np.ndarray) -> np.ndarray:
    """Word index of each position given a bool array marking word-initial pieces (position 0 starts one)."""
    starts = word_start.copy()
    if len(starts):
        starts[0] = True
    return np.cumsum(starts) - 1


def choose_masked(
    maskable: np.ndarray, rng: np.random.Generator, prob: float, word_start: np.ndarray | None = None
) -> np.ndarray:
    """Bool array: which positions to mask. At least one when anything is maskable."""
    n = int(maskable.sum())
    if n == 0:
        return np.zeros_like(maskable)
    if word_start is None:
        candidates = np.flatnonzero(maskable)
        count = max(1, int(round(n * prob)))
        chosen = rng.choice(candidates, size=count, replace=False)
        out = np.zeros_like(maskable)
        out[chosen] = True
        return out
    words = word_ids(word_start & maskable | ~maskable)  # specials form their own words
    maskable_words = np.unique(words[maskable])
    count = max(1, int(round(len(maskable_words) * prob)))
    chosen_words = rng.choice(maskable_words, size=min(count, len(maskable_words)), replace=False)
    return np.isin(words, chosen_words) & maskable


def apply_mask(
    ids: np.ndarray, masked: np.ndarray, rng: np.random.Generator, mask_id: int, random_pool: np.ndarray
) -> np.ndarray:
    """80 % mask token, 10 % random piece from ``random_pool``, 10 % unchanged, at ``masked`` positions."""
    out = ids.copy()
    positions = np.flatnonzero(masked)
    if len(positions) == 0:
        return out
    draw = rng.random(len(positions))
    to_mask = positions[draw < 0.8]
    to_random = positions[(draw >= 0.8) & (draw < 0.9)]
    out[to_mask] = mask_id
    if len(to_random):
        out[to_random] = rng.choice(random_pool, size=len(to_random))
    return out


def mask_sequence(
    ids: np.ndarray,
    special: np.ndarray,
    rng: np.random.Generator,
    prob: float,
    mask_id: int,
    random_pool: np.ndarray,
    word_start: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(masked input ids, bool masked positions) for one sequence."""
    masked = choose_masked(~special, rng, prob, word_start)
    return apply_mask(ids, masked, rng, mask_id, random_pool), masked


def pack(paragraphs: list[list[int]], max_length: int, cls_id: int, sep_id: int) -> list[np.ndarray]:
    """Pack tokenized paragraphs (no special tokens) into ``[CLS] p1 [SEP] p2 [SEP] ...`` of at most
    ``max_length``; a paragraph longer than a whole sequence is cut into pieces. Order is kept, so the
    packing is deterministic, and sequences come out nearly full (little padding)."""
    room = max_length - 2
    sequences: list[np.ndarray] = []
    current: list[int] = [cls_id]
    for paragraph in paragraphs:
        chunks = [paragraph[i : i + room] for i in range(0, len(paragraph), room)] or []
        for chunk in chunks:
            if len(current) + len(chunk) + 1 > max_length and len(current) > 1:
                sequences.append(np.asarray(current, dtype=np.int32))
                current = [cls_id]
            current += [*chunk, sep_id]
    if len(current) > 1:
        sequences.append(np.asarray(current, dtype=np.int32))
    return sequences


def pad_batch(sequences: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids [B, T_max], attention mask [B, T_max]) padded on the right."""
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    attention = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        attention[row, : len(seq)] = 1
    return ids, attention
