import filecmp
import subprocess
import sys

import numpy as np
import pytest
import torch

from mergedistill.errors import UserError
from mergedistill.io import atomic_dir
from mergedistill.pieces import NormalizedVocab
from mergedistill.vocab import SPECIAL_IDS, load_routed_tokenizer, load_vocab, map_topk, merge_vocabs
from mergedistill.vocab.build import build_vocab, write_vocab_dir
from mergedistill.vocab.diagnostics import fertility_rows, merged_examples, overlap_table
from tests.conftest import ASSIGNMENT


def test_teacher_ids_to_student_ids_to_pieces_round_trip(merged, teachers, texts, corpus_texts):
    for lang, (name,) in ASSIGNMENT.items():
        teacher = teachers[name]
        for text in texts[lang][:100] + corpus_texts[lang]["valid"][:20]:
            ids = teacher.tokenizer(text)["input_ids"]
            student = merged.map_ids(name, ids)
            in_corpus = text in texts[lang]
            for teacher_id, student_id in zip(ids, student):
                key = teacher.vocab.keys[teacher_id]
                if key is None:  # special token -> canonical special id
                    role = [r for r, i in teacher.vocab.roles.items() if i == teacher_id][0]
                    assert student_id == SPECIAL_IDS[role]
                elif in_corpus or merged.id_maps[name][teacher_id] >= 0:
                    assert merged.pieces[student_id] == key  # same piece back
                else:
                    assert student_id == SPECIAL_IDS["unk"]  # held-out text may meet a pruned piece


def test_id_map_is_injective_on_kept_pieces_and_specials_are_canonical(merged, teachers):
    for name, id_map in merged.id_maps.items():
        kept = id_map[id_map >= 5]
        assert len(kept) == len(set(kept.tolist()))
        for role, teacher_id in teachers[name].vocab.roles.items():
            assert id_map[teacher_id] == SPECIAL_IDS[role]
    assert merged.pieces[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def test_conventions_meet_in_one_student_piece():
    wp = NormalizedVocab("wordpiece", (None, "▁the", "ing"), {"unk": 0}, False)  # [UNK] the ##ing
    sp = NormalizedVocab("sentencepiece", (None, "ing", "▁the", "▁zug"), {"unk": 0}, False)  # <unk> ing ▁the ▁zug
    bl = NormalizedVocab("bytelevel", (None, "▁the", "<0xE3><0x81>"), {"unk": 0}, False)  # <unk> Ġthe ãģ
    merged = merge_vocabs({"wp": wp, "sp": sp, "bl": bl})
    assert merged.id_maps["wp"][1] == merged.id_maps["sp"][2] == merged.id_maps["bl"][1]  # ▁the
    assert merged.id_maps["wp"][2] == merged.id_maps["sp"][1]  # ##ing == ing
    assert len(merged) == 5 + 4  # ▁the, ing, ▁zug, <0xE3><0x81>


def test_pruning_and_cap():
    vocab = NormalizedVocab("sentencepiece", (None, "▁a", "▁b", "▁c", "▁d"), {"unk": 0}, False)
    counts = {"t": np.array([0, 10, 5, 0, 1])}
    merged = merge_vocabs({"t": vocab}, counts, min_freq=1e-6)
    assert merged.id_maps["t"].tolist()[1:] == [5, 6, -1, 7]  # unseen ▁c dropped; order by count
    with pytest.raises(UserError, match="vocab.max_size=6"):
        merge_vocabs({"t": vocab}, counts, max_size=6)  # 3 required pieces + 5 specials do not fit
    everything = merge_vocabs({"t": vocab}, {"t": None})
    assert (everything.id_maps["t"][1:] >= 0).all()


def test_min_freq_drops_pieces_rarer_than_the_threshold():
    vocab = NormalizedVocab("sentencepiece", (None, "▁a", "▁b", "▁c", "▁d"), {"unk": 0}, False)
    counts = {"t": np.array([0, 90, 9, 0, 1])}  # probabilities 0.9, 0.09, 0, 0.01
    assert merge_vocabs({"t": vocab}, counts, min_freq=0.05).id_maps["t"].tolist()[1:] == [
        5,
        6,
        -1,
        -1,
    ]  # ▁d occurs, but rarer
    assert merge_vocabs({"t": vocab}, counts, min_freq=0.01).id_maps["t"].tolist()[1:] == [5, 6, -1, 7]
    assert (merge_vocabs({"t": vocab}, counts, min_freq=0.0).id_maps["t"][1:] >= 0).all()  # 0 keeps even unseen ▁c


def test_min_freq_by_teacher_sets_one_teachers_own_threshold():
    german = NormalizedVocab("sentencepiece", (None, "▁a", "▁rare", "▁unseen"), {"unk": 0}, False)
    other = NormalizedVocab("sentencepiece", (None, "▁b", "▁odd"), {"unk": 0}, False)
    counts = {"de": np.array([0, 999, 1, 0]), "multi": np.array([0, 999, 1])}  # ▁rare / ▁odd: 0.001
    plain = merge_vocabs({"de": german, "multi": other}, counts, min_freq=0.01)
    assert "▁rare" not in plain.pieces and "▁odd" not in plain.pieces
    kept = merge_vocabs({"de": german, "multi": other}, counts, min_freq=0.01, min_freq_by_teacher={"de": 0.0})
    assert {"▁rare", "▁unseen"} <= set(kept.pieces) and "▁odd" not in kept.pieces
    assert (kept.id_maps["de"][1:] >= 0).all()


def test_min_freq_by_teacher_config_checks():
    from mergedistill.config import ExperimentConfig, from_dict

    with pytest.raises(UserError, match=r"'vocab.min_freq_by_teacher.demo-de' must be a finite number >= 0, got -1.0"):
        from_dict(
            ExperimentConfig, {"teachers": {"cards": ["x.yaml"]}, "vocab": {"min_freq_by_teacher": {"demo-de": -1}}}
        )


def test_map_topk_drops_unmapped_and_renormalizes():
    id_map = np.array([0, 7, -1, 9], dtype=np.int32)
    ids = torch.tensor([[1, 2, 3]])
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    student_ids, student_logits = map_topk(ids, logits, id_map)
    assert student_ids.tolist() == [[7, -1, 9]] and torch.isinf(student_logits[0, 1])
    probs = torch.softmax(student_logits, -1)
    assert torch.allclose(probs[0, [0, 2]], torch.softmax(torch.tensor([2.0, 0.0]), -1)) and probs[0, 1] == 0


def test_map_topk_drops_ids_past_the_end_of_the_id_map():
    id_map = np.array([0, 7, -1, 9], dtype=np.int32)  # a tokenizer of 4 ids; the output layer has 6 rows
    ids, logits = torch.tensor([[5, 1, 4]]), torch.tensor([[3.0, 2.0, 1.0]])
    student_ids, student_logits = map_topk(ids, logits, id_map)
    assert (
        student_ids.tolist() == [[-1, 7, -1]]
        and torch.isinf(student_logits[0, [0, 2]]).all()
        and student_logits[0, 1] == 2.0
    )
    np_ids, np_logits = map_topk(ids.numpy(), logits.numpy(), id_map)
    assert np_ids.tolist() == [[-1, 7, -1]] and np.isinf(np_logits[0, [0, 2]]).all()


def test_build_is_byte_identical_and_reloads(tmp_path, teachers, texts, merged):
    for out in ("a", "b"):
        again = build_vocab(teachers, ASSIGNMENT, texts)
        with atomic_dir(tmp_path / out) as tmp:
            write_vocab_dir(tmp, again, teachers, ASSIGNMENT)
    compare = filecmp.dircmp(tmp_path / "a", tmp_path / "b")

    def same(c):
        return not c.diff_files and not c.left_only and not c.right_only and all(same(s) for s in c.subdirs.values())

    assert same(compare)
    loaded = load_vocab(tmp_path / "a")
    assert loaded.pieces == merged.pieces and all(
        np.array_equal(loaded.id_maps[n], merged.id_maps[n]) for n in merged.id_maps
    )
    routed = load_routed_tokenizer(tmp_path / "a")
    text = texts["de"][0]
    assert (
        routed.encode(text, "de")
        == merged.map_ids("roberta", teachers["roberta"].tokenizer(text)["input_ids"]).tolist()
    )


def test_unified_tokenizer_loads_without_mergedistill(tmp_path, teachers, texts, merged):
    with atomic_dir(tmp_path / "v") as tmp:
        write_vocab_dir(tmp, merged, teachers, ASSIGNMENT)
    code = (
        "import sys; from transformers import AutoTokenizer; t = AutoTokenizer.from_pretrained(sys.argv[1]);"
        "ids = t(sys.argv[2])['input_ids']; assert 'mergedistill' not in sys.modules;"
        "print(ids[0], ids[-1], t.mask_token_id, len(ids)); print(t.decode(ids, skip_special_tokens=True))"
    )
    text = texts["ja"][0]
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "v" / "unified"), text], capture_output=True, text=True, check=True
    )
    first, last, mask, n = map(int, out.stdout.splitlines()[0].split())
    assert (first, last, mask) == (2, 3, 4) and n > 2
    assert out.stdout.splitlines()[1].replace(" ", "") == text.replace(" ", "")  # byte fallback: nothing lost


def test_inspect_tables(merged, teachers, texts):
    table = overlap_table(merged)
    assert "| bert |" in table and "∩ roberta" in table
    examples = merged_examples(merged, {n: t.tokenizer for n, t in teachers.items()})
    assert examples and all("<-" in e for e in examples)
    from mergedistill.vocab import build_unified_tokenizer

    rows = fertility_rows({"de": texts["de"][:50]}, teachers, build_unified_tokenizer(merged))
    assert {r["tokenizer"] for r in rows} == {"bert", "roberta", "unified student"}
    assert all(r["fertility"] >= 1.0 for r in rows)
