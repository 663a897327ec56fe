"""The unified student tokenizer segments each language as its teacher does, in the student convention
(``▁`` only where the text has a space), decodes back to the text, keeps ``[MASK]`` clean, and gives the
distillation targets the student's convention."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from mergedistill.corpus import load_texts
from mergedistill.vocab.segment import Convention, faithful_pieces, unified_pretokenizer
from tests.conftest import ASSIGNMENT

CORPUS_LANGUAGES = ("en", "de", "ru", "ja", "fr", "es", "zh")


@pytest.fixture(scope="module")
def unified(merged):
    from mergedistill.vocab.tokenize import build_unified_tokenizer

    return build_unified_tokenizer(merged)


@pytest.fixture(scope="module")
def held_out(corpus_texts):
    return {lang: corpus_texts[lang]["valid"] for lang in ASSIGNMENT}


def test_teacher_pieces_in_the_student_convention():
    # WordPiece "Click (here)." -> ▁Click ▁( ▁here ▁) ▁. ; only the first two follow a space
    text = "Click (here)."
    offsets = [(0, 5), (6, 7), (7, 11), (11, 12), (12, 13)]
    pieces = faithful_pieces(text, offsets, ["▁Click", "▁(", "▁here", "▁)", "▁."])
    assert [p[2] for p in pieces] == ["▁Click", "▁(", "here", ")", "."]
    # an isolated CJK character after another one is glued; a bare SentencePiece ▁ keeps the mark for itself
    assert [p[2] for p in faithful_pieces("中文", [(0, 1), (1, 2)], ["▁中", "▁文"])] == ["▁中", "文"]
    assert [p[2] for p in faithful_pieces("a Sub", [(0, 1), (1, 3), (2, 5)], ["▁a", "▁", "Sub"])] == ["▁a", "▁", "Sub"]


def test_pretokenizer_splits_what_the_teachers_split():
    split = unified_pretokenizer(Convention(han="kana-free", punct="kana-free")).pre_tokenize_str
    assert [s for s, _ in split("▁Click▁(here).")] == ["▁Click", "▁(", "here", ")."]
    assert [s for s, _ in split("▁中文，好")] == ["▁中", "文", "，", "好"]  # Chinese: every ideograph, as WordPiece
    assert [s for s, _ in split("▁表示されます。")] == ["▁表示されます。"]  # Japanese (kana): left to the scores


def test_kanji_words_with_japanese_forms_stay_whole():
    """A kana-free whitespace word is Chinese (Han isolated, as WordPiece does) unless it holds a Han character
    that only the Japanese text uses: 数値 (値, Japanese) stays one pre-token for the SentencePiece teacher's
    ``▁数値``, 数值 (值, Chinese) is cut into ideographs."""
    from mergedistill.tokenizer_train import train_tokenizer
    from mergedistill.vocab.segment import choose_convention

    ja = ["数値を入力します。", "統合開発環境で関数を表示します。", "値の範囲をここで指定します。"] * 3
    zh = ["输入数值。", "在集成开发环境中显示函数。", "在这里指定数值范围。"] * 3
    en = ["Enter a value (a number)."] * 3
    teachers = {
        "ja": train_tokenizer("unigram", ja, vocab_size=60),
        "zh": train_tokenizer("wordpiece", zh + en, vocab_size=80),
        "en": train_tokenizer("wordpiece", zh + en, vocab_size=80),
    }
    convention = choose_convention(teachers, {"ja": ja, "zh": zh, "en": en})
    assert (convention.han, convention.punct) == ("kana-free", "kana-free")
    assert {"値", "統", "発", "関"} <= set(convention.japanese_han) and not {"数", "开", "值"} & set(
        convention.japanese_han
    )  # 数 is in both, 开/值 only in Chinese
    split = unified_pretokenizer(convention).pre_tokenize_str
    assert [s for s, _ in split("▁数値▁統合開発環境")] == ["▁数値", "▁統合開発環境"]
    assert [s for s, _ in split("▁数值▁(数)")] == ["▁数", "值", "▁(", "数", ")"]
    assert [s for s, _ in split("▁値以上)")] == ["▁値以上)"]  # punctuation stays too, as in the Japanese teacher


def test_every_character_a_teacher_spells_alone_has_a_piece(teachers, corpus_texts):
    """A character the teacher has as a piece of its own but the vocabulary text lacks (a kanji of the held-out
    text only) is a student piece too, not three byte-fallback pieces the teacher never produces."""
    from mergedistill.vocab.build import build_vocab
    from mergedistill.vocab.tokenize import build_unified_tokenizer

    few = {lang: corpus_texts[lang]["train"][:30] for lang in ASSIGNMENT}
    unified = build_unified_tokenizer(build_vocab(teachers, ASSIGNMENT, few))
    seen = set("".join(few["ja"]))
    unseen = sorted(
        {k.removeprefix("▁") for k in teachers["xlm-roberta"].vocab.keys if k and len(k.removeprefix("▁")) == 1} - seen
    )
    unseen = [c for c in unseen if "\u3040" <= c <= "\u9fff"]  # kana and kanji: not in German text, whose
    assert len(unseen) > 20  # byte-level teacher spells in bytes what it lacks (the student follows it there)
    for char in unseen:
        pieces = unified.tokenize("表" + char)
        assert not any(p.startswith("<0x") for p in pieces), (char, pieces)


def test_unified_segments_held_out_words_as_the_teachers(teachers, merged, unified, held_out):
    from mergedistill.vocab.diagnostics import agreement_rows

    rows = agreement_rows(
        held_out, {lang: (names[0], teachers[names[0]]) for lang, names in ASSIGNMENT.items()}, unified, merged
    )
    for row in rows:  # tiny 1,200-piece four-language teachers, fitted on 200 paragraphs a language (the demo: README)
        # a Japanese "word" (between spaces) is a whole clause: one differing piece anywhere in it counts
        assert row["word_agreement"] >= (0.45 if row["lang"] == "ja" else 0.7) and row["paragraph_agreement"] > 0.1, row
        assert row["kd_coverage"] >= 0.8 and row["byte_fallback"] < 0.1, (
            row
        )  # ja: characters the tiny teacher lacks too
    assert merged.metadata["unified"]["fit"]["right_after"] > merged.metadata["unified"]["fit"]["right_before"]


def test_fitted_scores_beat_plain_counts(teachers, merged, held_out):
    """The fit is what makes Viterbi follow the teachers: the same pieces scored by corpus counts alone agree less."""
    from dataclasses import replace

    from mergedistill.vocab.diagnostics import agreement_rows
    from mergedistill.vocab.tokenize import build_unified_tokenizer

    routed = {lang: (names[0], teachers[names[0]]) for lang, names in ASSIGNMENT.items()}
    fitted = agreement_rows(held_out, routed, build_unified_tokenizer(merged), merged)
    counts_only = agreement_rows(held_out, routed, build_unified_tokenizer(replace(merged, scores=np.zeros(0))), merged)
    assert np.mean([r["word_agreement"] for r in fitted]) > np.mean([r["word_agreement"] for r in counts_only]) + 0.02


def test_mask_takes_the_space_before_it(unified, tmp_path):
    unified.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    for tok in (unified, AutoTokenizer.from_pretrained(tmp_path)):
        pieces = tok.convert_ids_to_tokens(tok("Click [MASK] to save.")["input_ids"])
        mask = pieces.index("[MASK]")
        assert pieces[mask - 1] != "▁" and "▁" not in pieces and pieces[mask + 1] == "▁to", pieces
        assert pieces[1].startswith("▁C") and pieces[-2:] == [".", "[SEP]"], pieces
        assert tok.decode(tok("Click [MASK] to save.")["input_ids"], skip_special_tokens=True) == "Click to save."


def test_round_trip_in_every_corpus_language(unified):
    for lang in CORPUS_LANGUAGES:
        for text in load_texts(lang, "valid", limit=30):
            ids = unified(text)["input_ids"]
            assert unified.decode(ids, skip_special_tokens=True) == text, (lang, text)


def test_kd_targets_in_the_student_convention(teachers, texts, merged, unified):
    """At every distillation position the teacher's own piece, mapped as the targets are, is the student's gold
    piece for nearly all of them: WordPiece ``▁.`` / ``▁中`` serve the student's ``.`` / ``中``, a SentencePiece
    ``X`` after a bare ``▁`` the student's ``▁X``."""
    from mergedistill.cache import to_student
    from mergedistill.data import DataPlan, make_stream, teacher_view

    for lang, (name,) in sorted(ASSIGNMENT.items()):
        stream = make_stream(
            lang, teachers[name], texts[lang][:120], merged.id_maps[name], max_length=64, student_tokenizer=unified
        )
        plan = DataPlan([stream], batch_size=8, n_batches=8, seed=0)
        right = glued_right = spaced_right = total = 0
        for i in range(8):
            batch = plan.batch(i)
            queried = teacher_view(batch)[2]
            gold_teacher = batch["teacher_labels"][queried][:, None]
            gold_student = batch["labels"][batch["kd_positions"]]
            mapped, _ = to_student(
                gold_teacher,
                torch.zeros(gold_teacher.shape),
                merged.id_maps[name],
                batch,
                merged.glued_maps[name],
                merged.spaced_maps[name],
            )
            right += int((mapped[:, 0] == gold_student).sum())
            glued_right += int((mapped[:, 0] == gold_student)[batch["teacher_glued"][queried]].sum())
            spaced_right += int((mapped[:, 0] == gold_student)[batch["teacher_spaced"][queried]].sum())
            total += len(gold_student)
        assert total > 50 and right / total >= 0.95, (lang, right, total)
        if teachers[name].vocab.family == "wordpiece":
            assert glued_right > 0.05 * total, lang  # punctuation after a word: only the glued map serves it
        if teachers[name].vocab.family == "sentencepiece":
            assert spaced_right > 0, lang  # a word the teacher cuts as ▁ + X: only the spaced map serves it


def test_autotokenizer_and_fill_mask_equal_training_without_mergedistill(unified, merged, tmp_path, held_out):
    """What users load (a fresh interpreter, transformers only) gives the ids the student was trained on, and
    ``pipeline("fill-mask")`` predicts what the student predicts on those training ids with one word masked."""
    from mergedistill.config import StudentConfig
    from mergedistill.data import aligned_paragraphs
    from mergedistill.student import build_student

    student = build_student(
        StudentConfig(arch="deberta-v2", layers=1, hidden=32, heads=2, intermediate=64, max_position=130), len(merged)
    ).eval()
    student.save_pretrained(tmp_path / "student")
    unified.save_pretrained(tmp_path / "student")
    cases = {}
    for lang, texts in held_out.items():
        texts = [t for t in texts if len(unified(t)["input_ids"]) < 120][:8]
        for text, (s_ids, *_) in zip(texts, aligned_paragraphs(texts, unified, unified)):
            trained = [2] + list(s_ids) + [3]
            masked_text, expected = text, None
            offsets = unified(text, return_offsets_mapping=True)["offset_mapping"]
            pieces = unified.convert_ids_to_tokens(trained)
            for j in range(2, len(pieces) - 2):  # a whole word (a ▁ piece followed by one): mask it
                if (
                    pieces[j].startswith("▁")
                    and len(pieces[j]) > 1
                    and pieces[j + 1].startswith("▁")
                    and offsets[j][0] > 0
                ):
                    start, end = offsets[j]
                    masked_text = text[:start].rstrip(" ") + " [MASK]" + text[end:]
                    ids = trained[:j] + [4] + trained[j + 1 :]
                    with torch.no_grad():
                        top = int(student(torch.tensor([ids])).logits[0, j].argmax())
                    expected = (ids, top)
                    break
            cases.setdefault(lang, []).append(
                {"text": text, "trained": trained, "masked": masked_text, "expected": expected}
            )
    (tmp_path / "in.json").write_text(json.dumps(cases), encoding="utf-8")
    script = (
        "import json, sys; from transformers import AutoTokenizer, pipeline\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1]); fill = pipeline('fill-mask', model=sys.argv[1], tokenizer=tok)\n"
        "cases = json.load(open(sys.argv[2], encoding='utf-8')); out = {}\n"
        "for lang, items in cases.items():\n"
        "    out[lang] = [[tok(c['text'])['input_ids'], tok(c['masked'])['input_ids'], fill(c['masked'], top_k=1)[0]['token'] if c['expected'] else None] for c in items]\n"
        "assert 'mergedistill' not in sys.modules\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "student"), str(tmp_path / "in.json")],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PATH": ""},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    filled = 0
    for lang, items in cases.items():
        for case, (ids, masked_ids, top) in zip(items, loaded[lang]):
            assert ids == case["trained"], lang
            if case["expected"] is not None:
                assert masked_ids == case["expected"][0] and top == case["expected"][1], (lang, case["masked"])
                filled += 1
    assert filled >= 10


def test_model_card_shows_how_to_load_what_the_student_was_trained_on():
    from mergedistill.config import ExperimentConfig, from_dict
    from mergedistill.export import model_card

    assignment = {"en": ["bert"], "ja": ["xlm-roberta"]}
    cards = {"teachers": {"cards": ["t.yaml"]}}
    routed = model_card(
        from_dict(ExperimentConfig, {**cards, "data": {"tokenization": "routed"}}), {"rows": []}, assignment
    )
    unified = model_card(
        from_dict(ExperimentConfig, {**cards, "data": {"tokenization": "unified"}}), {"rows": []}, assignment
    )
    assert "load_routed_tokenizer('PATH')" in routed and "pipeline('fill-mask'" not in routed
    assert "pipeline('fill-mask'" in unified and "load_routed_tokenizer" not in unified


def test_the_vocab_report_says_why_a_language_misses_the_goal():
    from types import SimpleNamespace

    from mergedistill.vocab.diagnostics import agreement_table
    from mergedistill.vocab.segment import convention_keys, disagreement_cause

    wordpiece = SimpleNamespace(family="wordpiece", keys=["▁Click", "▁.", "ick", None])
    assert convention_keys(wordpiece) == {"▁Click", "▁.", "ick", "Click", "."}  # "save." gives a bare "."
    student = {"▁", "Sub", "▁Sub", "▁Text", ":", "▁Text:", "▁Dialog", "▁Dialoge", "r", "er", "<0xE6>"}
    teacher = {"▁", "Sub", "▁Text:", "▁Dialog", "▁Dialoge", "r", "er", "▁Januar"}
    # "Sub" in a Japanese paragraph: the SentencePiece teacher's ▁ + Sub, the unified ▁Sub of the English teacher
    assert disagreement_cause([(0, 3, "▁Sub")], [(0, 0, "▁"), (0, 3, "Sub")], teacher, student, {3}) == "foreign"
    assert disagreement_cause([(0, 1, "<0xE6>")], [(0, 1, "権")], teacher, student, {1}) == "bytes"
    assert disagreement_cause([(0, 2, "▁J")], [(0, 6, "▁Januar")], teacher, student, {6}) == "missing"
    assert disagreement_cause([(0, 4, "▁Text"), (4, 5, ":")], [(0, 5, "▁Text:")], teacher, student, {4, 5}) == "cut"
    ours, theirs = [(0, 7, "▁Dialoge"), (7, 8, "r")], [(0, 6, "▁Dialog"), (6, 8, "er")]
    assert disagreement_cause(ours, theirs, teacher, student, {8}) == "scores"

    row = {
        "teacher": "demo-ja",
        "paragraphs": 10,
        "paragraph_agreement": 0.5,
        "byte_fallback": 0.0,
        "kd_paired": 0.9,
        "kd_coverage": 0.9,
        "words": 250,
        "example": ["Sub", ["▁Sub"], ["▁", "Sub"]],
    }
    ja = {**row, "lang": "ja", "word_agreement": 0.672, "causes": {"foreign": 55, "cut": 27}, "latin_words": [62, 109]}
    en = {**row, "lang": "en", "word_agreement": 0.97, "causes": {"foreign": 7}, "latin_words": [7, 250]}
    table = agreement_table([en, ja])
    assert "**ja** misses 95% word agreement (0.6720): 82 of 250 words differ from demo-ja: 55 a piece the" in table
    assert "62 of them hold Latin letters or digits (109 words do; the words without any agree on 0.858)" in table
    assert "`Sub`: unified `▁Sub`, teacher `▁ Sub`" in table and "**en**" not in table
    assert "below the goal" not in agreement_table([en])
