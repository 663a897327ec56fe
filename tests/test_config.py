import math

import pytest

from mergedistill.config import ExperimentConfig, from_dict, load_config, to_yaml
from mergedistill.errors import UserError

BASE = {"teachers": {"cards": ["teachers/demo/demo-multi.yaml"]}}


def test_yaml_and_overrides_are_merged_onto_the_schema(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("# mergedistill run exp.yaml\nteachers:\n  cards: [a.yaml]\ntrain:\n  steps: 7\n")
    cfg = load_config(path, ["train.lr=0.001", "corpus.languages=[en,de]"])
    assert cfg.train.steps == 7
    assert cfg.train.lr == 0.001
    assert cfg.corpus.languages == ["en", "de"]
    assert cfg.student.layers == ExperimentConfig().student.layers  # untouched default


@pytest.mark.parametrize(
    "data, overrides, key",
    [
        ({"train": {"stepz": 1}}, [], "train.stepz"),  # unknown key
        ({"bogus_section": {}}, [], "bogus_section"),
        ({"train": {"steps": "many"}}, [], "train.steps"),  # wrong type
        ({"train": {"lr": math.nan}}, [], "train.lr"),  # NaN
        ({"train": {"lr": -1.0}}, [], "train.lr"),  # negative
        ({"data": {"mlm_probability": 1.5}}, [], "data.mlm_probability"),
        ({"student": {"hidden": 100, "heads": 3}}, [], "student.hidden"),
        ({"select": {"strategy": "best"}}, [], "select.strategy"),
        ({"vocab": {"max_size": 3}}, [], "vocab.max_size"),
        ({}, ["train.unknown=1"], "train.unknown"),
        ({}, ["train.steps=x"], "train.steps"),
        ({"teachers": {"cards": []}}, [], "teachers.cards"),
    ],
)
def test_bad_config_names_the_key(data, overrides, key):
    with pytest.raises(UserError) as err:
        from_dict(ExperimentConfig, {**BASE, **data}, source="exp.yaml", overrides=overrides)
    message = str(err.value)
    assert f"'{key}'" in message and "exp.yaml" in message
    assert "\n" not in message


def test_override_without_equals_is_rejected():
    with pytest.raises(UserError, match="key=value"):
        from_dict(ExperimentConfig, BASE, overrides=["train.steps"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(scalar)


def test_config_round_trips_through_yaml(tmp_path):
    cfg = from_dict(ExperimentConfig, {**BASE, "train": {"steps": 3}})
    path = tmp_path / "dump.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    "section, old, new",
    [
        ("phase1", "w_attn", "alpha_attn"),
        ("phase1", "w_hidden", "alpha_hidden"),
        ("phase1", "w_logit", "alpha_kd"),
        ("phase2", "w_soft", "alpha_kd"),
        ("phase2", "w_gold", "alpha_gold"),
        ("phase2", "w_attn", "alpha_attn"),
        ("phase2", "w_hidden", "alpha_hidden"),
    ],
)
def test_an_old_bistil_loss_weight_is_one_line_naming_the_file_key_and_new_name(tmp_path, section, old, new):
    from mergedistill.bistil.schema import BistilConfig

    path = tmp_path / "bistil.yaml"
    path.write_text(f"# mergedistill bistil run {path}\n{section}:\n  {old}: 0.5\n")
    with pytest.raises(UserError) as err:
        load_config(path, schema=BistilConfig)
    assert str(err.value) == f"{path}: config key '{section}.{old}' was renamed to '{section}.{new}'; use the new name"
    with pytest.raises(UserError, match=f"'{section}.{old}' was renamed to '{section}.{new}'"):  # an override too
        from_dict(BistilConfig, {}, source="b.yaml", overrides=[f"{section}.{old}=0.5"])
    path.write_text(f"{section}:\n  {new}: 0.5\n")
    assert getattr(getattr(load_config(path, schema=BistilConfig), section), new) == 0.5  # the new name loads
    with pytest.raises(UserError, match="bad config key 'phase1.w_nothing'"):  # unknown keys are refused as before
        from_dict(BistilConfig, {"phase1": {"w_nothing": 1.0}})
