"""Masked-LM quality on held-out text, for teachers and students alike.

Both metrics work on token-id sequences in the model's own vocabulary (with special tokens), so a
student in routed mode is measured on exactly its teacher's tokenization mapped to student ids:
- masked-token accuracy: mask ``prob`` of the non-special positions of each sequence (deterministic per
  sequence index and seed; every chosen position becomes the mask token), top-1 accuracy at them;
- pseudo-log-likelihood (Salazar et al. 2020): mask each non-special position in turn, sum log p of the
  true piece, and divide by the number of characters (and whitespace words) of the original text. Per
  character it does not depend on how finely the tokenizer splits, so teachers with different
  tokenizers can be ranked by it. (For ja/zh, whitespace "words" are whole sentences: use per char.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mergedistill.heads import masked_lm_logits
from mergedistill.masking import choose_masked, example_rng, pad_batch


@dataclass(frozen=True)
class EvalSet:
    """Held-out sequences in one model's vocabulary, with their special-token masks and source texts."""

    sequences: list[np.ndarray]
    special: list[np.ndarray]  # bool per position: never masked
    chars: list[int]  # characters of each source text that its sequence covers (a truncated text: its scored prefix)
    words: list[int]  # whitespace words in those characters


def make_eval_set(
    texts: Sequence[str], ids: Sequence[Sequence[int]], special_ids: set[int], covered: Sequence[int] | None = None
) -> EvalSet:
    """One sequence per text (no packing). ``covered``: per text, the leading characters its ids stand for (a
    text cut at the model's length is scored on that prefix; default: the whole text); chars and words count them."""
    sequences = [np.asarray(row, dtype=np.int64) for row in ids]
    special = [np.isin(s, list(special_ids)) for s in sequences]  # includes unk: never scored
    covered = [len(t) for t in texts] if covered is None else list(covered)
    return EvalSet(sequences, special, covered, [len(t[:n].split()) for t, n in zip(texts, covered)])


def eval_positions(eval_set: EvalSet, seed: int, prob: float) -> list[np.ndarray]:
    return [choose_masked(~sp, example_rng(seed, "eval", i), prob) for i, sp in enumerate(eval_set.special)]


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def masked_logits(
    model, sequences: list[np.ndarray], masked: list[np.ndarray], mask_id: int, pad_id: int, batch_size: int = 32
):
    """Yield (batch indices, log-probs [n_masked, V] in row-major order, on the CPU) with masked positions replaced by
    ``mask_id``; the model runs on its own device (``heads.masked_lm_logits`` moves the inputs there)."""
    import torch

    for rows in _batches(len(sequences), batch_size):
        seqs = [np.where(masked[i], mask_id, sequences[i]) for i in rows]
        ids, attention = pad_batch(seqs, pad_id)
        where = np.zeros_like(ids, dtype=bool)
        for r, i in enumerate(rows):
            where[r, : len(masked[i])] = masked[i]
        with torch.inference_mode():
            logits, _ = masked_lm_logits(
                model, torch.from_numpy(ids), torch.from_numpy(attention), torch.from_numpy(where)
            )
            yield rows, torch.log_softmax(logits.float(), dim=-1).cpu()  # the gold ids it meets are on the CPU


def masked_token_accuracy(
    model, eval_set: EvalSet, mask_id: int, pad_id: int, seed: int = 0, prob: float = 0.15, batch_size: int = 32
) -> dict:
    """Top-1 accuracy at deterministic masked positions, and the mean cross-entropy there."""
    import torch

    masked = eval_positions(eval_set, seed, prob)
    correct, total, nll = 0, 0, 0.0
    for rows, log_probs in masked_logits(model, eval_set.sequences, masked, mask_id, pad_id, batch_size):
        gold = torch.from_numpy(np.concatenate([eval_set.sequences[i][masked[i]] for i in rows]))
        correct += int((log_probs.argmax(-1) == gold).sum())
        nll -= float(log_probs.gather(1, gold[:, None]).sum())
        total += len(gold)
    return {"acc": correct / max(total, 1), "ce": nll / max(total, 1), "masked": total}


def pseudo_log_likelihood(model, eval_set: EvalSet, mask_id: int, pad_id: int, batch_size: int = 64) -> dict:
    """Sum over positions of log p(true piece | that piece masked), per character and per word."""
    import torch

    copies, targets = [], []
    for seq, special in zip(eval_set.sequences, eval_set.special):
        for position in np.flatnonzero(~special):
            one = np.zeros(len(seq), dtype=bool)
            one[position] = True
            copies.append(seq)
            targets.append(one)
    total = 0.0
    for rows, log_probs in masked_logits(model, copies, targets, mask_id, pad_id, batch_size):
        gold = torch.from_numpy(np.concatenate([copies[i][targets[i]] for i in rows]))
        total += float(log_probs.gather(1, gold[:, None]).sum())
    chars, words = sum(eval_set.chars), sum(eval_set.words)
    return {
        "pll": total,
        "pll_per_char": total / max(chars, 1),
        "pll_per_word": total / max(words, 1),
        "chars": chars,
        "words": words,
    }


def fertility(eval_set: EvalSet, unk_id: int | None = None) -> dict:
    """Pieces per whitespace word, and the share of unknown pieces."""
    pieces = sum(int((~sp).sum()) for sp in eval_set.special)
    unknown = sum(int((s == unk_id).sum()) for s in eval_set.sequences) if unk_id is not None else 0
    return {"fertility": pieces / max(sum(eval_set.words), 1), "unk_rate": unknown / max(pieces, 1)}
