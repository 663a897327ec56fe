"""`vocab inspect`: sizes, overlap between teachers, coverage and fertility per language, merged examples."""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

from mergedistill.vocab.merge import MergedVocab


def overlap_table(vocab: MergedVocab) -> str:
    """Pairwise shared student pieces between teachers (kept pieces only), as a Markdown table."""
    names = sorted(vocab.id_maps)
    kept = {n: set(np.asarray(vocab.id_maps[n])[np.asarray(vocab.id_maps[n]) >= 5].tolist()) for n in names}
    lines = [
        "| teacher | kept pieces | " + " | ".join(f"∩ {n}" for n in names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for a in names:
        lines.append(f"| {a} | {len(kept[a])} | " + " | ".join(str(len(kept[a] & kept[b])) for b in names) + " |")
    return "\n".join(lines)


def summary(vocab: MergedVocab) -> str:
    meta = vocab.metadata
    lines = [
        f"student vocabulary: {len(vocab)} pieces (5 specials), min_freq={meta.get('min_freq')}, max_size={meta.get('max_size')}"
    ]
    for name, info in sorted(meta.get("teachers", {}).items()):
        lines.append(
            f"  {name}: {info['family']}, {info['vocab_size']} pieces, serves {','.join(info['serves']) or '-'}, "
            f"{info['kept']} kept"
        )
    return "\n".join(lines)


def merged_examples(vocab: MergedVocab, teacher_tokenizers: Mapping[str, object], limit: int = 8) -> list[str]:
    """Student pieces that come from two or more teachers, with each teacher's original spelling."""
    names = sorted(vocab.id_maps)
    owners: dict[int, list[str]] = {}
    for name in names:
        id_map = np.asarray(vocab.id_maps[name])
        for teacher_id in np.flatnonzero(id_map >= 5):
            owners.setdefault(int(id_map[teacher_id]), []).append(
                f"{name}:{teacher_tokenizers[name].convert_ids_to_tokens(int(teacher_id))}"
            )
    shared = [sid for sid, who in owners.items() if len({w.split(":")[0] for w in who}) > 1]
    interesting = sorted(shared, key=lambda sid: (-len(vocab.pieces[sid]), sid))[:limit]
    return [f"{vocab.pieces[sid]!r} <- " + ", ".join(owners[sid]) for sid in interesting]


def fertility_table(rows: Sequence[dict]) -> str:
    """rows: {lang, tokenizer, fertility, unk_rate, coverage} -> Markdown."""
    lines = ["| language | tokenizer | pieces/word | unknown rate |", "|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['lang']} | {r['tokenizer']} | {r['fertility']:.2f} | {r['unk_rate']:.4f} |")
    return "\n".join(lines)


def fertility_rows(
    texts: Mapping[str, Sequence[str]], teachers: Mapping[str, object], unified_tokenizer=None
) -> list[dict]:
    """Pieces per whitespace word for each teacher on its languages and for the unified tokenizer on all."""
    rows = []
    for lang, lang_texts in sorted(texts.items()):
        words = max(sum(len(t.split()) for t in lang_texts), 1)
        candidates = [(name, t.tokenizer) for name, t in sorted(teachers.items()) if lang in t.languages]
        if unified_tokenizer is not None:
            candidates.append(("unified student", unified_tokenizer))
        for name, tokenizer in candidates:
            ids = tokenizer(list(lang_texts), add_special_tokens=False)["input_ids"]
            pieces = sum(len(x) for x in ids)
            unknown = sum(x.count(tokenizer.unk_token_id) for x in ids)
            rows.append(
                {"lang": lang, "tokenizer": name, "fertility": pieces / words, "unk_rate": unknown / max(pieces, 1)}
            )
    return rows


def agreement_rows(
    texts: Mapping[str, Sequence[str]], routed: Mapping[str, tuple[str, object]], unified_tokenizer, vocab: MergedVocab
) -> list[dict]:
    """Per language (``routed``: language -> (teacher name, Teacher)), on ``texts``: how often the unified
    tokenizer gives the teacher's pieces (student convention, ``vocab.segment``) per whitespace word and per
    paragraph, its byte-fallback rate, and the KD target coverage: the share of student pieces whose character
    span is one teacher piece or a teacher's ``▁`` ``X`` (they get a target: ``align.spaced``), and of those where
    the teacher's piece (``X`` there) maps (``glued_maps`` where no space precedes, ``spaced_maps`` at ``X``) to the
    student's piece, i.e. where the teacher's gold is the student's gold."""
    from collections import Counter

    from mergedistill.align import one_to_one, served, spaced
    from mergedistill.data import aligned_paragraphs, teacher_bare
    from mergedistill.vocab.segment import (
        convention_keys,
        disagreement_cause,
        teacher_faithful,
        unified_pieces,
        word_pieces,
    )

    backend = unified_tokenizer.backend_tokenizer
    normalize = backend.normalizer.normalize_str
    starts_word = np.array([p.startswith("▁") for p in vocab.pieces])
    student_keys = set(vocab.pieces)
    rows = []
    for lang, lang_texts in sorted(texts.items()):
        name, teacher = routed[lang]
        lang_texts = list(lang_texts)
        theirs = teacher_faithful(teacher.tokenizer, teacher.vocab, lang_texts, normalize)
        teacher_keys = convention_keys(teacher.vocab)
        encodings = unified_tokenizer(lang_texts, add_special_tokens=False, return_offsets_mapping=True).encodings
        words = agreed = paragraphs = pieces = byte_pieces = 0
        causes, latin, example = Counter(), [0, 0], None  # latin: [differing, all] words with Latin letters/digits
        for text, encoding, teacher_pieces in zip(lang_texts, encodings, theirs):
            ours = unified_pieces(text, encoding)
            cuts = {b for _, (_, b) in backend.pre_tokenizer.pre_tokenize_str(normalize(text))}
            for (word, a), (_, b) in zip(word_pieces(text, ours), word_pieces(text, teacher_pieces)):
                words += 1
                has_latin = bool(re.search(r"[A-Za-z0-9]", word))
                latin[1] += has_latin
                if a == b:
                    agreed += 1
                    continue
                latin[0] += has_latin
                causes[disagreement_cause(a, b, teacher_keys, student_keys, cuts)] += 1
                if example is None and len(word) <= 40:
                    example = [word, [p[2] or "[UNK]" for p in a], [p[2] or "[UNK]" for p in b]]
            paragraphs += ours == teacher_pieces
            pieces += len(ours)
            byte_pieces += sum(t.startswith("<0x") and len(t) == 6 for t in encoding.tokens)
        id_map, glued = np.asarray(vocab.id_maps[name]), np.asarray(vocab.glued_maps.get(name, vocab.id_maps[name]))
        spaced_ids, bare_ids = (
            np.asarray(vocab.spaced_maps.get(name, np.full(len(id_map), -1))),
            teacher_bare(teacher.vocab),
        )
        covered = paired = total = 0
        for s_ids, t_ids, s_groups, t_groups in aligned_paragraphs(lang_texts, unified_tokenizer, teacher.tokenizer):
            s_ids, t_ids = np.asarray(s_ids), np.asarray(t_ids)
            pairs, bare = one_to_one(s_groups, t_groups), bare_ids[t_ids]
            spaced_groups = spaced(s_groups, t_groups, starts_word[s_ids], bare)
            s_at = s_ids[np.isin(s_groups, np.union1d(pairs, spaced_groups))]
            t_served = served(t_groups, pairs, spaced_groups, bare)
            t_at, t_spaced = t_ids[t_served], np.isin(t_groups, spaced_groups)[t_served]
            mapped = np.where(t_spaced, spaced_ids[t_at], np.where(starts_word[s_at], id_map[t_at], glued[t_at]))
            covered, paired, total = covered + int((mapped == s_at).sum()), paired + len(s_at), total + len(s_ids)
        rows.append(
            {
                "lang": lang,
                "teacher": name,
                "word_agreement": agreed / max(words, 1),
                "paragraph_agreement": paragraphs / max(len(lang_texts), 1),
                "paragraphs": len(lang_texts),
                "byte_fallback": byte_pieces / max(pieces, 1),
                "kd_paired": paired / max(total, 1),
                "kd_coverage": covered / max(total, 1),
                "words": words,
                "causes": dict(causes.most_common()),
                "latin_words": latin,
                "example": example,
            }
        )
    return rows


def agreement_table(rows: Sequence[dict]) -> str:
    lines = [
        "| language | teacher | words as the teacher segments them | paragraphs | byte-fallback pieces "
        "| student pieces with a teacher target | ... where the teacher's piece is the student's |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['lang']} | {r['teacher']} | {r['word_agreement']:.4f} | {r['paragraph_agreement']:.3f} ({round(r['paragraph_agreement'] * r['paragraphs'])}/{r['paragraphs']}) "
            f"| {r['byte_fallback']:.4f} | {r['kd_paired']:.3f} | {r['kd_coverage']:.3f} |"
        )
    return "\n".join(lines + agreement_misses(rows))


def agreement_misses(rows: Sequence[dict], goal: float = 0.95) -> list[str]:
    """One line per language below ``goal`` word agreement: how many words differ, why (``segment.CAUSES``),
    how many of them hold Latin letters or digits (code, English, numbers: where teachers of other languages
    segment the same string otherwise), and one example."""
    from mergedistill.vocab.segment import CAUSES

    lines = []
    for r in rows:
        if r["word_agreement"] >= goal or "causes" not in r:
            continue
        differ = r["words"] - round(r["word_agreement"] * r["words"])
        why = "; ".join(f"{n} {CAUSES[key]}" for key, n in r["causes"].items())
        line = (
            f"- **{r['lang']}** misses {goal:.0%} word agreement ({r['word_agreement']:.4f}): {differ} of {r['words']} "
            f"words differ from {r['teacher']}: {why}."
        )
        latin_differ, latin_all = r["latin_words"]
        if latin_all < r["words"] / 2:  # a language not written in Latin letters: are code and numbers the cost?
            others = 1 - (differ - latin_differ) / max(r["words"] - latin_all, 1)
            line += (
                f" {latin_differ} of them hold Latin letters or digits ({latin_all} words do; the words without "
                f"any agree on {others:.3f})."
            )
        if r["example"]:
            word, ours, theirs = r["example"]
            line += f" E.g. `{word}`: unified `{' '.join(ours)}`, teacher `{' '.join(theirs)}`."
        lines.append(line)
    return ["", "Languages below the goal, and why:", "", *lines] if lines else []
