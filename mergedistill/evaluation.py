"""Evaluation of teachers (and, through the same metrics, students) per language on held-out text."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from mergedistill import mlm_eval
from mergedistill.teachers import Teacher, TeacherCard, load_card

EVAL_SEED = 1234


def load_teacher(spec: str | Path | TeacherCard, **kwargs) -> Teacher:
    if isinstance(spec, TeacherCard):
        return Teacher.load(spec, **kwargs)
    path = Path(spec)
    return Teacher.load(load_card(path) if path.suffix in (".yaml", ".yml") else path, **kwargs)


def teacher_eval_set(teacher: Teacher, texts: Sequence[str]) -> mlm_eval.EvalSet:
    """Held-out sequences; special tokens AND unknown pieces are never scored (predicting <unk> for text
    the tokenizer cannot represent would look like skill)."""
    return mlm_eval.make_eval_set(texts, teacher.encode, set(teacher.tokenizer.all_special_ids), teacher.card.max_length)


def teacher_metrics(teacher: Teacher, texts: Sequence[str], pll_paragraphs: int | None = None) -> dict:
    """acc, ce, pll_per_char, pll_per_word, fertility, unk_rate of ``teacher`` on ``texts``."""
    eval_set = teacher_eval_set(teacher, texts)
    tok = teacher.tokenizer
    out = mlm_eval.masked_token_accuracy(teacher.model, eval_set, tok.mask_token_id, tok.pad_token_id, seed=EVAL_SEED)
    pll_set = eval_set if pll_paragraphs is None else teacher_eval_set(teacher, texts[:pll_paragraphs])
    out.update(mlm_eval.pseudo_log_likelihood(teacher.model, pll_set, tok.mask_token_id, tok.pad_token_id))
    out.update(mlm_eval.fertility(eval_set, tok.unk_token_id))
    return out


def evaluate_teachers(specs, languages=None, all_languages: bool = False, paragraphs: int = 100, corpus_cfg=None) -> list[dict]:
    """One row per (teacher, language): the teacher's own languages, or ``languages``, or all of them."""
    from mergedistill.corpus import load_texts

    teachers = [load_teacher(spec) for spec in specs]
    every = sorted({lang for t in teachers for lang in t.languages})
    rows = []
    for teacher in teachers:
        langs = languages or (every if all_languages else teacher.languages)
        for lang in langs:
            texts = load_texts(lang, "valid", corpus_cfg, limit=paragraphs)
            rows.append({"teacher": teacher.name, "lang": lang, "params": teacher.num_parameters(), **teacher_metrics(teacher, texts)})
    return rows


def format_teacher_table(rows: list[dict]) -> str:
    lines = ["| teacher | language | masked acc | PLL/char | PLL/word | pieces/word | params |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['teacher']} | {r['lang']} | {r['acc']:.3f} | {r['pll_per_char']:.3f} | {r['pll_per_word']:.2f} | "
                     f"{r['fertility']:.2f} | {r['params'] / 1e6:.2f} M |")
    return "\n".join(lines)
