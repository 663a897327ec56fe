"""The plan the cache, train and baseline stages share (``mergedistill.plan``): the strategy decides the streams,
and the min-ce split is measured once per run by the ``split`` stage, stored, and checked when read back.

The teachers are tests/test_min_ce_routing.py's "latin" and "cyrillic" (one tokenizer, each reads only its own
script), so the right min-ce split is known and ``weighted`` may mix them.
"""

import numpy as np
import pytest
import torch

import mergedistill.plan as plan_module
from mergedistill.config import ExperimentConfig, from_dict
from mergedistill.corpus import load_texts
from mergedistill.data import DataPlan, make_stream
from mergedistill.errors import UserError
from mergedistill.io import read_manifest
from mergedistill.plan import make_plan
from mergedistill.stages import pipeline_stages, run_experiment
from mergedistill.teachers import load_teachers
from tests.test_min_ce_routing import CYRILLIC, LATIN, paragraphs, script_teachers


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    texts = paragraphs()
    (root / "sr.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    script_teachers(root, texts)
    return root


def config(root, strategy: str, data=None, out=None, **select):
    return from_dict(
        ExperimentConfig,
        {
            "name": f"plan-{strategy}",
            "output_dir": str(root / (out or strategy)),
            "seed": 0,
            "corpus": {
                "languages": ["sr"],
                "sources": {"sr": {"path": str(root / "sr.txt")}},
                "max_eval_paragraphs": 6,
            },
            "teachers": {"cards": [str(root / "latin.yaml"), str(root / "cyrillic.yaml")]},
            "select": {"strategy": strategy, **select},
            "vocab": {"unified_tokenizer": False},
            "data": {"tokenization": "routed", **(data or {"max_length": 32})},  # hand-made slow teacher tokenizers
            "cache": {"top_k": 4},
            "student": {"layers": 1, "hidden": 16, "heads": 2, "intermediate": 32, "max_position": 40},
            "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1},
            "eval": {"baseline": True},
        },
        source="test",
    )


def old_plan(cfg, teachers, merged, strategy):
    """The plan as ``stages.make_plan`` built it before strategies owned their streams (string branching), with
    the min-ce split that is known to be right for these teachers."""
    texts = load_texts("sr", "train", cfg, limit=cfg.corpus.max_train_paragraphs)
    if strategy == "weighted":
        parts = {"cyrillic": texts}
    elif strategy == "min-ce":
        parts = {"cyrillic": [t for t in texts if CYRILLIC.search(t)], "latin": [t for t in texts if LATIN.search(t)]}
    else:
        parts = {"latin": texts}
    streams = [
        make_stream(
            "sr",
            teachers[name],
            part,
            merged.id_maps[name],
            cfg.data.max_length,
            mixture=("cyrillic", "latin") if strategy == "weighted" else (),
        )
        for name, part in sorted(parts.items())
    ]
    d = cfg.data
    return DataPlan(
        streams, cfg.train.batch_size, cfg.train.steps, cfg.seed, d.sampling_alpha, d.mlm_probability, d.mask_seed
    )


@pytest.mark.parametrize("strategy", ["static", "min-ce", "weighted"])
def test_each_strategy_plans_what_it_planned_before(world, strategy):
    cfg = config(world, strategy, **({"assignment": {"sr": "latin"}} if strategy == "static" else {}))
    run_experiment(cfg, until="split" if strategy == "min-ce" else "vocab")
    out = world / strategy
    assert ("split" in [s.name for s in pipeline_stages(cfg)]) == (strategy == "min-ce")  # for min-ce alone
    teachers = load_teachers(cfg)
    plan, _, merged = make_plan(cfg, out / "vocab", out / "select", out / "split" if strategy == "min-ce" else None)
    before = old_plan(cfg, teachers, merged, strategy)
    assert [s.name for s in plan.streams] == [s.name for s in before.streams]
    assert [s.mixture for s in plan.streams] == [s.mixture for s in before.streams]
    assert plan.fingerprint() == before.fingerprint()
    assert all(a[0] == b[0] and (a[1] == b[1]).all() and a[2] == b[2] for a, b in zip(plan.schedule, before.schedule))
    for i in range(plan.n_batches):
        new, old = plan.batch(i), before.batch(i)
        assert new.keys() == old.keys()
        assert all(torch.equal(v, old[k]) if torch.is_tensor(v) else v == old[k] for k, v in new.items())


def test_min_ce_scores_once_per_run_and_the_stored_split_is_checked(world, monkeypatch):
    cfg = config(world, "min-ce", out="once")
    calls, real = [], plan_module.example_ce

    def counting(cfg, teachers, lang, names, texts, log=print):
        calls.append((lang, tuple(names), len(texts)))
        return real(cfg, teachers, lang, names, texts, log)

    monkeypatch.setattr(plan_module, "example_ce", counting)
    run_experiment(cfg, until="baseline")
    out = world / "once"
    for stage in ("split", "cache", "train", "baseline"):
        assert read_manifest(out / stage) is not None, stage
    train = load_texts("sr", "train", cfg)
    assert calls == [("sr", ("cyrillic", "latin"), len(train))]  # once, by the split stage, not by each stage
    stored = np.load(out / "split" / "sr.npy")
    assert stored.tolist() == [0 if CYRILLIC.search(t) else 1 for t in train]  # index into ["cyrillic", "latin"]

    # cache, train and baseline run again from the stored split without scoring
    run_experiment(cfg, until="baseline", force=("cache", "train", "baseline"))
    assert len(calls) == 1
    # a changed split file is refused (not trained on), and so is a missing one
    path = out / "split" / "sr.npy"
    np.save(path, 1 - stored)
    with pytest.raises(UserError, match="sr.npy: changed since the split stage wrote it"):
        run_experiment(cfg, until="cache", force=("cache",))
    path.unlink()
    with pytest.raises(UserError, match="sr.npy: no stored min-ce split"):
        run_experiment(cfg, until="cache", force=("cache",))
    # a setting the split depends on measures it again (once), and then the plan follows it
    run_experiment(config(world, "min-ce", data={"max_length": 32, "mask_seed": 99}, out="once"), until="cache")
    assert len(calls) == 2 and np.load(path).tolist() == stored.tolist()
