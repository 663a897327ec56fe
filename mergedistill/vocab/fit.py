"""Scores of the unified Unigram tokenizer, fitted so that its Viterbi segmentation is the teachers'.

Start: unigram log-probabilities of the student-convention pieces in the teachers' own segmentations of
their languages' training text (``segment.faithful_pieces``). Then a structured perceptron over the
distinct pre-tokens of that text: where Viterbi's pieces differ from the teacher's, the teacher's pieces
gain and Viterbi's lose, step ``lr·(1 + log count)``; the scores are averaged over all updates (averaged
perceptron). Where two languages' teachers segment the same string differently, the more frequent
segmentation is the target (one model cannot follow both). The pass with the most pre-tokens right wins. Deterministic: fixed order, no sampling.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable

import numpy as np

BYTE_PENALTY = 10.0  # byte pieces are the fallback of last resort


def is_byte_piece(piece: str) -> bool:
    return len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")


def initial_scores(
    pieces: list[str], counts: Counter, n_specials: int, smoothing: float = 0.1, priors: dict | None = None
) -> np.ndarray:
    """Log relative counts; a piece with a prior (a Unigram teacher's own log-probability) starts there."""
    body = np.array([counts.get(p, 0) for p in pieces[n_specials:]], dtype=np.float64) + smoothing
    scores = np.concatenate([np.zeros(n_specials), np.log(body) - math.log(body.sum())])
    for i, piece in enumerate(pieces[n_specials:], n_specials):
        if priors and piece in priors:
            scores[i] = priors[piece]
    floor = float(scores[n_specials:].min()) if len(pieces) > n_specials else 0.0
    for i, piece in enumerate(pieces):
        if i >= n_specials and is_byte_piece(piece):
            scores[i] = floor - BYTE_PENALTY
    return scores


def majority_targets(pairs: Iterable[tuple[str, tuple[str, ...]]]) -> list[tuple[str, tuple[str, ...], int]]:
    """(pre-token, keys) occurrences -> per pre-token its most frequent segmentation and how often it occurs."""
    by_string: dict[str, Counter] = {}
    for string, keys in pairs:
        by_string.setdefault(string, Counter())[keys] += 1
    out = []
    for string in sorted(by_string):
        ((keys, count),) = sorted(by_string[string].items(), key=lambda kv: (-kv[1], kv[0]))[:1]
        out.append((string, keys, count))
    return out


def _model(pieces: list[str], scores: np.ndarray, unk_id: int):
    from tokenizers import models

    return models.Unigram(
        list(zip(pieces, scores.tolist())), unk_id=unk_id, byte_fallback=any(map(is_byte_piece, pieces))
    )


def fit_scores(
    pieces: list[str],
    counts: Counter,
    targets: list[tuple[str, tuple[str, ...], int]],
    n_specials: int,
    unk_id: int,
    epochs: int = 12,
    lr: float = 0.05,
    batch: int = 2000,
    priors: dict | None = None,
    log=None,
) -> tuple[np.ndarray, dict]:
    """Scores per piece and fit statistics ({"pretokens", "right_before", "right_after"})."""
    index = {p: i for i, p in enumerate(pieces)}
    scores = initial_scores(pieces, counts, n_specials, priors=priors)
    targets = [(s, keys, n) for s, keys, n in targets if all(k in index for k in keys)]
    steps = np.array([1.0 + math.log(n) for _, _, n in targets])
    target_ids = [np.array([index[k] for k in keys]) for _, keys, _ in targets]
    total = float(sum(n for _, _, n in targets)) or 1.0

    summed, updates = np.zeros(len(pieces)), 0

    def one_pass(weights: np.ndarray, update: bool, rate: float) -> float:
        nonlocal summed, updates
        right = 0.0
        model = _model(pieces, weights, unk_id)
        for start in range(0, len(targets), batch):
            if update and start:
                model = _model(pieces, weights, unk_id)
            delta = np.zeros(len(pieces))
            for j in range(start, min(start + batch, len(targets))):
                string, keys, n = targets[j]
                predicted = tuple(t.value for t in model.tokenize(string))
                if predicted == keys:
                    right += n
                elif update:
                    np.add.at(delta, target_ids[j], steps[j])
                    np.add.at(delta, [index.get(p, unk_id) for p in predicted], -steps[j])
            if update:
                delta[:n_specials] = 0.0
                weights += rate * delta
                summed += weights
                updates += 1
        return right / total

    before = best_right = one_pass(scores, False, 0.0)
    best = scores.copy()
    for epoch in range(epochs):
        one_pass(scores, True, lr)
        averaged = summed / updates  # the averaged perceptron: steadier than the last weights
        right = one_pass(averaged, False, 0.0)
        if log:
            log(
                f"[vocab] unified tokenizer fit, pass {epoch + 1}: {right:.4f} of training pre-tokens segmented as their teacher does"
            )
        if right > best_right:
            best_right, best = right, averaged.copy()
    return best, {"pretokens": len(targets), "right_before": round(before, 4), "right_after": round(best_right, 4)}
