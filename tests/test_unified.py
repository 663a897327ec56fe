"""Unified tokenization: the student reads the merged tokenizer's pieces, aligned with each teacher's
pieces by character groups; teacher targets only where one piece on each side spans the same text, or a
teacher's bare word marker and one piece span the student's one piece (tests/test_unified_spaced.py)."""

import numpy as np
import pytest
import torch

from mergedistill.align import mask_aligned, one_to_one, pack_aligned, piece_ends, span_groups
from mergedistill.cache import OfflineTargets, OnlineTargets, build_cache, cache_fingerprint, finalize_cache
from mergedistill.data import DataPlan, aligned_paragraphs, kd_rows, make_stream, teacher_view
from mergedistill.errors import UserError
from mergedistill.losses import kd_soft_ce
from mergedistill.vocab.merge import SPECIAL_IDS
from tests.conftest import ASSIGNMENT


@pytest.fixture(scope="module")
def unified(merged):
    from mergedistill.vocab.tokenize import build_unified_tokenizer

    return build_unified_tokenizer(merged)


@pytest.fixture(scope="module")
def streams(teachers, texts, merged, unified):
    return [
        make_stream(lang, teachers[t], texts[lang], merged.id_maps[t], max_length=64, student_tokenizer=unified)
        for lang, (t,) in sorted(ASSIGNMENT.items())
    ]


def test_groups_cut_where_both_segmentations_end():
    # "Access2Base": student [Access][2Base], teacher [Access2][Base]; then " with" one piece each side
    s_groups, t_groups = span_groups(np.array([6, 11, 16]), np.array([7, 11, 16]))
    assert s_groups.tolist() == [0, 0, 1] and t_groups.tolist() == [0, 0, 1]
    assert one_to_one(s_groups, t_groups).tolist() == [1]
    # a bare word marker gets the next character's span from tokenizers: it covers nothing (ends in half characters)
    assert piece_ends([(0, 1), (0, 4)], ["▁", "Form"]).tolist() == [1, 8]
    # byte pieces of one character share its span: they stay in one group
    s_groups, t_groups = span_groups(np.array([1, 2]), np.array([1, 1, 2]))
    assert s_groups.tolist() == [0, 1] and t_groups.tolist() == [0, 0, 1]


def test_a_bare_word_marker_on_both_sides_is_a_group_of_its_own():
    # "ボタン) 統合": both sides [▁ボタン][)][▁][統合]; a bare ▁ used to end where it starts, joining ")" into
    # a two-piece group with no distillation target for either piece
    offsets, pieces = [(0, 3), (3, 4), (4, 5), (5, 7)], ["▁ボタン", ")", "▁", "統合"]
    s_groups, t_groups = span_groups(piece_ends(offsets, pieces), piece_ends(offsets, pieces))
    assert one_to_one(s_groups, t_groups).tolist() == [0, 1, 2, 3]
    # student [▁Sub] against a SentencePiece teacher's [▁][Sub]: one group, no one-piece pair (a spaced group:
    # its target is the teacher's prediction at Sub, tests/test_unified_spaced.py)
    s_groups, t_groups = span_groups(piece_ends([(2, 6)], ["▁Sub"]), piece_ends([(2, 3), (3, 6)], ["▁", "Sub"]))
    assert s_groups.tolist() == [0] and t_groups.tolist() == [0, 0] and one_to_one(s_groups, t_groups).size == 0
    # a byte-level BPE teacher's bare Ġ before a space: its own group, the word before keeps its pair
    s_groups, t_groups = span_groups(piece_ends([(0, 3)], ["▁auf"]), piece_ends([(0, 3), (3, 4)], ["Ġauf", "Ġ"]))
    assert one_to_one(s_groups, t_groups).tolist() == [0]


def test_one_piece_groups_cover_the_same_characters(teachers, texts, unified):
    for lang, (name,) in sorted(ASSIGNMENT.items()):
        tok = teachers[name].tokenizer
        sample = texts[lang][:30]
        paragraphs = aligned_paragraphs(sample, unified, tok)
        s_off = unified(sample, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        t_off = tok(sample, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        pairs = 0
        for text, (_, _, s_groups, t_groups), so, to in zip(sample, paragraphs, s_off, t_off):
            for group in one_to_one(s_groups, t_groups):
                (s0, s1), (t0, t1) = (
                    so[int(np.flatnonzero(s_groups == group)[0])],
                    to[int(np.flatnonzero(t_groups == group)[0])],
                )
                assert text[s0:s1].strip() == text[t0:t1].strip(), (lang, text[s0:s1], text[t0:t1])
                pairs += 1
        assert pairs > 50, lang  # most words align somewhere


def test_packing_cuts_between_groups_and_fits_both_lengths():
    paragraph = (np.arange(10, 40), np.arange(100, 120), np.repeat(np.arange(10), 3), np.repeat(np.arange(10), 2))
    packed = pack_aligned([paragraph, paragraph], 14, 12, (2, 3), (0, 1))
    assert all(len(p.student_ids) <= 14 and len(p.teacher_ids) <= 12 for p in packed)
    body_s = np.concatenate([p.student_ids[p.student_groups >= 0] for p in packed])
    body_t = np.concatenate([p.teacher_ids[p.teacher_groups >= 0] for p in packed])
    assert (
        body_s.tolist() == list(range(10, 40)) * 2 and body_t.tolist() == list(range(100, 120)) * 2
    )  # nothing lost or split
    for p in packed:
        assert p.student_ids[0] == 2 and p.student_ids[-1] == 3 and p.teacher_ids[0] == 0 and p.teacher_ids[-1] == 1
        for group in np.unique(p.student_groups[p.student_groups >= 0]):  # a group keeps its 3 + 2 pieces together
            assert (p.student_groups == group).sum() == 3 and (p.teacher_groups == group).sum() == 2


def test_masking_is_per_group_on_both_sides(streams):
    seq = streams[0].aligned[0]
    rng = np.random.default_rng(0)
    s_in, t_in, s_masked, t_masked, chosen = mask_aligned(seq, rng, 0.15, 4, 99, np.array([7]), np.array([8]))
    assert len(chosen) >= 1
    assert set(seq.student_groups[s_masked]) == set(chosen) == set(seq.teacher_groups[t_masked])
    assert not s_masked[seq.student_groups < 0].any() and not t_masked[seq.teacher_groups < 0].any()
    assert np.array_equal(s_in[~s_masked], seq.student_ids[~s_masked]) and np.array_equal(
        t_in[~t_masked], seq.teacher_ids[~t_masked]
    )


def test_unified_batches_pair_student_and_teacher_positions(streams, unified):
    plan = DataPlan(streams, batch_size=4, n_batches=40, seed=0)
    pairs = 0
    for i in range(40):
        batch = plan.batch(i)
        teacher_ids, teacher_attention, queried = teacher_view(batch)
        assert torch.equal(queried.sum(1), batch["kd_positions"].sum(1))  # one teacher row per KD student row
        masked = batch["labels"] != -100
        assert not (batch["kd_positions"] & ~masked).any()
        assert torch.equal(batch["teacher_labels"] != -100, queried)
        at_mask = batch["input_ids"] == SPECIAL_IDS["mask"]
        assert not (at_mask & ~masked).any()  # the student's [MASK] only where it has a gold piece
        assert int(kd_rows(batch).sum()) == int(queried.sum())
        assert teacher_attention.shape == teacher_ids.shape and int(batch["attention_mask"][0].sum()) <= 64
        pairs += int(queried.sum())
    assert pairs > 100
    # the student's own pieces: unmasked input = the unified tokenizer's ids of the text
    assert int(batch["input_ids"].max()) < len(unified)


def test_unified_online_equals_offline(tmp_path, streams, teachers, merged):
    plan = DataPlan(streams, batch_size=4, n_batches=30, seed=0)
    fp = cache_fingerprint(plan, teachers, "vocab-fp", k=5)
    maps = {"glued_maps": merged.glued_maps, "spaced_maps": merged.spaced_maps}
    build_cache(tmp_path / "c", plan, teachers, merged.id_maps, 5, fp, progress=False, **maps)
    finalize_cache(tmp_path / "c", fp, plan)
    offline, online = OfflineTargets(tmp_path / "c", fp), OnlineTargets(teachers, merged.id_maps, 5, None, **maps)
    torch.manual_seed(0)
    spaced_rows = 0
    for i in (0, 7, 29):
        batch = plan.batch(i)
        rows = kd_rows(batch)
        logits = torch.randn(int((batch["labels"] != -100).sum()), len(merged))[rows]
        a, b = offline(i, batch), online(i, batch)
        assert len(a[0]) == int(rows.sum()) and torch.equal(a[0], b[0])
        assert torch.equal(kd_soft_ce(logits, *a), kd_soft_ce(logits, *b))
        spaced_rows += int(batch["teacher_spaced"].sum())
    assert spaced_rows > 0  # rows mapped through the spaced map are among those compared
    routed = DataPlan(
        [make_stream(s.lang, teachers[s.teacher], ["x"], merged.id_maps[s.teacher], 64) for s in streams[:1]], 4, 1
    )
    assert routed.fingerprint() != DataPlan(streams[:1], 4, 1).fingerprint()


def test_unified_config_checks():
    from mergedistill.config import ExperimentConfig, from_dict

    cards = {"teachers": {"cards": ["t.yaml"]}, "data": {"tokenization": "unified"}}
    assert from_dict(ExperimentConfig, cards).data.tokenization == "unified"
    with pytest.raises(UserError, match="vocab.unified_tokenizer: true"):
        from_dict(ExperimentConfig, {**cards, "vocab": {"unified_tokenizer": False}})
    with pytest.raises(UserError, match="train.alpha_hidden.*routed"):
        from_dict(ExperimentConfig, {**cards, "cache": {"mode": "online"}, "train": {"alpha_hidden": 1.0}})
    with pytest.raises(UserError, match="data.whole_word"):
        from_dict(
            ExperimentConfig,
            {"teachers": {"cards": ["t.yaml"]}, "data": {"tokenization": "unified", "whole_word": True}},
        )


def test_unified_eval_compares_the_same_spans(teachers, merged, unified, corpus_texts):
    from mergedistill.config import StudentConfig
    from mergedistill.heldout_eval import compare_student
    from mergedistill.student import build_student

    student = build_student(
        StudentConfig(arch="deberta-v2", layers=1, hidden=32, heads=2, intermediate=64, max_position=130), len(merged)
    ).eval()
    tok = teachers["xlm-roberta"].tokenizer
    texts = [t for t in corpus_texts["ja"]["valid"] if len(tok(t)["input_ids"]) < 48][
        :12
    ]  # untruncated: both sides see all of it
    row = compare_student(
        student,
        teachers["xlm-roberta"],
        merged.id_maps["xlm-roberta"],
        texts,
        k=4,
        pll_paragraphs=4,
        student_tokenizer=unified,
    )
    routed = compare_student(
        student, teachers["xlm-roberta"], merged.id_maps["xlm-roberta"], texts, k=4, pll_paragraphs=4
    )
    assert row["masked"] > 5 and 0 <= row["student_acc"] <= 1 and np.isfinite(row["student_pll_per_char"])
    from mergedistill import mlm_metrics
    from mergedistill.heldout_eval import teacher_eval_set

    # the teacher reads its own pieces: its PLL is its usual one
    own = mlm_metrics.pseudo_log_likelihood(
        teachers["xlm-roberta"].model,
        teacher_eval_set(teachers["xlm-roberta"], texts[:4]),
        tok.mask_token_id,
        tok.pad_token_id,
    )
    assert row["teacher_pll_per_char"] == pytest.approx(own["pll_per_char"])
    assert row["student_pll_per_char"] != pytest.approx(
        routed["student_pll_per_char"]
    )  # the student reads other pieces


def test_group_set_helpers_equal_their_numpy_set_definitions():
    """``in_groups``/``one_to_one``/``spaced`` use lookup tables for speed: same results as np.isin/np.unique."""
    from mergedistill.align import in_groups, spaced

    rng = np.random.default_rng(0)
    for _ in range(300):
        n_groups = int(rng.integers(0, 12))
        s_groups = np.sort(np.r_[-1, rng.integers(0, max(n_groups, 1), int(rng.integers(0, 20))), -1])
        t_groups = np.sort(np.r_[-1, rng.integers(0, max(n_groups, 1), int(rng.integers(0, 20))), -1])
        selected = np.unique(rng.integers(0, 15, int(rng.integers(0, 6))))
        assert in_groups(s_groups, selected).tolist() == np.isin(s_groups, selected).tolist()
        s_ids, s_counts = np.unique(s_groups[s_groups >= 0], return_counts=True)
        t_ids, t_counts = np.unique(t_groups[t_groups >= 0], return_counts=True)
        assert (
            one_to_one(s_groups, t_groups).tolist()
            == np.intersect1d(s_ids[s_counts == 1], t_ids[t_counts == 1]).tolist()
        )
        word_start, bare = rng.random(len(s_groups)) < 0.6, rng.random(len(t_groups)) < 0.5
        candidates = np.intersect1d(s_ids[s_counts == 1], t_ids[t_counts == 2])
        first = np.isin(t_groups, candidates) & np.r_[True, t_groups[1:] != t_groups[:-1]]
        second = np.isin(t_groups, candidates) & ~first
        expected = np.intersect1d(
            np.intersect1d(s_groups[np.isin(s_groups, candidates) & word_start], t_groups[first & bare]),
            t_groups[second & ~bare],
        )
        assert spaced(s_groups, t_groups, word_start, bare).tolist() == expected.tolist()
