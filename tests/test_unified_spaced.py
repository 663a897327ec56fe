"""Unified mode, spaced groups: the student's ``▁X`` against a teacher's bare ``▁`` and ``X``. The teacher's
prediction at ``X`` is the student's target there, mapped through the vocabulary's spaced map (``X`` -> ``▁X``),
offline and online alike. Constructed by hand: one sequence, a teacher that answers fixed top-k lists."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mergedistill.align import AlignedSequence, one_to_one, piece_ends, served, spaced, span_groups
from mergedistill.cache import OfflineTargets, OnlineTargets, build_cache, cache_fingerprint, finalize_cache
from mergedistill.data import DataPlan, Stream, teacher_bare
from mergedistill.vocab.build import spaced_map
from mergedistill.vocab.merge import SPECIAL_IDS, SPECIAL_TOKENS, MergedVocab
from mergedistill.vocab.store import load_vocab, save_vocab

# teacher ids 0-4 specials; 5 ▁, 6 Sub, 7 ▁Sub, 8 form (SentencePiece keys: no marker = inside a word)
TEACHER_KEYS = [None] * 5 + ["▁", "Sub", "▁Sub", "form"]
T_CLS, T_SEP, T_MASK = 2, 3, 4
# student ids 5-9: ▁ ▁Sub Sub ▁form form
STUDENT = list(SPECIAL_TOKENS) + ["▁", "▁Sub", "Sub", "▁form", "form"]
ID_MAP = np.array([-1] * 5 + [5, 7, 6, 9], dtype=np.int32)


def test_a_bare_marker_and_a_piece_against_one_word_start_piece_is_spaced():
    # " Subform": student [▁Sub][form], teacher [▁][Sub][form]: group 0 is spaced, group 1 one to one
    s_groups, t_groups = span_groups(
        piece_ends([(0, 4), (4, 8)], ["▁Sub", "form"]), piece_ends([(1, 2), (1, 4), (4, 8)], ["▁", "Sub", "form"])
    )
    assert s_groups.tolist() == [0, 1] and t_groups.tolist() == [0, 0, 1]
    bare = np.array([True, False, False])
    assert spaced(s_groups, t_groups, np.array([True, False]), bare).tolist() == [0]
    assert served(t_groups, one_to_one(s_groups, t_groups), np.array([0]), bare).tolist() == [False, True, True]
    # not spaced: the student piece is no word start; the teacher's first piece is no bare marker
    assert spaced(s_groups, t_groups, np.array([False, False]), bare).size == 0
    assert spaced(s_groups, t_groups, np.array([True, False]), np.array([False, False, False])).size == 0
    # a teacher's [▁][Sub][form] against the student's [▁Subform]: three pieces, not spaced
    assert spaced(np.array([0]), np.array([0, 0, 0]), np.array([True]), np.array([True, False, False])).size == 0


def test_the_spaced_map_gives_the_word_start_piece(tmp_path):
    vocab = SimpleNamespace(keys=TEACHER_KEYS, family="sentencepiece")
    merged = MergedVocab(STUDENT, {"t": ID_MAP})
    # Sub -> ▁Sub, form -> ▁form; word-initial keys (▁, ▁Sub) keep the plain map
    assert spaced_map("t", vocab, merged).tolist() == [-1] * 5 + [5, 6, 6, 8]
    assert teacher_bare(vocab).tolist() == [False] * 5 + [True, False, False, False]
    merged.spaced_maps = {"t": spaced_map("t", vocab, merged)}  # stored with the vocabulary
    save_vocab(merged, tmp_path)
    assert load_vocab(tmp_path).spaced_maps["t"].tolist() == merged.spaced_maps["t"].tolist()


class FixedTeacher:
    """Answers every queried position with the top-k teacher ids [6 Sub, 8 form] (logits 2, 1)."""

    name = "t"

    def fingerprint(self):
        return "fixed"

    def tokenizer_fingerprint(self):
        return "fixed-tok"

    def topk(self, ids, attention, masked, k, batch_size=None):
        n = int(masked.sum())
        return torch.tensor([[6, 8]] * n), torch.tensor([[2.0, 1.0]] * n)


@pytest.fixture
def plan():
    # " Subform" as above, in [CLS] ... [SEP]
    seq = AlignedSequence(
        np.array([SPECIAL_IDS["cls"], 6, 9, SPECIAL_IDS["sep"]]),
        np.array([T_CLS, 5, 6, 8, T_SEP]),
        np.array([-1, 0, 1, -1]),
        np.array([-1, 0, 0, 1, -1]),
    )
    vocab = SimpleNamespace(keys=TEACHER_KEYS)
    stream = Stream(
        "xx@t",
        "xx",
        "t",
        [seq.teacher_ids],
        ID_MAP,
        T_MASK,
        np.array([0, 1, 2, 3, 4]),
        np.array([5, 6, 7, 8]),
        aligned=[seq],
        student_pool=np.arange(5, len(STUDENT)),
        student_word_start=np.array([p.startswith("▁") for p in STUDENT]),
        chars=8,
        teacher_bare=teacher_bare(vocab),
    )
    return DataPlan([stream], batch_size=1, n_batches=2, mlm_probability=1.0)  # every group masked


def test_spaced_groups_get_the_teachers_prediction_at_x(plan):
    batch = plan.batch(0)
    assert batch["kd_positions"][0].tolist() == [False, True, True, False]  # ▁Sub and form
    assert batch["teacher_positions"][0].tolist() == [False, False, True, True, False]  # Sub (not ▁) and form
    assert batch["teacher_spaced"][0].tolist() == [False, False, True, False, False]
    assert batch["teacher_labels"][0].tolist() == [-100, -100, 6, 8, -100]


def test_spaced_targets_map_into_word_start_pieces_offline_and_online(tmp_path, plan):
    teachers, id_maps = {"t": FixedTeacher()}, {"t": ID_MAP}
    spaced_maps = {"t": spaced_map("t", SimpleNamespace(keys=TEACHER_KEYS), MergedVocab(STUDENT, id_maps))}
    online = OnlineTargets(teachers, id_maps, 2, glued_maps={"t": ID_MAP}, spaced_maps=spaced_maps)
    ids, logits = online(0, plan.batch(0))
    # at Sub (spaced): the student's ▁Sub and ▁form; at form (one to one, glued): Sub and form
    assert ids.tolist() == [[6, 8], [7, 9]] and logits.tolist() == [[2.0, 1.0], [2.0, 1.0]]
    fp = cache_fingerprint(plan, teachers, "vocab-fp", 2)
    build_cache(tmp_path / "c", plan, teachers, id_maps, 2, fp, progress=False, spaced_maps=spaced_maps)
    finalize_cache(tmp_path / "c", fp, plan)
    offline_ids, offline_logits = OfflineTargets(tmp_path / "c", fp)(0, plan.batch(0))
    assert torch.equal(offline_ids, ids) and torch.equal(offline_logits, logits)
    # without a spaced map the spaced position gets no target rather than the wrong (glued) pieces
    bare_ids, bare_logits = OnlineTargets(teachers, id_maps, 2)(0, plan.batch(0))
    assert bare_ids.tolist() == [[-1, -1], [7, 9]] and torch.isinf(bare_logits[0]).all()


def test_eval_masks_and_maps_a_spaced_group_as_training_does(monkeypatch):
    from mergedistill import heads, mlm_metrics
    from mergedistill.heldout_eval import UnifiedTargets, paired_scores

    seen = {}

    class Teacher:  # right at both positions: Sub (at the spaced group's X), form
        tokenizer = SimpleNamespace(mask_token_id=T_MASK, pad_token_id=0)

        def logits_at(self, ids, attention, where, batch_size=None):
            seen["teacher_input"] = ids[0].tolist()
            return torch.nn.functional.one_hot(torch.tensor([6, 8]), len(TEACHER_KEYS)).float()

    def student_logits(model, ids, attention, where):  # right too: ▁Sub, form
        return torch.nn.functional.one_hot(torch.tensor([6, 9]), len(STUDENT)).float() * 5, None

    monkeypatch.setattr(heads, "masked_lm_logits", student_logits)
    s_set = mlm_metrics.EvalSet(
        [np.array([SPECIAL_IDS["cls"], 6, 9, SPECIAL_IDS["sep"]])], [np.zeros(4, bool)], [8], [1]
    )
    t_set = mlm_metrics.EvalSet([np.array([T_CLS, 5, 6, 8, T_SEP])], [np.zeros(5, bool)], [8], [1])
    s_masked, t_queried = [np.array([0, 1, 1, 0], bool)], [np.array([0, 0, 1, 1, 0], bool)]
    spaced_ids = spaced_map("t", SimpleNamespace(keys=TEACHER_KEYS), MergedVocab(STUDENT, {"t": ID_MAP}))
    targets = UnifiedTargets(
        [np.array([0, 1, 1, 1, 0], bool)],  # the bare ▁ is hidden from the teacher too
        [np.array([0, 0, 0, 1, 0], bool)],
        [np.array([0, 0, 1, 0, 0], bool)],
        ID_MAP,
        spaced_ids,
    )
    student = SimpleNamespace(eval=lambda: None)
    scores = paired_scores(student, Teacher(), ID_MAP, s_set, t_set, s_masked, t_queried, 2, targets)
    assert seen["teacher_input"] == [T_CLS, T_MASK, T_MASK, T_MASK, T_SEP]
    assert scores["masked"] == 2 and scores["teacher_acc"] == scores["student_acc"] == 1.0
    assert scores["agreement"] == 1.0  # the teacher's Sub is the student's ▁Sub
    # the plain id map (as before the spaced map) read Sub as the student's Sub: a disagreement
    assert paired_scores(student, Teacher(), ID_MAP, s_set, t_set, s_masked, t_queried, 2)["agreement"] == 0.5
