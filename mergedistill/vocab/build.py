"""Build a merged vocabulary from loaded teachers, a language assignment and corpus text."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from mergedistill.vocab.merge import MergedVocab, merge_vocabs, piece_counts, select_pieces
from mergedistill.vocab.store import save_vocab
from mergedistill.vocab.tokenize import RoutedTokenizer, build_unified_tokenizer


def served_languages(assignment: Mapping[str, Sequence[str]], teacher: str) -> list[str]:
    return sorted(lang for lang, teachers in assignment.items() if teacher in teachers)


def build_vocab(
    teachers: Mapping[str, object],
    assignment: Mapping[str, Sequence[str]],
    texts: Mapping[str, Sequence[str]],
    min_freq: float = 1e-6,
    max_size: int | None = None,
    unified: bool = True,
) -> MergedVocab:
    """``teachers``: name -> Teacher; ``assignment``: language -> teacher names; ``texts``: language -> paragraphs.

    Each teacher's pieces are counted on the text of the languages it serves; a teacher that serves no
    language still has an id map (all -1 but its specials), so its outputs can be mapped if needed.
    """
    counts = {}
    for name, teacher in teachers.items():
        langs = served_languages(assignment, name)
        counts[name] = piece_counts(teacher.tokenizer, [t for lang in langs for t in texts[lang]]) if langs else None
    vocabs = {name: teacher.vocab for name, teacher in teachers.items()}
    served = {name: served_languages(assignment, name) for name in teachers}
    # a teacher serving nothing contributes no pieces: give it zero counts so nothing of it is "required"
    counts = {name: (c if c is not None else piece_counts(teachers[name].tokenizer, [])) for name, c in counts.items()}
    merged = merge_vocabs(vocabs, counts, min_freq=min_freq, max_size=max_size, add_byte_pieces=unified)
    merged.metadata = {
        "size": len(merged),
        "min_freq": min_freq,
        "max_size": max_size,
        "assignment": {lang: list(names) for lang, names in sorted(assignment.items())},
        "teachers": {
            name: {
                "fingerprint": teacher.fingerprint(),
                "family": teacher.vocab.family,
                "lowercase": teacher.vocab.lowercase,
                "vocab_size": len(teacher.vocab),
                "serves": served[name],
                "kept": int((merged.id_maps[name] >= 5).sum()),
                "selected": int(select_pieces(teacher.vocab, counts[name], min_freq).sum()),
            }
            for name, teacher in sorted(teachers.items())
        },
    }
    return merged


def write_vocab_dir(
    directory: str | Path,
    merged: MergedVocab,
    teachers: Mapping[str, object],
    assignment: Mapping[str, Sequence[str]],
    unified: bool = True,
    max_length: int = 512,
) -> None:
    """Vocabulary files + ``routed/`` tokenizer (+ ``unified/`` tokenizer) into ``directory``."""
    directory = Path(directory)
    save_vocab(merged, directory)
    routes = {lang: names[0] for lang, names in assignment.items()}
    used = sorted(set(routes.values()))
    RoutedTokenizer(
        routes, {n: teachers[n].tokenizer for n in used}, {n: merged.id_maps[n] for n in used}, max_length
    ).save(directory / "routed")
    if unified:
        build_unified_tokenizer(merged, max_length).save_pretrained(directory / "unified")
