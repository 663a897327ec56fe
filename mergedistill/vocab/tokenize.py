"""Student tokenization, two modes.

- Routed (MergeDistill's): text of language L is tokenized by the tokenizer of L's teacher and the ids are
  mapped to student ids, position by position, so the student sees exactly the teacher's segmentation.
  Saved as ``routed/routed_tokenizer.json`` (language -> teacher) + one tokenizer dir and id map per
  teacher; ``load_routed_tokenizer(dir)`` is the one call that brings it back.
- Unified: one ``tokenizers`` Unigram model over the merged pieces, its scores fitted so that it segments each
  language as that language's teacher does (``vocab.fit``, in the student convention of ``vocab.segment``),
  byte fallback through ``<0xHH>`` pieces, saved so ``AutoTokenizer.from_pretrained(dir)`` needs neither a
  language id nor mergedistill.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np

from mergedistill.errors import UserError
from mergedistill.vocab.merge import SPECIAL_IDS, SPECIAL_TOKENS, MergedVocab

ROUTED_CONFIG = "routed_tokenizer.json"


class RoutedTokenizer:
    """language -> (teacher tokenizer, id map); ``encode`` returns student ids aligned with the teacher's."""

    def __init__(
        self,
        routes: Mapping[str, str],
        tokenizers: Mapping[str, object],
        id_maps: Mapping[str, np.ndarray],
        max_length: int = 512,
    ):
        self.routes = dict(routes)
        self.tokenizers = dict(tokenizers)
        self.id_maps = dict(id_maps)
        self.max_length = max_length

    def teacher_ids(self, texts: list[str], lang: str) -> list[list[int]]:
        if lang not in self.routes:
            raise UserError(f"language {lang!r} has no route; routed languages: {', '.join(sorted(self.routes))}")
        tokenizer = self.tokenizers[self.routes[lang]]
        return tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]

    def encode(self, text: str | list[str], lang: str):
        """Student ids (with the student's special tokens at the teacher's special positions)."""
        single = isinstance(text, str)
        texts = [text] if single else text
        id_map = self.id_maps[self.routes[lang]]
        out = []
        for ids in self.teacher_ids(texts, lang):
            mapped = id_map[np.asarray(ids)]
            out.append(np.where(mapped < 0, SPECIAL_IDS["unk"], mapped).tolist())
        return out[0] if single else out

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, tokenizer in sorted(self.tokenizers.items()):
            tokenizer.save_pretrained(directory / name)
            np.save(directory / name / "id_map.npy", np.asarray(self.id_maps[name], dtype=np.int32))
        config = {"routes": self.routes, "max_length": self.max_length, "teachers": sorted(self.tokenizers)}
        (directory / ROUTED_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_routed_tokenizer(directory: str | Path) -> RoutedTokenizer:
    """The one call that restores routed tokenization saved with a student."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    config_path = directory / ROUTED_CONFIG
    if not config_path.is_file():
        candidate = directory / "routed" / ROUTED_CONFIG
        if not candidate.is_file():
            raise UserError(
                f"{directory}: no {ROUTED_CONFIG}; pass the student's export directory or its routed/ folder"
            )
        directory, config_path = directory / "routed", candidate
    config = json.loads(config_path.read_text(encoding="utf-8"))
    tokenizers = {name: AutoTokenizer.from_pretrained(directory / name) for name in config["teachers"]}
    id_maps = {name: np.load(directory / name / "id_map.npy") for name in config["teachers"]}
    return RoutedTokenizer(config["routes"], tokenizers, id_maps, config.get("max_length", 512))


def unified_scores(vocab: MergedVocab, smoothing: float = 0.5) -> list[float]:
    """The fitted scores (``vocab.fit``) when the vocabulary has them, else unigram log-probabilities from the
    merged corpus counts (add-``smoothing``), specials at 0."""
    if len(vocab.scores) == len(vocab):
        return [float(s) for s in vocab.scores]
    counts = np.asarray(vocab.counts, dtype=np.float64) if len(vocab.counts) else np.zeros(len(vocab))
    body = counts[len(SPECIAL_TOKENS) :] + smoothing
    log_total = math.log(body.sum())
    scores = [0.0] * len(SPECIAL_TOKENS) + [float(math.log(c) - log_total) for c in body]
    # byte pieces are the fallback of last resort
    return [s - 10.0 if p.startswith("<0x") and len(p) == 6 else s for p, s in zip(vocab.pieces, scores)]


def special_added_tokens():
    """The specials as ``transformers`` expects them: never normalized, and ``[MASK]`` takes the space before
    it (``lstrip``), so ``"Click [MASK] to"`` is ``▁Click [MASK] ▁to``, as in training, not ``▁Click ▁ [MASK]``."""
    from tokenizers import AddedToken

    return [AddedToken(token, special=True, normalized=False, lstrip=token == "[MASK]") for token in SPECIAL_TOKENS]


def build_unified_tokenizer(vocab: MergedVocab, model_max_length: int = 512):
    """A fast tokenizer over the merged pieces that AutoTokenizer can load without mergedistill: the
    normalizer and pre-tokenizer of ``vocab.segment`` (recorded in the vocabulary's metadata), word starts
    ``▁`` only where the text has a space (so decoding gives the text back), byte fallback."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    from mergedistill.vocab.segment import Convention, unified_normalizer, unified_pretokenizer

    unified = vocab.metadata.get("unified", {})
    convention = Convention(
        unified.get("han", "none"),
        unified.get("punct", "none"),
        unified.get("lowercase", False),
        unified.get("strip_accents", False),
        unified.get("japanese_han", ""),
    )
    has_bytes = "<0x00>" in vocab.pieces
    model = models.Unigram(
        list(zip(vocab.pieces, unified_scores(vocab))), unk_id=SPECIAL_IDS["unk"], byte_fallback=has_bytes
    )
    tok = Tokenizer(model)
    tok.normalizer = unified_normalizer(convention)
    tok.pre_tokenizer = unified_pretokenizer(convention)
    tok.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="first")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", SPECIAL_IDS["cls"]), ("[SEP]", SPECIAL_IDS["sep"])],
    )
    tok.add_special_tokens(special_added_tokens())
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=model_max_length,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        clean_up_tokenization_spaces=False,
    )


def copy_tokenizer_files(source: str | Path, target: str | Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(source) / name).exists():
            shutil.copy(Path(source) / name, Path(target) / name)
