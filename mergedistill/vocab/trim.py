"""Vocabulary trimming (BiStil §3.1): keep only the teacher pieces the two languages use. Core code
(BiStil's trim stage and ``mergedistill.adapt`` use it).

A piece is kept iff its unigram probability (count / all pieces) is >= theta in the source OR the target
corpus; special tokens are always kept. Kept pieces keep their relative order and get contiguous new ids;
the model's input/output embedding rows (and output bias) are sliced in the same order, so the trimmed
teacher computes exactly the original logits restricted to the kept pieces on text that tokenizes into
kept pieces. Two family-specific additions keep every text encodable the same way:
BPE keeps the pieces its merge chains pass through (a merge needs both parts and its result), and
byte-level BPE keeps its single-character base alphabet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mergedistill.errors import UserError


def piece_counts(tokenizer, texts: Iterable[str], batch: int = 512) -> np.ndarray:
    """How often each teacher id occurs when ``texts`` are tokenized (no special tokens)."""
    counts = np.zeros(len(tokenizer), dtype=np.int64)
    texts = list(texts)
    for start in range(0, len(texts), batch):
        ids = tokenizer(texts[start : start + batch], add_special_tokens=False)["input_ids"]
        flat = np.fromiter((i for row in ids for i in row), dtype=np.int64)
        counts += np.bincount(flat, minlength=len(counts))[: len(counts)]
    return counts


def select_kept(counts_per_language: Sequence[np.ndarray], theta: float, always: Iterable[int] = ()) -> np.ndarray:
    """Sorted teacher ids whose probability is >= theta in at least one language (plus ``always``)."""
    keep = np.zeros(len(counts_per_language[0]), dtype=bool)
    for counts in counts_per_language:
        total = counts.sum()
        if total > 0:
            keep |= (counts > 0) & (counts / total >= theta)
    keep[list(always)] = True
    return np.flatnonzero(keep)


def _model_json(tokenizer) -> dict:
    return json.loads(tokenizer.backend_tokenizer.to_str())


def _bpe_closure(model: dict, keep: set[str]) -> set[str]:
    """Add the parts of every merge whose result is kept, transitively (merge chains must stay complete)."""
    parts = {}
    for merge in model["merges"]:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        parts.setdefault(left + right, (left, right))
    stack = list(keep)
    while stack:
        piece = stack.pop()
        for part in parts.get(piece, ()):
            if part not in keep:
                keep.add(part)
                stack.append(part)
    return keep


def complete_kept(tokenizer, kept: np.ndarray) -> np.ndarray:
    """``kept`` plus what the tokenizer family needs to segment kept text as before (see module docstring)."""
    data = _model_json(tokenizer)
    model = data["model"]
    if model["type"] != "BPE":
        return np.asarray(kept, dtype=np.int64)
    id_to_piece = {i: p for p, i in model["vocab"].items()}
    keep = {id_to_piece[i] for i in kept.tolist() if i in id_to_piece}
    if any(p.get("type") == "ByteLevel" for p in _walk_types(data.get("pre_tokenizer"))):
        keep |= {p for p in model["vocab"] if len(p) == 1}
    keep = _bpe_closure(model, keep)
    ids = set(kept.tolist()) | {model["vocab"][p] for p in keep}
    return np.array(sorted(ids), dtype=np.int64)


def _walk_types(node):
    if isinstance(node, dict):
        yield node
        for child in node.get("pretokenizers", []) or node.get("processors", []) or []:
            yield from _walk_types(child)


def _remap_ids(node, old_to_new: dict[int, int]):
    """Rewrite special-token ids inside a post-processor JSON (TemplateProcessing, Bert/RobertaProcessing, Sequence)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "ids" and isinstance(value, list):
                out[key] = [old_to_new[i] for i in value]
            elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                out[key] = [value[0], old_to_new[value[1]]]
            else:
                out[key] = _remap_ids(value, old_to_new)
        return out
    if isinstance(node, list):
        return [_remap_ids(v, old_to_new) for v in node]
    return node


def trim_tokenizer(tokenizer, kept: np.ndarray):
    """A ``PreTrainedTokenizerFast`` over the kept pieces only, with ids 0..len(kept)-1 in the original order."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = _model_json(tokenizer)
    model = data["model"]
    old_to_new = {int(old): new for new, old in enumerate(kept.tolist())}
    kind = model["type"]
    if kind in ("WordPiece", "BPE"):
        by_id = {i: p for p, i in model["vocab"].items()}
        model["vocab"] = {by_id[old]: new for old, new in old_to_new.items() if old in by_id}
        if kind == "BPE":
            vocab = model["vocab"]
            merges = [m if not isinstance(m, str) else m.split(" ", 1) for m in model["merges"]]
            model["merges"] = [[a, b] for a, b in merges if a in vocab and b in vocab and a + b in vocab]
    elif kind == "Unigram":
        model["vocab"] = [model["vocab"][old] for old in kept.tolist()]
        if model.get("unk_id") is not None:
            if model["unk_id"] not in old_to_new:
                raise UserError("trim: the unknown piece was dropped; it must be kept (it is a special token)")
            model["unk_id"] = old_to_new[model["unk_id"]]
    else:
        raise UserError(f"trim: tokenizer model {kind!r} is not supported; WordPiece, Unigram and BPE are")
    added = []
    for token in data.get("added_tokens", []):
        if token["id"] in old_to_new:
            added.append({**token, "id": old_to_new[token["id"]]})
    data["added_tokens"] = added
    if data.get("post_processor") is not None:
        data["post_processor"] = _remap_ids(data["post_processor"], old_to_new)
    backend = Tokenizer.from_str(json.dumps(data))
    specials = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=tokenizer.model_max_length, **specials)


def trim_model(model, kept: np.ndarray):
    """Slice the input embeddings, output embeddings and output bias (in place) to the kept rows."""
    import torch

    old_vocab = model.get_input_embeddings().weight.shape[0]
    index = torch.as_tensor(kept, dtype=torch.long)
    tied = (
        model.get_output_embeddings() is not None
        and model.get_output_embeddings().weight is model.get_input_embeddings().weight
    )
    biases = [
        (name, p)
        for name, p in model.named_parameters(remove_duplicate=False)
        if p.dim() == 1 and p.shape[0] == old_vocab
    ]
    with torch.no_grad():
        inp = model.get_input_embeddings()
        inp.weight = torch.nn.Parameter(inp.weight[index].clone())
        inp.num_embeddings = len(kept)
        out = model.get_output_embeddings()
        if out is not None:
            out.weight = inp.weight if tied else torch.nn.Parameter(out.weight[index].clone())
            out.out_features = len(kept)
        sliced = {}
        for name, param in biases:  # e.g. BERT's cls.predictions.bias shared with decoder.bias
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            if id(param) not in sliced:
                sliced[id(param)] = torch.nn.Parameter(param[index].clone())
            setattr(owner, attr, sliced[id(param)])
    model.config.vocab_size = len(kept)
    return model


def trim_teacher(model, tokenizer, texts_per_language: Sequence[Sequence[str]], theta: float):
    """(trimmed model, trimmed tokenizer, kept teacher ids, per-language counts): the pure core of `bistil trim`."""
    counts = [piece_counts(tokenizer, texts) for texts in texts_per_language]
    kept = select_kept(counts, theta, always=tokenizer.all_special_ids)
    kept = complete_kept(tokenizer, kept)
    return trim_model(model, kept), trim_tokenizer(tokenizer, kept), kept, counts


def save_trimmed(directory: str | Path, model, tokenizer, kept: np.ndarray) -> None:
    """Write model + tokenizer + kept ids into ``directory`` (the caller makes it atomic)."""
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    np.save(directory / "kept_ids.npy", kept)
