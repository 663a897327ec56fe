"""The vocabulary recipes in vocab/: each opens with its command and builds exactly the teachers/select/vocab
stages of the experiment that writes the same output_dir, so `mergedistill run` reuses what the recipe built."""

from pathlib import Path

import pytest
import yaml

from mergedistill.config import load_config
from mergedistill.pipeline import stage_fingerprint
from mergedistill.stages import pipeline_stages

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "vocab").glob("*.yaml"))
VOCAB_STAGES = ("teachers", "select", "vocab")


def fingerprints(cfg) -> dict[str, str]:
    """The fingerprints of the stages up to vocab, computed as `run_stages` does (the corpus content is
    left out: both configs read the same corpus section, which is part of the fingerprint already)."""
    out: dict[str, str] = {}
    for stage in pipeline_stages(cfg):
        if stage.name in VOCAB_STAGES:
            out[stage.name] = stage_fingerprint(stage, cfg, out)
    return out


def matching_experiment(recipe_cfg):
    matches = [
        path
        for path in sorted((ROOT / "experiments").rglob("*.yaml"))
        if (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("output_dir") == recipe_cfg.output_dir
    ]
    assert len(matches) == 1, f"one experiment must write {recipe_cfg.output_dir}, found {matches}"
    return load_config(matches[0])


def test_there_are_recipes():
    assert {p.name for p in RECIPES} >= {"demo.yaml", "demo-routed.yaml", "hub-mbert+language-berts.yaml"}


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_opens_with_its_command(recipe):
    first = recipe.read_text(encoding="utf-8").splitlines()[0]
    assert first == f"# mergedistill vocab build vocab/{recipe.name}"


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_builds_the_stages_its_experiment_reuses(recipe, monkeypatch):
    monkeypatch.chdir(ROOT)  # card paths in configs are relative to the repository root
    recipe_cfg = load_config(recipe)
    experiment_cfg = matching_experiment(recipe_cfg)
    assert fingerprints(recipe_cfg) == fingerprints(experiment_cfg)


def test_a_changed_section_changes_the_vocab_fingerprint(monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = ROOT / "vocab" / "demo.yaml"
    assert fingerprints(load_config(recipe)) != fingerprints(load_config(recipe, ["vocab.min_freq=1e-5"]))
