"""Saving and loading a merged vocabulary.

Layout of a vocabulary directory (byte-identical for the same inputs):
    pieces.json            student id -> key (a JSON list: keys may hold any character, newlines included)
    counts.npy             student id -> corpus count (int64)
    id_maps/<teacher>.npy  teacher id -> student id, int32, -1 = dropped (loaded as memory maps)
    glued_maps/<teacher>.npy  the same where no space precedes the piece (a WordPiece ``▁.`` -> ``.``; unified)
    spaced_maps/<teacher>.npy the same at the ``X`` of a teacher's ``▁`` ``X`` (``X`` -> ``▁X``; unified)
    scores.npy             student id -> unified Unigram score (unified tokenizer only)
    metadata.json          teachers (fingerprints, families, sizes, kept counts), build options
"""

from __future__ import annotations

import io as _io
import json
from pathlib import Path

import numpy as np

from mergedistill.errors import UserError
from mergedistill.io import write_json_atomic
from mergedistill.vocab.merge import MergedVocab


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = _io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    path.write_bytes(buffer.getvalue())


def save_vocab(vocab: MergedVocab, directory: str | Path) -> None:
    """Write into an existing directory (the caller provides atomicity, e.g. ``io.atomic_dir``)."""
    directory = Path(directory)
    (directory / "id_maps").mkdir(parents=True, exist_ok=True)
    (directory / "pieces.json").write_text(
        json.dumps(vocab.pieces, ensure_ascii=False, indent=0) + "\n", encoding="utf-8"
    )
    _save_npy(directory / "counts.npy", vocab.counts.astype(np.int64))
    for name, id_map in sorted(vocab.id_maps.items()):
        _save_npy(directory / "id_maps" / f"{name}.npy", id_map.astype(np.int32))
    if vocab.glued_maps:
        (directory / "glued_maps").mkdir(exist_ok=True)
    for name, glued in sorted(vocab.glued_maps.items()):
        _save_npy(directory / "glued_maps" / f"{name}.npy", glued.astype(np.int32))
    if vocab.spaced_maps:
        (directory / "spaced_maps").mkdir(exist_ok=True)
    for name, spaced in sorted(vocab.spaced_maps.items()):
        _save_npy(directory / "spaced_maps" / f"{name}.npy", spaced.astype(np.int32))
    if len(vocab.scores):
        _save_npy(directory / "scores.npy", np.asarray(vocab.scores, dtype=np.float64))
    write_json_atomic(directory / "metadata.json", vocab.metadata)


def load_vocab(directory: str | Path) -> MergedVocab:
    directory = Path(directory)
    pieces_path = directory / "pieces.json"
    if not pieces_path.is_file():
        raise UserError(
            f"{directory}: not a merged vocabulary (pieces.json missing); build it with `mergedistill vocab build`"
        )
    pieces = json.loads(pieces_path.read_text(encoding="utf-8"))
    id_maps = {p.stem: np.load(p, mmap_mode="r") for p in sorted((directory / "id_maps").glob("*.npy"))}
    counts = np.load(directory / "counts.npy")
    metadata = json.loads((directory / "metadata.json").read_text(encoding="utf-8"))
    glued_maps = {p.stem: np.load(p, mmap_mode="r") for p in sorted((directory / "glued_maps").glob("*.npy"))}
    spaced_maps = {p.stem: np.load(p, mmap_mode="r") for p in sorted((directory / "spaced_maps").glob("*.npy"))}
    scores = np.load(directory / "scores.npy") if (directory / "scores.npy").is_file() else np.zeros(0)
    for name, id_map in id_maps.items():
        if id_map.size and int(id_map.max()) >= len(pieces):
            raise UserError(
                f"{directory}/id_maps/{name}.npy: ids beyond the vocabulary; the directory is corrupted, rebuild it"
            )
    return MergedVocab(pieces, id_maps, counts, metadata, scores, glued_maps, spaced_maps)


def unified_tokenizer(vocab_dir: Path):
    """The merged vocabulary's unified student tokenizer (``data.tokenization: unified``)."""
    from transformers import AutoTokenizer

    if not (Path(vocab_dir) / "unified" / "tokenizer.json").is_file():
        raise UserError(
            f"{vocab_dir}/unified: no unified tokenizer; data.tokenization: unified needs vocab.unified_tokenizer: true"
        )
    return AutoTokenizer.from_pretrained(Path(vocab_dir) / "unified")
