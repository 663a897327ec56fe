"""select.strategy=weighted in the data/targets path: teachers sharing one tokenization mixed per example."""

import copy

import numpy as np
import pytest
import torch

from mergedistill.cache import (
    OfflineTargets,
    OnlineTargets,
    build_cache,
    cache_fingerprint,
    finalize_cache,
    teacher_targets,
)
from mergedistill.data import DataPlan, make_stream
from mergedistill.teachers import Teacher, TeacherCard
from mergedistill.vocab.build import build_vocab


@pytest.fixture(scope="module")
def wordpiece_pair(tiny_teachers, corpus_texts):
    """bert and electra: two tiny teachers over the SAME WordPiece tokenizer (so they can be mixed)."""
    teachers = {
        name: Teacher.load(TeacherCard(name=name, source=str(tiny_teachers[name]), languages=["en"], max_length=64))
        for name in ("bert", "electra")
    }
    texts = {"en": corpus_texts["en"]["train"][:120]}
    merged = build_vocab(teachers, {"en": ["bert", "electra"]}, texts)
    return teachers, merged, texts


def mixed_plan(teachers, merged, texts, mixture, n=12):
    stream = make_stream("en", teachers[mixture[0]], texts["en"], merged.id_maps[mixture[0]], 48, mixture=mixture)
    return DataPlan([stream], batch_size=4, n_batches=n, seed=0)


def test_a_teacher_mixed_with_its_copy_gives_its_own_targets(wordpiece_pair):
    teachers, merged, texts = wordpiece_pair
    twin = copy.deepcopy(teachers["bert"])
    pool = {"bert": teachers["bert"], "twin": twin}
    maps = {"bert": merged.id_maps["bert"], "twin": merged.id_maps["bert"]}
    stream = make_stream("en", teachers["bert"], texts["en"], merged.id_maps["bert"], 48, mixture=("bert", "twin"))
    plan = DataPlan([stream], batch_size=4, n_batches=4, seed=0)
    batch = plan.batch(0)
    assert batch["teacher"] == "bert+twin" and batch["mixture"] == ("bert", "twin")
    ids, logits = OnlineTargets(pool, maps, 5)(0, batch)
    ref_ids, ref_logits = teacher_targets(teachers["bert"], merged.id_maps["bert"], batch, 5)
    assert torch.equal(ids, ref_ids)
    # the values are the mixture's log-probabilities (= the teacher's), the reference its logits: the same
    # distribution over the top-k once renormalized (-inf = a piece the student lacks, in both)
    assert torch.equal(torch.isfinite(logits), torch.isfinite(ref_logits))
    torch.testing.assert_close(
        torch.softmax(logits, -1).nan_to_num(), torch.softmax(ref_logits, -1).nan_to_num(), atol=2e-3, rtol=0
    )


def test_the_lower_ce_teacher_dominates_each_sequence(wordpiece_pair):
    teachers, merged, texts = wordpiece_pair
    broken = copy.deepcopy(teachers["bert"])
    with torch.no_grad():  # a teacher that puts almost all mass on one wrong piece: huge CE on the gold pieces
        bias = (
            broken.model.cls.predictions.bias
            if hasattr(broken.model.cls.predictions, "bias")
            else broken.model.cls.predictions.decoder.bias
        )
        bias[7] += 60.0
    pool = {"bert": teachers["bert"], "broken": broken}
    maps = {"bert": merged.id_maps["bert"], "broken": merged.id_maps["bert"]}
    stream = make_stream("en", teachers["bert"], texts["en"], merged.id_maps["bert"], 48, mixture=("broken", "bert"))
    batch = DataPlan([stream], batch_size=4, n_batches=2, seed=0).batch(1)
    ids, _ = OnlineTargets(pool, maps, 5)(1, batch)
    ref_ids, _ = teacher_targets(teachers["bert"], merged.id_maps["bert"], batch, 5)
    broken_ids, _ = teacher_targets(broken, merged.id_maps["bert"], batch, 5)
    assert torch.equal(ids, ref_ids) and not torch.equal(ids, broken_ids)


def test_offline_cache_equals_online_for_a_mixed_stream(tmp_path, wordpiece_pair):
    teachers, merged, texts = wordpiece_pair
    plan = mixed_plan(teachers, merged, texts, ("bert", "electra"), n=12)
    fp = cache_fingerprint(plan, teachers, "vocab-fp", k=4)
    assert fp != cache_fingerprint(
        mixed_plan(teachers, merged, texts, ("electra", "bert"), n=12), teachers, "vocab-fp", k=4
    )
    build_cache(tmp_path / "c", plan, teachers, merged.id_maps, 4, fp, progress=False)
    finalize_cache(tmp_path / "c", fp, plan)
    offline, online = OfflineTargets(tmp_path / "c", fp), OnlineTargets(teachers, merged.id_maps, 4)
    for i in (0, 5, 11):
        off, on = offline(i), online(i, plan.batch(i))
        assert torch.equal(off[0], on[0]) and torch.equal(off[1], on[1])
    assert np.isfinite(on[1].numpy()).any()
