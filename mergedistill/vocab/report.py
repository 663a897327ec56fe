"""`vocab inspect`: sizes, overlap between teachers, coverage and fertility per language, merged examples."""

from __future__ import annotations

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
