"""Build a merged vocabulary from loaded teachers, a language assignment and corpus text."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mergedistill.vocab.merge import SPECIAL_IDS, SPECIAL_TOKENS, MergedVocab, merge_vocabs, piece_counts, select_pieces
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
    log=None,
    min_freq_by_teacher: Mapping[str, float] | None = None,
) -> MergedVocab:
    """``teachers``: name -> Teacher; ``assignment``: language -> teacher names; ``texts``: language -> paragraphs;
    ``min_freq_by_teacher``: teacher name -> its own ``min_freq`` (``vocab.min_freq_by_teacher``).

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
    fitted = unified_pieces_and_targets(teachers, assignment, texts) if unified else None
    merged = merge_vocabs(
        vocabs,
        counts,
        min_freq=min_freq,
        max_size=max_size,
        add_byte_pieces=unified,
        extra_counts=fitted["counts"] if fitted else None,
        min_freq_by_teacher=min_freq_by_teacher,
    )
    unified_meta = {}
    if fitted:
        from mergedistill.vocab.fit import fit_scores

        merged.scores, stats = fit_scores(
            merged.pieces,
            fitted["counts"],
            fitted["targets"],
            len(SPECIAL_TOKENS),
            SPECIAL_IDS["unk"],
            priors=fitted["priors"],
            log=log,
        )
        merged.glued_maps = {name: glued_map(name, teachers[name].vocab, merged) for name in teachers}
        merged.spaced_maps = {name: spaced_map(name, teachers[name].vocab, merged) for name in teachers}
        unified_meta = {"unified": {**fitted["convention"].to_dict(), "fit": stats}}
    merged.metadata = {
        "size": len(merged),
        "min_freq": min_freq,
        **({"min_freq_by_teacher": dict(sorted(min_freq_by_teacher.items()))} if min_freq_by_teacher else {}),
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
                "selected": int(
                    select_pieces(teacher.vocab, counts[name], (min_freq_by_teacher or {}).get(name, min_freq)).sum()
                ),
            }
            for name, teacher in sorted(teachers.items())
        },
        **unified_meta,
    }
    return merged


def unified_pieces_and_targets(
    teachers: Mapping[str, object], assignment: Mapping[str, Sequence[str]], texts: Mapping[str, Sequence[str]]
) -> dict:
    """What the unified tokenizer is fitted on: each language's training text segmented by its (first) teacher
    in the student convention: piece counts, (pre-token, pieces) targets, and the chosen ``Convention``."""
    from collections import Counter

    from mergedistill.vocab.fit import majority_targets
    from mergedistill.vocab.segment import (
        choose_convention,
        pretoken_targets,
        teacher_faithful,
        unified_normalizer,
        unified_pretokenizer,
    )

    routed = {lang: teachers[names[0]] for lang, names in sorted(assignment.items())}
    convention = choose_convention({lang: t.tokenizer for lang, t in routed.items()}, texts)
    normalizer, pretokenizer = unified_normalizer(convention), unified_pretokenizer(convention)
    counts, pairs, priors = Counter(), [], {}
    for lang, teacher in routed.items():
        priors.update(unigram_log_probs(teacher))
        lang_texts = list(texts[lang])
        for text, pieces in zip(
            lang_texts, teacher_faithful(teacher.tokenizer, teacher.vocab, lang_texts, normalizer.normalize_str)
        ):
            counts.update(p[2] for p in pieces if p[2] is not None)
            pairs += pretoken_targets(text, pretokenizer.pre_tokenize_str(normalizer.normalize_str(text)), pieces)
    # every character a teacher spells on its own (its alphabet), seen in training text or not, else a rare one
    # falls back to bytes later; bare (no ▁: a new word-start piece would change how common words segment).
    # Not a character that a byte-fallback teacher spells in bytes in its language's text: the student follows it.
    alphabets = {lang: teacher_alphabet(teacher) for lang, teacher in routed.items()}
    in_bytes = set()
    for lang, teacher in routed.items():
        if spells_bytes(teacher):
            in_bytes |= set("".join(texts[lang])) - alphabets[lang]
    for char in sorted(set().union(*alphabets.values()) - in_bytes):
        counts.setdefault(char, 0)
    return {"counts": counts, "targets": majority_targets(pairs), "convention": convention, "priors": priors}


def teacher_alphabet(teacher) -> set[str]:
    """The characters a teacher has as a piece of their own (word-initial or not)."""
    return {k.removeprefix("▁") for k in teacher.vocab.keys if k is not None and len(k.removeprefix("▁")) == 1}


def spells_bytes(teacher) -> bool:
    """A teacher with ``<0xHH>`` pieces (byte fallback, byte-level BPE) for characters outside its alphabet."""
    from mergedistill.vocab.fit import is_byte_piece

    return any(k is not None and is_byte_piece(k) for k in teacher.vocab.keys)


def unigram_log_probs(teacher) -> dict[str, float]:
    """key -> the teacher's own log-probability, for a Unigram (SentencePiece) teacher: with them Viterbi
    starts from that teacher's segmentation. Empty for other models."""
    import json

    model = json.loads(teacher.tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "Unigram":
        return {}
    return {key: float(score) for key, (_, score) in zip(teacher.vocab.keys, model["vocab"]) if key is not None}


def glued_map(name: str, vocab, merged: MergedVocab) -> np.ndarray:
    """Teacher id -> student id at a position no space precedes: a WordPiece word-initial piece (key ``▁.``,
    ``▁中``) there is the student's bare piece (``.``, ``中``), or -1 when the student has none. Other families
    mark word starts only at spaces, as the student does: their map is the plain id map."""
    glued = np.array(merged.id_maps[name], dtype=np.int32)
    if vocab.family != "wordpiece":
        return glued
    student_id = {piece: i for i, piece in enumerate(merged.pieces)}
    for teacher_id, key in enumerate(vocab.keys):
        if key is not None and key.startswith("▁") and len(key) > 1:
            glued[teacher_id] = student_id.get(key[1:], -1)
    return glued


def add_missing_spaced_maps(merged: MergedVocab, teachers) -> None:
    """A vocabulary built before it stored spaced maps: derive each teacher's (``spaced_map``) in place."""
    for name, teacher in teachers.items():
        merged.spaced_maps.setdefault(name, spaced_map(name, teacher.vocab, merged))


def spaced_map(name: str, vocab, merged: MergedVocab) -> np.ndarray:
    """Teacher id -> student id at the ``X`` of a teacher's ``▁`` ``X`` that spans the student's ``▁X``
    (``align.spaced``): a piece with no word marker (key ``X``) there is the student's ``▁X``, or -1 when the
    student has none; a word-initial key keeps the plain id map."""
    spaced = np.array(merged.id_maps[name], dtype=np.int32)
    student_id = {piece: i for i, piece in enumerate(merged.pieces)}
    for teacher_id, key in enumerate(vocab.keys):
        if key is not None and not key.startswith("▁"):
            spaced[teacher_id] = student_id.get("▁" + key, -1)
    return spaced


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
    used = sorted(
        {name for names in assignment.values() for name in names}
    )  # export re-routes to the teacher evaluated through
    RoutedTokenizer(
        routes, {n: teachers[n].tokenizer for n in used}, {n: merged.id_maps[n] for n in used}, max_length
    ).save(directory / "routed")
    if unified:
        build_unified_tokenizer(merged, max_length).save_pretrained(directory / "unified")
