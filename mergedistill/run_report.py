"""The run report: report.md, report.html and PNG plots, from numbers the run itself produced.

``write_report(out_dir, facts)`` takes plain data gathered from the stage outputs (see ``ReportFacts``)
so that every figure in the report can be traced to a file of the run; nothing here computes a metric.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergedistill.io import write_text_atomic


@dataclass
class ReportFacts:
    title: str
    commands: list[str]  # exact commands that reproduce the run
    config_yaml: str  # the resolved experiment config
    eval_rows: list[dict[str, Any]]  # one per language: lang, teacher, teacher_acc, student_acc, ... (see eval stage)
    sizes: dict[str, Any]  # student_params, teacher_params {name: n}, speedups
    selection_markdown: str = ""
    vocab_markdown: str = ""
    fill_mask: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # lang -> [{text, predictions}]
    metrics_jsonl: Path | None = None  # training metrics (one JSON object per logged step)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    selection_heatmap: str = ""  # file name of the heat-map PNG copied into the report dir


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def eval_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per language, teacher vs student."""
    header = "| language | teacher | teacher acc | student acc | student/teacher | teacher PLL/char | student PLL/char | top-1 agreement | KL(teacher‖student) |"
    align = "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    lines = [header, align]
    for r in rows:
        ratio = r["student_acc"] / r["teacher_acc"] if r.get("teacher_acc") else None
        line = (
            f"| {r['lang']} | {r['teacher']} | {_fmt(r.get('teacher_acc'))} | {_fmt(r.get('student_acc'))} | "
            f"{_fmt(ratio, 3)} | {_fmt(r.get('teacher_pll_per_char'))} | {_fmt(r.get('student_pll_per_char'))} | "
            f"{_fmt(r.get('agreement'))} | {_fmt(r.get('kl'))} |"
        )
        lines.append(line)
    return "\n".join(lines)


def baseline_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: the distilled student vs the same student trained with gold MLM only, on the same held-out
    positions (accuracy, gold cross-entropy) and paragraphs (PLL/char); empty without a baseline."""
    if not any("baseline_acc" in r for r in rows):
        return ""
    lines = [
        "| language | masked pieces | acc distilled | acc MLM-only | gold CE distilled | gold CE MLM-only | PLL/char distilled | PLL/char MLM-only |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [r["lang"], str(r.get("masked", ""))]
        for key in ("acc", "mlm_ce", "pll_per_char"):
            ours, theirs = r.get(f"student_{key}"), r.get(f"baseline_{key}")
            better = (
                ours is not None and theirs is not None and ((ours > theirs) if key != "mlm_ce" else (ours < theirs))
            )
            cells += [f"**{_fmt(ours)}**" if better else _fmt(ours), _fmt(theirs)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sizes_table(sizes: dict[str, Any]) -> str:
    lines = ["| what | value |", "|---|---:|"]
    for key, value in sizes.items():
        if isinstance(value, dict):
            for name, inner in value.items():
                lines.append(f"| {key}: {name} | {_fmt(inner, 2)} |")
        else:
            lines.append(f"| {key} | {_fmt(value, 2)} |")
    return "\n".join(lines)


def read_metrics(path: Path | None) -> list[dict[str, Any]]:
    if path is None or not Path(path).exists():
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def plot_training_curves(metrics: list[dict[str, Any]], path: Path) -> bool:
    """Loss terms and tokens/s against the step; False when there is nothing to plot."""
    if not metrics:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    loss_keys = sorted({k for m in metrics for k in m if k.startswith("loss")})
    fig, (ax_loss, ax_speed) = plt.subplots(1, 2, figsize=(11, 3.8))
    for key in loss_keys:
        ax_loss.plot(steps, [m.get(key, float("nan")) for m in metrics], label=key)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=8)
    ax_loss.set_title("training loss terms")
    if any("tokens_per_s" in m for m in metrics):
        ax_speed.plot(steps, [m.get("tokens_per_s", float("nan")) for m in metrics], color="tab:green")
    ax_speed.set_xlabel("step")
    ax_speed.set_ylabel("real (non-pad) tokens / s")
    ax_speed.set_title("throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_language_bars(rows: list[dict[str, Any]], path: Path) -> bool:
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    langs = [r["lang"] for r in rows]
    series = [("teacher", "teacher_acc"), ("student", "student_acc")]
    if any("baseline_acc" in r for r in rows):
        series.append(("MLM-only baseline", "baseline_acc"))
    x = np.arange(len(langs))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(langs), 3.8))
    for i, (label, key) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, [r.get(key) or 0.0 for r in rows], width, label=label)
    ax.set_xticks(x, langs)
    ax.set_ylabel("masked-token accuracy")
    ax.set_title("student vs its assigned teacher, per language")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def fill_mask_markdown(examples: dict[str, list[dict[str, Any]]]) -> str:
    lines = []
    for lang, items in sorted(examples.items()):
        for item in items:
            preds = ", ".join(f"`{p['token']}` ({p['score']:.2f})" for p in item["predictions"])
            lines.append(f"- **{lang}** {item['text']} → {preds}")
    return "\n".join(lines)


def build_markdown(facts: ReportFacts, plots: dict[str, str]) -> str:
    parts = [
        f"# {facts.title}",
        "",
        "Every number below was produced by this run; the commands at the end reproduce it.",
        "",
    ]
    parts += ["## Student vs teachers, per language", "", eval_table(facts.eval_rows), ""]
    if "bars" in plots:
        parts += [f"![per-language accuracy]({plots['bars']})", ""]
    if baseline_table(facts.eval_rows):
        parts += [
            "## Distilled vs gold MLM only",
            "",
            "The same student, data plan and steps trained without teachers (`eval.baseline`), scored on the same "
            "held-out positions and paragraphs; better value in bold (gold CE: nats per masked piece, lower is better).",
            "",
            baseline_table(facts.eval_rows),
            "",
        ]
    parts += ["## Sizes and speed", "", sizes_table(facts.sizes), ""]
    if facts.selection_markdown:
        parts += ["## Teacher selection", "", facts.selection_markdown, ""]
        if facts.selection_heatmap:
            parts += [f"![selection heat-map]({facts.selection_heatmap})", ""]
    if facts.vocab_markdown:
        parts += ["## Merged vocabulary", "", facts.vocab_markdown, ""]
    if "curves" in plots:
        parts += ["## Training", "", f"![training curves]({plots['curves']})", ""]
    if facts.fill_mask:
        parts += ["## fill-mask examples (exported student)", "", fill_mask_markdown(facts.fill_mask), ""]
    if facts.stage_seconds:
        parts += ["## Stage times", "", "| stage | seconds |", "|---|---:|"]
        parts += [f"| {name} | {seconds:.1f} |" for name, seconds in facts.stage_seconds.items()] + [""]
    if facts.notes:
        parts += ["## Notes", ""] + [f"- {note}" for note in facts.notes] + [""]
    parts += [
        "## Reproduce",
        "",
        "```sh",
        *facts.commands,
        "```",
        "",
        "Resolved config:",
        "",
        "```yaml",
        facts.config_yaml.rstrip(),
        "```",
        "",
    ]
    return "\n".join(parts)


def to_html(markdown_text: str, title: str) -> str:
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"])
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px}"
        "th{background:#f2f2f2}pre{background:#f6f6f6;padding:1em;overflow-x:auto}img{max-width:100%}"
    )
    return f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style></head><body>\n{body}\n</body></html>\n"


def write_report(out_dir: str | Path, facts: ReportFacts) -> list[Path]:
    """Write report.md, report.html and the plots into ``out_dir``; return the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str] = {}
    if plot_training_curves(read_metrics(facts.metrics_jsonl), out_dir / "training_curves.png"):
        plots["curves"] = "training_curves.png"
    if plot_language_bars(facts.eval_rows, out_dir / "languages.png"):
        plots["bars"] = "languages.png"
    text = build_markdown(facts, plots)
    write_text_atomic(out_dir / "report.md", text)
    write_text_atomic(out_dir / "report.html", to_html(text, facts.title))
    return [out_dir / "report.md", out_dir / "report.html", *(out_dir / p for p in plots.values())]


def dropped_note(cache_manifest: dict) -> str:
    """The report's line on teacher top-k mass that falls on pieces outside the merged vocabulary."""
    shares = cache_manifest.get("dropped_topk_mass") or {}
    where = (
        f" (the plan's first {cache_manifest['dropped_topk_mass_batches']} batches)"
        if "dropped_topk_mass_batches" in cache_manifest
        else " (every cached batch)"
    )
    listed = ", ".join(f"{key} {100 * share:.2f} %" for key, share in sorted(shares.items())) or "not measured"
    return (
        "Teacher top-k probability mass on pieces outside the merged vocabulary (dropped; the KD targets renormalize over the "
        f"rest), per language@teacher{where}: {listed}"
    )
