"""Every number the report (report.md) and the model card (export/README.md) show of the evaluation is eval.json's:
their tables are parsed back and compared cell by cell, rows and columns both complete, each number equal to
the eval.json value rounded to the digits shown. (Runs from tests/helpers/tiny_runs.py; bert-routed also
trains the gold-MLM baseline, so its report has the baseline table.)

A tiny run's students score 0.000 almost everywhere, so a swap of two columns could pass unseen: the
"distinct" case gives every number of the bert-routed run's eval.json its own value and re-runs the export
and report stages on it."""

import json
import re
import shutil

import numpy as np
import pytest

RUNS = [
    pytest.param("bert", "routed", id="bert-routed"),
    pytest.param("deberta-v2", "unified", id="deberta-v2-unified"),
    pytest.param("bert", "routed-distinct", id="bert-routed-distinct"),
]
EVAL_HEADING = "## Student vs teachers, per language"
CARD_HEADING = "## Evaluation (held-out LibreOffice help paragraphs)"
BASELINE_HEADING = "## Distilled vs gold MLM only"
SIZES_HEADING = "## Sizes and speed"

# column header -> eval.json row key (or a function of the row)
EVAL_COLUMNS = {
    "language": "lang",
    "teacher": "teacher",
    "teacher acc": "teacher_acc",
    "student acc": "student_acc",
    "student/teacher": lambda row: row["student_acc"] / row["teacher_acc"] if row["teacher_acc"] else None,
    "teacher PLL/char": "teacher_pll_per_char",
    "student PLL/char": "student_pll_per_char",
    "top-1 agreement": "agreement",
    "KL(teacher‖student)": "kl",
}
BASELINE_COLUMNS = {
    "language": "lang",
    "masked pieces": "masked",
    "acc distilled": "student_acc",
    "acc MLM-only": "baseline_acc",
    "gold CE distilled": "student_mlm_ce",
    "gold CE MLM-only": "baseline_mlm_ce",
    "PLL/char distilled": "student_pll_per_char",
    "PLL/char MLM-only": "baseline_pll_per_char",
}
HIGHER_IS_BETTER = {"acc": True, "gold CE": False, "PLL/char": True}


def table_after(markdown: str, heading: str) -> list[dict[str, str]]:
    """The first Markdown table after ``heading``: one dict per body row, header -> cell text."""
    lines = markdown.splitlines()
    assert heading in lines, f"no {heading!r} section"
    start = lines.index(heading) + 1
    while not lines[start].startswith("|"):
        assert not lines[start].startswith("## "), f"no table under {heading!r}"
        start += 1
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1

    def cells(line):
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    header = cells(lines[start])
    assert set(cells(lines[start + 1])) <= {"---", "---:"}, "second table line is not the alignment row"
    rows = [dict(zip(header, cells(line), strict=True)) for line in lines[start + 2 : end]]
    assert rows, f"empty table under {heading!r}"
    return rows


def assert_shows(cell: str, value, where: str):
    """``cell`` shows ``value``: text equal, an int exactly, a float to the digits shown (at least 2), None as a dash."""
    if value is None:
        assert cell == "–", where
    elif isinstance(value, str):
        assert cell == value, where
    elif isinstance(value, int):
        assert cell == str(value), where
    else:
        match = re.fullmatch(r"-?\d+\.(\d+)", cell)
        assert match and len(match.group(1)) >= 2, f"{where}: {cell!r} is not a number with 2+ decimals"
        assert abs(float(cell) - value) <= 0.5 * 10 ** -len(match.group(1)) + 1e-12, (
            f"{where}: shows {cell}, eval.json has {value}"
        )


def assert_eval_table(rows: list[dict[str, str]], eval_rows: list[dict], columns: dict, where: str):
    assert [r["language"] for r in rows] == [r["lang"] for r in eval_rows], (
        f"{where}: rows are not eval.json's languages"
    )
    for shown, row in zip(rows, eval_rows):
        assert set(shown) == set(columns), f"{where}: unchecked or missing columns {set(shown) ^ set(columns)}"
        for column, key in columns.items():
            value = key(row) if callable(key) else row[key]
            assert_shows(shown[column].strip("*"), value, f"{where} {row['lang']} {column}")


def distinct(value, rng):
    """``value`` with every number replaced by a fresh one of the same type (accuracies stay in (0, 1))."""
    if isinstance(value, dict):
        return {key: distinct(inner, rng) for key, inner in value.items()}
    if isinstance(value, list):
        return [distinct(inner, rng) for inner in value]
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(rng.integers(1, 10**6))
    return float(rng.uniform(0.01, 0.99))


def run_output(tiny_runs, arch, tokenization, tmp_path_factory):
    if tokenization != "routed-distinct":
        return tiny_runs.get(arch, tokenization).out
    from mergedistill.cli import main
    from mergedistill.io import write_json_atomic

    run = tiny_runs.get(arch, "routed")
    out = tmp_path_factory.mktemp("distinct") / "out"
    shutil.copytree(run.out, out)
    evaluation = json.loads((out / "eval" / "eval.json").read_text(encoding="utf-8"))
    write_json_atomic(
        out / "eval" / "eval.json",
        {
            "rows": distinct(evaluation["rows"], np.random.default_rng(0)),
            "sizes": distinct(evaluation["sizes"], np.random.default_rng(1)),
        },
    )
    assert (
        main(
            [
                "run",
                str(run.config),
                *run.overrides,
                f"output_dir={out}",
                "--only",
                "export",
                "report",
                "--force",
                "export",
                "report",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def outputs(tiny_runs, tmp_path_factory):
    cache = {}

    def get(arch, tokenization):
        if (arch, tokenization) not in cache:
            cache[arch, tokenization] = run_output(tiny_runs, arch, tokenization, tmp_path_factory)
        return cache[arch, tokenization]

    return get


def flatten_sizes(sizes: dict) -> dict:
    flat = {}
    for key, value in sizes.items():
        if isinstance(value, dict):
            flat.update({f"{key}: {name}": inner for name, inner in value.items()})
        else:
            flat[key] = value
    return flat


@pytest.mark.parametrize("arch, tokenization", RUNS)
def test_report_shows_the_eval_json_numbers(arch, tokenization, outputs):
    out = outputs(arch, tokenization)
    evaluation = json.loads((out / "eval" / "eval.json").read_text(encoding="utf-8"))
    report = (out / "report" / "report.md").read_text(encoding="utf-8")
    assert_eval_table(table_after(report, EVAL_HEADING), evaluation["rows"], EVAL_COLUMNS, "report")

    sizes = {r["what"]: r["value"] for r in table_after(report, SIZES_HEADING)}
    expected = flatten_sizes(evaluation["sizes"])
    assert set(sizes) == set(expected)
    for key, value in expected.items():
        assert_shows(sizes[key], value, f"report sizes {key}")

    with_baseline = any("baseline_acc" in row for row in evaluation["rows"])
    assert with_baseline == (arch == "bert")
    if with_baseline:
        shown = table_after(report, BASELINE_HEADING)
        assert_eval_table(shown, evaluation["rows"], BASELINE_COLUMNS, "report baseline")
        for cells, row in zip(shown, evaluation["rows"]):  # the better of the two values is the bold one
            for label, key in (("acc", "acc"), ("gold CE", "mlm_ce"), ("PLL/char", "pll_per_char")):
                ours, theirs = row[f"student_{key}"], row[f"baseline_{key}"]
                better = ours > theirs if HIGHER_IS_BETTER[label] else ours < theirs
                assert cells[f"{label} distilled"].startswith("**") == better, (row["lang"], label)
                assert not cells[f"{label} MLM-only"].startswith("**")
    else:
        assert BASELINE_HEADING not in report


@pytest.mark.parametrize("arch, tokenization", RUNS)
def test_model_card_shows_the_eval_json_numbers(arch, tokenization, outputs):
    out = outputs(arch, tokenization)
    evaluation = json.loads((out / "eval" / "eval.json").read_text(encoding="utf-8"))
    card = (out / "export" / "README.md").read_text(encoding="utf-8")
    assert_eval_table(table_after(card, CARD_HEADING), evaluation["rows"], EVAL_COLUMNS, "model card")
    front_matter = card.split("---")[1]
    languages = re.findall(r"^- (\w+)$", front_matter.split("language:")[1].split("tags:")[0], flags=re.M)
    assert languages == [row["lang"] for row in evaluation["rows"]]
    assert f"{tokenization.split('-')[0]} tokenization" in card
