"""`mergedistill ablate`: several selections on tiny teachers, one comparison table; min-ce end to end."""

import csv
import json

import pytest

from mergedistill.ablate import AblationConfig, budget_problems, comparison, variant_configs
from mergedistill.cli import main
from mergedistill.config import load_config
from mergedistill.corpus import train_texts
from mergedistill.errors import UserError
from mergedistill.plan import make_plan, read_split
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
        (v, lang) for v in ("multilingual-only", "min-ce") for lang in ("en", "de", "ja")
    }
    table = (root / "ablation" / "table.md").read_text()
    assert "multilingual-only" in table and "min-ce" in table
    # every row is its variant's eval.json row, read back unchanged
    for variant in ("multilingual-only", "min-ce"):
        evaluated = json.loads((root / "ablation" / variant / "eval" / "eval.json").read_text())["rows"]
        assert {
            (r["lang"], r["teacher"], float(r["student_pll_per_char"])) for r in rows if r["variant"] == variant
        } == {(r["lang"], r["teacher"], r["student_pll_per_char"]) for r in evaluated}
    served = {(r["variant"], r["lang"]): r["teacher"] for r in rows}
    assert all(
        served[("multilingual-only", lang)] == "multi" for lang in ("en", "de", "ja")
    )  # the reference's static assignment
    assert all(float(r["student_pll_per_char"]) < 0 and int(r["student_params"]) > 0 for r in rows)
    # every variant is an ordinary run directory, stopped after eval (no export)
    for variant in ("multilingual-only", "min-ce"):
        assert (root / "ablation" / variant / "eval" / "eval.json").exists()
        assert not (root / "ablation" / variant / "export").exists()
    # min-ce end to end: de and ja (two candidates each) are split per paragraph, every paragraph to exactly one
    # of them, and the plan the cache stage recorded is the one planned again from the stage outputs. (Which
    # teacher wins which paragraph varies with the tiny teachers' training; tests/test_min_ce_routing.py checks
    # the choice itself on teachers whose right answer is known.)
    assignment = json.loads((root / "ablation" / "min-ce" / "select" / "assignment.json").read_text())
    assert assignment == {
        "strategy": "min-ce",
        "per_example": True,
        "assignment": {"en": ["multi"], "de": ["de", "multi"], "ja": ["ja", "multi"]},
    }
    cfg = variant_configs(load_config(root / "ablation.yaml", schema=AblationConfig))["min-ce"]
    out = root / "ablation" / "min-ce"
    plan, _, _ = make_plan(cfg, out / "vocab", out / "select", out / "split")
    recorded = json.loads((out / "cache" / "plan.json").read_text())["streams"]
    assert {s.name: len(s.sequences) for s in plan.streams} == recorded
    assert set(recorded) <= {"en@multi", "de@de", "de@multi", "ja@ja", "ja@multi"} and {
        s.split("@")[0] for s in recorded
    } == {"en", "de", "ja"}
    for lang in ("de", "ja"):
        texts = train_texts(cfg, lang)
        choice = read_split(out / "split", lang, [lang, "multi"], len(texts))  # stored once by the split stage
        split = {name: [t for t, c in zip(texts, choice) if c == j] for j, name in enumerate([lang, "multi"])}
        assert sorted(t for part in split.values() for t in part) == sorted(texts)
        assert {f"{lang}@{name}" for name, part in split.items() if part} == {
            s for s in recorded if s.startswith(f"{lang}@")
        }
    # deltas and the table's cells are each variant minus the reference, per language
    pll = {(r["variant"], r["lang"]): float(r["student_pll_per_char"]) for r in rows}
    deltas = comparison(
        [{k: (float(v) if k == "student_pll_per_char" else v) for k, v in r.items()} for r in rows], "multilingual-only"
    )
    for lang in ("en", "de", "ja"):
        reference, chosen = pll[("multilingual-only", lang)], pll[("min-ce", lang)]
        assert deltas[lang] == {"multilingual-only": 0.0, "min-ce": chosen - reference}
        line = f"| {lang} | {reference:.3f} · multi | {chosen:.3f} ({chosen - reference:+.3f}) · {served[('min-ce', lang)]} |"
        assert line in table.splitlines(), (line, table)

    # a re-run reuses every stage of every variant (teachers, select, vocab, [split,] cache, train, eval)
    capsys.readouterr()
    assert main(["ablate", str(root / "ablation.yaml")]) == 0
    assert capsys.readouterr().err.count("up to date, skipped") == 6 + 7  # min-ce has the split stage too


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
