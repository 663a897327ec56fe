import json

from mergedistill.run_report import ReportFacts, baseline_table, eval_table, write_report

ROWS = [
    {
        "lang": "de",
        "teacher": "de-roberta",
        "teacher_acc": 0.5,
        "student_acc": 0.45,
        "teacher_pll_per_char": -1.0,
        "student_pll_per_char": -1.2,
        "agreement": 0.7,
        "kl": 0.3,
        "masked": 640,
        "student_mlm_ce": 4.0,
        "baseline_acc": 0.3,
        "baseline_mlm_ce": 3.5,
        "baseline_pll_per_char": -1.5,
    },
    {"lang": "en", "teacher": "mbert", "teacher_acc": 0.4, "student_acc": 0.41, "baseline_acc": 0.2},
]


def test_eval_table_computes_the_ratio_from_the_rows():
    table = eval_table(ROWS)
    assert "| de | de-roberta | 0.500 | 0.450 | 0.900 |" in table
    assert "| en | mbert | 0.400 | 0.410 | 1.025 | – |" in table  # three decimals: 0.897 must not read 0.90
    assert "MLM-only" not in table


def test_baseline_table_bolds_the_better_side_of_each_measure():
    table = baseline_table(ROWS)
    # accuracy and PLL/char: higher is better; gold cross-entropy: lower is better
    assert "| de | 640 | **0.450** | 0.300 | 4.000 | 3.500 | **-1.200** | -1.500 |" in table
    assert "| en |  | **0.410** | 0.200 | – | – | – | – |" in table
    assert baseline_table([{k: v for k, v in ROWS[1].items() if k != "baseline_acc"}]) == ""


def test_write_report_writes_markdown_html_and_plots(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(
        "\n".join(
            json.dumps({"step": s, "loss": 5.0 / s, "loss_kd": 2.0 / s, "tokens_per_s": 900 + s}) for s in range(1, 6)
        )
    )
    facts = ReportFacts(
        title="demo",
        commands=["mergedistill run experiments/demo.yaml"],
        config_yaml="name: demo\n",
        eval_rows=ROWS,
        sizes={"student_params": 1000, "teacher_params": {"mbert": 3000}},
        selection_markdown="| a | b |\n|---|---|\n| 1 | 2 |",
        fill_mask={"en": [{"text": "Click [MASK].", "predictions": [{"token": "OK", "score": 0.5}]}]},
        metrics_jsonl=metrics,
    )
    written = write_report(tmp_path / "out", facts)
    names = sorted(p.name for p in written)
    assert names == ["languages.png", "report.html", "report.md", "training_curves.png"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "mergedistill run experiments/demo.yaml" in text and "`OK` (0.50)" in text
    assert "## Distilled vs gold MLM only" in text
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<table>" in html and "training_curves.png" in html
