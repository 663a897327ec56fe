import json

from mergedistill.report import ReportFacts, eval_table, write_report

ROWS = [
    {"lang": "de", "teacher": "de-roberta", "teacher_acc": 0.5, "student_acc": 0.45, "teacher_pll_per_char": -1.0,
     "student_pll_per_char": -1.2, "agreement": 0.7, "kl": 0.3, "baseline_acc": 0.3},
    {"lang": "en", "teacher": "mbert", "teacher_acc": 0.4, "student_acc": 0.41, "baseline_acc": 0.2},
]


def test_eval_table_computes_the_ratio_from_the_rows():
    table = eval_table(ROWS)
    assert "| de | de-roberta | 0.500 | 0.450 | 0.90 |" in table
    assert "| en | mbert | 0.400 | 0.410 | 1.02 | – |" in table
    assert "MLM-only baseline" in table


def test_write_report_writes_markdown_html_and_plots(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps({"step": s, "loss": 5.0 / s, "loss_kd": 2.0 / s, "tokens_per_s": 900 + s}) for s in range(1, 6)))
    facts = ReportFacts(
        title="demo", commands=["mergedistill run experiments/demo.yaml"], config_yaml="name: demo\n", eval_rows=ROWS,
        sizes={"student_params": 1000, "teacher_params": {"mbert": 3000}}, selection_markdown="| a | b |\n|---|---|\n| 1 | 2 |",
        fill_mask={"en": [{"text": "Click [MASK].", "predictions": [{"token": "OK", "score": 0.5}]}]}, metrics_jsonl=metrics,
    )
    written = write_report(tmp_path / "out", facts)
    names = sorted(p.name for p in written)
    assert names == ["languages.png", "report.html", "report.md", "training_curves.png"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "mergedistill run experiments/demo.yaml" in text and "`OK` (0.50)" in text
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<table>" in html and "training_curves.png" in html
