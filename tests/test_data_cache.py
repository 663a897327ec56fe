import numpy as np
import pytest
import torch

from mergedistill.cache import OfflineTargets, OnlineTargets, build_cache, cache_fingerprint, finalize_cache
from mergedistill.data import DataPlan, make_stream
from mergedistill.errors import UserError
from mergedistill.losses import kd_soft_ce
from tests.conftest import ASSIGNMENT


@pytest.fixture(scope="module")
def streams(teachers, texts, merged):
    return [
        make_stream(lang, teachers[t], texts[lang], merged.id_maps[t], max_length=64)
        for lang, (t,) in sorted(ASSIGNMENT.items())
    ]


def plan_of(streams, n=12, seed=0, **kw):
    return DataPlan(streams, batch_size=4, n_batches=n, seed=seed, **kw)


def test_sampling_follows_n_alpha(streams):
    plan = plan_of(streams, n=4000, alpha=0.5)
    sizes = np.array([s.chars for s in streams], dtype=float)  # one stream per language: n = its characters
    expected = sizes**0.5 / (sizes**0.5).sum()
    assert np.allclose(plan.probabilities, expected)
    counts = np.bincount([s for s, _, _ in plan.schedule], minlength=len(streams)) / 4000
    assert np.abs(counts - expected).max() < 0.03
    flat = plan_of(streams, n=10, alpha=0.0)
    assert np.allclose(flat.probabilities, 1 / len(streams))


def test_a_languages_share_depends_neither_on_a_split_nor_on_the_tokenizer(teachers, texts, merged):
    def stream(lang, teacher, part):
        return make_stream(lang, teachers[teacher], part, merged.id_maps[teacher], max_length=64)

    def probabilities(streams):
        return DataPlan(streams, batch_size=4, n_batches=10, seed=0, alpha=0.3).probabilities

    en, de = texts["en"], texts["de"]
    whole = [stream("en", "bert", en), stream("de", "roberta", de)]
    split = [
        stream("en", "bert", en[::2]),
        stream("en", "xlm-roberta", en[1::2]),
        stream("de", "roberta", de),
    ]  # min-ce: en over two
    other = [stream("en", "bert", en), stream("de", "bert", de)]  # de read by a teacher with another fertility
    assert len(other[1].sequences) != len(whole[1].sequences)
    p_whole, p_split = probabilities(whole), probabilities(split)
    assert p_split[:2].sum() == pytest.approx(p_whole[0]) and p_split[2] == pytest.approx(p_whole[1])
    assert p_split[0] / p_split[1] == pytest.approx(
        len(split[0].sequences) / len(split[1].sequences)
    )  # within en: by size
    assert np.allclose(probabilities(other), p_whole)


def test_language_weights_scale_a_languages_share(streams):
    lang = streams[0].lang
    base, weighted = (
        plan_of(streams, n=4000, alpha=0.5),
        plan_of(streams, n=4000, alpha=0.5, language_weights={lang: 3.0}),
    )
    expected = base.probabilities.copy()
    expected[0] *= 3.0
    assert np.allclose(weighted.probabilities, expected / expected.sum())
    share = np.mean([s == 0 for s, _, _ in weighted.schedule])
    assert abs(share - weighted.probabilities[0]) < 0.03 and share > base.probabilities[0] + 0.1
    assert weighted.fingerprint() != base.fingerprint()  # a cache built for other weights is stale
    from mergedistill.config import ExperimentConfig, from_dict

    cards = {"teachers": {"cards": ["t.yaml"]}}
    with pytest.raises(UserError, match=r"data.language_weights.xx' is not in corpus.languages"):
        from_dict(ExperimentConfig, {**cards, "data": {"language_weights": {"xx": 2.0}}})
    with pytest.raises(UserError, match=r"language_weights.ja' must be a finite number > 0"):
        from_dict(ExperimentConfig, {**cards, "data": {"language_weights": {"ja": 0.0}}})
    assert from_dict(ExperimentConfig, {**cards, "data": {"language_weights": {"ja": 2.0}}}).data.language_weights == {
        "ja": 2.0
    }


def test_batches_are_deterministic_and_aligned(streams, merged, teachers):
    plan, again, other = plan_of(streams), plan_of(streams), plan_of(streams, seed=1)
    for i in range(6):
        a, b = plan.batch(i), again.batch(i)
        assert all(torch.equal(a[key], b[key]) for key in ("input_ids", "labels", "teacher_input_ids"))
    assert any(not torch.equal(plan.batch(i)["labels"], other.batch(i)["labels"]) for i in range(6))
    batch = plan.batch(0)
    id_map = merged.id_maps[batch["teacher"]]
    masked = batch["labels"] != -100
    unmasked = ~masked & batch["attention_mask"].bool()
    mapped = torch.from_numpy(
        np.where(id_map[batch["teacher_input_ids"].numpy()] < 0, 1, id_map[batch["teacher_input_ids"].numpy()])
    )
    assert torch.equal(batch["input_ids"][unmasked], mapped[unmasked])  # student input = teacher input mapped
    mask_id = teachers[batch["teacher"]].vocab.roles["mask"]
    at_mask = batch["teacher_input_ids"] == mask_id
    assert torch.equal(
        batch["input_ids"][at_mask], torch.full((int(at_mask.sum()),), 4)
    )  # teacher [MASK] -> student [MASK]
    rate = masked.sum() / (batch["attention_mask"].sum() - 2 * batch["attention_mask"].shape[0])
    assert 0.08 < float(rate) < 0.25


def test_packing_keeps_padding_low(streams):
    batch = plan_of(streams).batch(3)
    assert batch["attention_mask"].float().mean() > 0.8


def test_online_equals_offline_targets_and_loss(tmp_path, streams, teachers, merged):
    plan = plan_of(streams, n=60)
    fp = cache_fingerprint(plan, teachers, "vocab-fp", k=5)
    build_cache(tmp_path / "c", plan, teachers, merged.id_maps, 5, fp, progress=False)
    finalize_cache(tmp_path / "c", fp, plan)
    offline = OfflineTargets(tmp_path / "c", fp)
    online = OnlineTargets(teachers, merged.id_maps, 5)
    student_logits = None
    for i in (0, 7, 55):
        batch = plan.batch(i)
        off_ids, off_logits = offline(i)
        on_ids, on_logits = online(i, batch)
        assert torch.equal(off_ids, on_ids) and torch.equal(off_logits, on_logits)
        assert off_ids.shape == (int((batch["labels"] != -100).sum()), 5)
        student_logits = torch.randn(off_ids.shape[0], len(merged), generator=torch.Generator().manual_seed(i))
        assert kd_soft_ce(student_logits, off_ids, off_logits, 2.0) == kd_soft_ce(
            student_logits, on_ids, on_logits, 2.0
        )


def test_interrupted_build_resumes_byte_identical_and_ranks_split_the_work(tmp_path, streams, teachers, merged):
    plan = plan_of(streams, n=120)
    fp = cache_fingerprint(plan, teachers, "v", k=4)
    build_cache(tmp_path / "full", plan, teachers, merged.id_maps, 4, fp, progress=False)
    with pytest.raises(KeyboardInterrupt):
        build_cache(tmp_path / "resumed", plan, teachers, merged.id_maps, 4, fp, progress=False, stop_after_chunks=1)
    with pytest.raises(UserError, match="chunks"):
        finalize_cache(tmp_path / "resumed", fp, plan)
    build_cache(tmp_path / "resumed", plan, teachers, merged.id_maps, 4, fp, progress=False)
    for rank in (0, 1):  # two ranks, each its share of the chunks, into one directory
        build_cache(tmp_path / "ranks", plan, teachers, merged.id_maps, 4, fp, rank=rank, world=2, progress=False)
    names = sorted(p.name for p in (tmp_path / "full").glob("chunk-*.arrow"))
    assert len(names) == 3
    for name in names:
        assert (
            (tmp_path / "full" / name).read_bytes()
            == (tmp_path / "resumed" / name).read_bytes()
            == (tmp_path / "ranks" / name).read_bytes()
        )


def test_stale_truncated_and_corrupted_caches_are_refused(tmp_path, streams, teachers, merged):
    plan = plan_of(streams, n=60)
    fp = cache_fingerprint(plan, teachers, "v", k=4)
    build_cache(tmp_path / "c", plan, teachers, merged.id_maps, 4, fp, progress=False)
    with pytest.raises(UserError, match="incomplete"):
        OfflineTargets(tmp_path / "c", fp)
    finalize_cache(tmp_path / "c", fp, plan)
    other_plan = plan_of(streams, n=60, seed=5)
    assert cache_fingerprint(other_plan, teachers, "v", k=4) != fp
    assert cache_fingerprint(plan, teachers, "v", k=8) != fp
    with pytest.raises(UserError, match="stale fingerprint"):
        OfflineTargets(tmp_path / "c", cache_fingerprint(plan, teachers, "other vocab", k=4))
    chunk = tmp_path / "c" / "chunk-00000.arrow"
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(UserError, match="truncated or corrupted"):
        OfflineTargets(tmp_path / "c", fp)
    chunk.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])  # one flipped byte
    with pytest.raises(UserError, match="checksum"):
        OfflineTargets(tmp_path / "c", fp)


def test_train_checks_the_cache_against_its_own_plan_and_short_targets_raise(tmp_path, streams, teachers, merged):
    from types import SimpleNamespace

    from mergedistill import io
    from mergedistill.stages import _targets

    plan = plan_of(streams, n=60)
    io.write_manifest(tmp_path / "vocab", "vocab-fp")
    fp = cache_fingerprint(plan, teachers, "vocab-fp", k=4)
    build_cache(tmp_path / "cache" / "topk", plan, teachers, merged.id_maps, 4, fp, progress=False)
    finalize_cache(tmp_path / "cache" / "topk", fp, plan)
    io.write_manifest(
        tmp_path / "cache", "stage-fp", cache_fingerprint=fp
    )  # the cache stage records its own fingerprint
    cfg = SimpleNamespace(cache=SimpleNamespace(mode="offline", top_k=4))
    ctx = SimpleNamespace(inputs={"cache": tmp_path / "cache", "vocab": tmp_path / "vocab"})
    assert _targets(cfg, ctx, plan, teachers, merged)(0)[0].shape[1] == 4
    with pytest.raises(
        UserError, match="stale fingerprint"
    ):  # train's plan differs from the one the cache was built for
        _targets(cfg, ctx, plan_of(streams, n=60, seed=5), teachers, merged)
    ids, logits = OfflineTargets(tmp_path / "cache" / "topk", fp)(0)
    with pytest.raises(ValueError, match="rows"):
        kd_soft_ce(torch.zeros(ids.shape[0] + 3, len(merged)), ids, logits)


def test_cache_batch_size_bounds_the_teacher_forward_and_keeps_the_targets(tmp_path, streams, teachers, merged):
    plan = plan_of(streams, n=30)
    sizes = []  # sequences per teacher forward
    hooks = [
        getattr(
            t.model, t.model.base_model_prefix
        ).register_forward_pre_hook(  # the encoder (masked-only head, heads.py)
            lambda module, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
        )
        for t in teachers.values()
    ]
    try:
        whole, split = (
            OnlineTargets(teachers, merged.id_maps, 4),
            OnlineTargets(teachers, merged.id_maps, 4, batch_size=3),
        )
        for i in (0, 5):
            batch = plan.batch(i)
            sizes.clear()
            full_ids, full_logits = whole(i, batch)
            assert max(sizes) == 4  # the plan's micro-batch
            sizes.clear()
            ids, logits = split(i, batch)
            assert max(sizes) == 3 and len(sizes) == 2  # 4 sequences: 3 + 1
            assert torch.equal(ids, full_ids) and torch.allclose(logits, full_logits, atol=1e-2)
    finally:
        for hook in hooks:
            hook.remove()


def test_dropped_topk_mass_is_measured_per_language_and_teacher(tmp_path, streams, teachers, merged):
    from mergedistill.data import teacher_view

    plan = plan_of(streams, n=60)
    maps = {name: np.array(id_map) for name, id_map in merged.id_maps.items()}
    maps["bert"][np.arange(len(maps["bert"])) % 3 == 0] = -1  # a vocabulary that lacks a third of bert's pieces
    fp = cache_fingerprint(plan, teachers, "v", k=4)
    build_cache(tmp_path / "c", plan, teachers, maps, 4, fp, progress=False)
    shares = finalize_cache(tmp_path / "c", fp, plan)["dropped_topk_mass"]
    assert set(shares) == {f"{s.lang}@{s.teacher}" for s in streams}
    assert all(0.0 <= share <= 1.0 for share in shares.values()) and 0.1 < shares["en@bert"] < 0.9
    expected = []  # recomputed by hand for en@bert
    for i in range(plan.n_batches):
        batch = plan.batch(i)
        if batch["lang"] == "en":
            ids, logits = teachers["bert"].topk(*teacher_view(batch), 4)
            lookup = np.where(
                ids.numpy() < len(maps["bert"]), maps["bert"][np.minimum(ids.numpy(), len(maps["bert"]) - 1)], -1
            )
            expected += (torch.softmax(logits, -1) * torch.from_numpy(lookup < 0)).sum(-1).tolist()
    assert shares["en@bert"] == pytest.approx(np.mean(expected), rel=1e-4)
    from mergedistill.cache import sample_dropped
    from mergedistill.run_report import dropped_note

    assert sample_dropped(plan, teachers, maps, 4, plan.n_batches) == pytest.approx(
        shares
    )  # online mode: the same measure
    manifest = {"dropped_topk_mass": shares}
    assert "en@bert" in dropped_note(manifest) and f"{100 * shares['en@bert']:.2f} %" in dropped_note(manifest)
