"""`mergedistill ablate`: several selections on tiny teachers, one comparison table; min-ce end to end."""

import csv
import json

import pytest

from mergedistill.ablate import AblationConfig, budget_problems, comparison, variant_configs
from mergedistill.cli import main
from mergedistill.config import load_config
from mergedistill.errors import UserError
from tests.test_run_pipeline import CARD, EXPERIMENT

ABLATION = """# mergedistill ablate {root}/ablation.yaml
name: tiny-selection
base: {root}/exp.yaml
output_dir: {root}/ablation
reference: multilingual-only
common:
  eval: {{baseline: false, paragraphs: 10}}
variants:
  multilingual-only:
    select: {{strategy: static, assignment: {{en: multi, de: multi, ja: multi}}}}
  min-ce:
    select: {{strategy: min-ce}}
"""


@pytest.fixture(scope="module")
def ablation_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    (root / "multi.yaml").write_text(
        CARD.format(name="multi", root=root, langs="en, de, ja", family="wordpiece", arch="bert")
    )
    (root / "de.yaml").write_text(CARD.format(name="de", root=root, langs="de", family="bytelevel", arch="roberta"))
    (root / "ja.yaml").write_text(CARD.format(name="ja", root=root, langs="ja", family="unigram", arch="xlm-roberta"))
    (root / "exp.yaml").write_text(EXPERIMENT.format(root=root))
    (root / "ablation.yaml").write_text(ABLATION.format(root=root))
    return root


def test_ablate_writes_one_table_for_all_variants(ablation_root, capsys):
    root = ablation_root
    assert main(["ablate", str(root / "ablation.yaml")]) == 0
    with open(root / "ablation" / "table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["variant"], r["lang"]) for r in rows} == {
        (v, l) for v in ("multilingual-only", "min-ce") for l in ("en", "de", "ja")
    }
    served = {(r["variant"], r["lang"]): r["teacher"] for r in rows}
    assert served[("multilingual-only", "de")] == "multi"
    assert all(float(r["student_pll_per_char"]) < 0 and int(r["student_params"]) > 0 for r in rows)
    table = (root / "ablation" / "table.md").read_text()
    assert "| de |" in table and "multilingual-only" in table and "min-ce" in table
    # every variant is an ordinary run directory, stopped after eval (no export)
    for variant in ("multilingual-only", "min-ce"):
        assert (root / "ablation" / variant / "eval" / "eval.json").exists()
        assert not (root / "ablation" / variant / "export").exists()
    # min-ce end to end: each paragraph of de and ja went to one of its two candidates, and the choice is per
    # paragraph: some language is split between both (which one varies with the tiny teachers' training)
    plan = json.loads((root / "ablation" / "min-ce" / "cache" / "plan.json").read_text())
    streams = set(plan["streams"])
    assert streams <= {"en@multi", "de@de", "de@multi", "ja@ja", "ja@multi"} and {s.split("@")[0] for s in streams} == {
        "en",
        "de",
        "ja",
    }
    assert any({f"{lang}@{lang}", f"{lang}@multi"} <= streams for lang in ("de", "ja")), streams
    assignment = json.loads((root / "ablation" / "min-ce" / "select" / "assignment.json").read_text())
    assert assignment["per_example"] and sorted(assignment["assignment"]["de"]) == ["de", "multi"]
    # deltas are relative to the reference
    deltas = comparison(
        [{k: (float(v) if k == "student_pll_per_char" else v) for k, v in r.items()} for r in rows], "multilingual-only"
    )
    assert all(d["multilingual-only"] == 0.0 for d in deltas.values())

    # a re-run reuses every stage of every variant (teachers, select, vocab, cache, train, eval)
    capsys.readouterr()
    assert main(["ablate", str(root / "ablation.yaml")]) == 0
    assert capsys.readouterr().err.count("up to date, skipped") == 2 * 6


def test_variants_must_share_the_budget(ablation_root, tmp_path):
    root = ablation_root
    text = ABLATION.format(root=root).replace(
        "select: {strategy: min-ce}", "select: {strategy: min-ce}\n    train: {steps: 99}"
    )
    (tmp_path / "a.yaml").write_text(text)
    ablation = load_config(tmp_path / "a.yaml", schema=AblationConfig)
    problems = budget_problems(variant_configs(ablation, "a.yaml"))
    assert problems and "train" in problems[0] and "min-ce" in problems[0]
    assert main(["ablate", str(tmp_path / "a.yaml")]) == 2


def test_bad_ablation_configs_name_the_key(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text(
        "base: experiments/demo.yaml\nreference: nope\nvariants: {x: {select: {strategy: min-ce}}}\n"
    )
    with pytest.raises(UserError, match="reference"):
        load_config(tmp_path / "a.yaml", schema=AblationConfig)
    (tmp_path / "b.yaml").write_text("base: missing.yaml\nvariants: {x: {}}\n")
    assert main(["ablate", str(tmp_path / "b.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("base: experiments/demo.yaml\nvariants: {x: {train: {stepz: 3}}}\n")
    assert main(["ablate", str(tmp_path / "c.yaml")]) == 2
    assert "stepz" in capsys.readouterr().err
