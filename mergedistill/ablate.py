"""Teacher-selection ablations: the same student, budget and seed under several selections, one table.

An ablation config names a base experiment, settings every variant shares (``common``) and one config
fragment per variant. Each variant is a normal pipeline run in ``<output_dir>/<variant>`` (so it skips
what is current and resumes what is not), run up to the eval stage. The table compares variants on the
student's pseudo-log-likelihood per character, which does not depend on the tokenization a variant routed
a language through; masked-token accuracy is shown too but is only comparable between variants that
tokenize a language the same way.
"""

from __future__ import annotations

import csv
import io as _io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from mergedistill import io
from mergedistill.errors import UserError


@dataclass
class AblationConfig:
    name: str = "ablation"
    base: str = "experiments/demo.yaml"  # the experiment every variant starts from
    output_dir: str = "runs/ablations/ablation"
    reference: Optional[str] = None  # variant the others are compared with (delta columns); default: the first
    common: Dict[str, Any] = field(default_factory=dict)  # config fragment applied to every variant
    variants: Dict[str, Any] = field(default_factory=dict)  # variant name -> config fragment

    def problems(self):
        out = []
        if not self.variants:
            out.append(("variants", "must name at least one variant (name: {config fragment})"))
        for name, fragment in self.variants.items():
            if not isinstance(fragment, dict):
                out.append(
                    (f"variants.{name}", "must be a mapping of config sections (e.g. {select: {strategy: score}})")
                )
            elif "output_dir" in fragment:
                out.append(
                    (f"variants.{name}.output_dir", "is set by the ablation (<output_dir>/<variant>); remove it")
                )
        if self.reference is not None and self.reference not in self.variants:
            out.append(("reference", f"names no variant; choose one of {', '.join(self.variants)}"))
        return out


def _merge(*parts: dict) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.merge(*[OmegaConf.create(p or {}) for p in parts]))


def variant_configs(ablation: AblationConfig, source: str = "<ablation>", overrides: list[str] | None = None) -> dict:
    """variant name -> validated ExperimentConfig (base + common + variant + output_dir + overrides)."""
    import yaml

    from mergedistill.config import ExperimentConfig, from_dict

    base_path = Path(ablation.base)
    if not base_path.is_file():
        raise UserError(
            f"{source}: base {ablation.base!r} is not a file; point `base:` at an experiment YAML (e.g. experiments/demo.yaml)"
        )
    base = yaml.safe_load(base_path.read_text(encoding="utf-8")) or {}
    configs = {}
    for name, fragment in ablation.variants.items():
        data = _merge(
            base,
            ablation.common,
            fragment,
            {"name": f"{ablation.name}-{name}", "output_dir": str(Path(ablation.output_dir) / name)},
        )
        configs[name] = from_dict(ExperimentConfig, data, source=f"{source} (variant {name})", overrides=overrides)
    return configs


def budget_problems(configs: dict) -> list[str]:
    """Variants must share the student, training budget, data and seed, or the table compares apples and pears."""
    from mergedistill.config import to_dict

    keys = ("student", "train", "seed", "corpus")
    first_name, first = next(iter(configs.items()))
    out = []
    for name, cfg in configs.items():
        for key in keys:
            if to_dict(cfg)[key] != to_dict(first)[key]:
                out.append(
                    f"variant {name} changes `{key}` (vs {first_name}); ablations must share {', '.join(keys)}: put it under `common:`"
                )
    return out


def collect(configs: dict) -> list[dict]:
    """One row per (variant, language) from each variant's eval stage, plus its costs."""
    rows = []
    for name, cfg in configs.items():
        out = Path(cfg.output_dir)
        eval_data = json.loads((out / "eval" / "eval.json").read_text(encoding="utf-8"))
        seconds = {
            stage: (io.read_manifest(out / stage) or {}).get("seconds", 0.0)
            for stage in ("select", "vocab", "cache", "train")
        }
        vocab_size = (io.read_manifest(out / "vocab") or {}).get("size")
        for row in eval_data["rows"]:
            rows.append(
                {
                    "variant": name,
                    "lang": row["lang"],
                    "teacher": row["teacher"],
                    "student_pll_per_char": row["student_pll_per_char"],
                    "teacher_pll_per_char": row["teacher_pll_per_char"],
                    "student_acc": row["student_acc"],
                    "teacher_acc": row["teacher_acc"],
                    "agreement": row["agreement"],
                    "student_params": eval_data["sizes"]["student_params"],
                    "vocab_size": vocab_size,
                    "cache_seconds": seconds["cache"],
                    "train_seconds": seconds["train"],
                }
            )
    return rows


def comparison(rows: list[dict], reference: str) -> dict:
    """lang -> variant -> student PLL/char minus the reference variant's (higher is better)."""
    by = {(r["variant"], r["lang"]): r["student_pll_per_char"] for r in rows}
    out: dict = {}
    for (variant, lang), value in by.items():
        if (reference, lang) in by:
            out.setdefault(lang, {})[variant] = value - by[(reference, lang)]
    return out


def markdown_table(rows: list[dict], reference: str) -> str:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    langs = sorted({r["lang"] for r in rows})
    cell = {(r["variant"], r["lang"]): r for r in rows}
    lines = [
        "Student pseudo-log-likelihood per character on held-out text (higher is better; tokenizer-independent), "
        f"with the difference to `{reference}`, and the serving teacher:",
        "",
        "| lang | " + " | ".join(variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    for lang in langs:
        cells = []
        for v in variants:
            r = cell.get((v, lang))
            if r is None:
                cells.append("–")
                continue
            delta = (
                r["student_pll_per_char"] - cell[(reference, lang)]["student_pll_per_char"]
                if (reference, lang) in cell
                else 0.0
            )
            shown = f"{r['student_pll_per_char']:.3f}" + ("" if v == reference else f" ({delta:+.3f})")
            cells.append(f"{shown} · {r['teacher']}")
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Masked-token accuracy, student / its teacher, on the serving teacher's tokenization (comparable across "
        "variants only where they route a language through the same teacher):",
        "",
        "| lang | " + " | ".join(variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    for lang in langs:
        cells = [
            f"{cell[(v, lang)]['student_acc']:.3f} / {cell[(v, lang)]['teacher_acc']:.3f}" if (v, lang) in cell else "–"
            for v in variants
        ]
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cost per variant:",
        "",
        "| variant | student params | vocabulary | cache s | train s |",
        "|---|---|---|---|---|",
    ]
    for v in variants:
        r = next(r for r in rows if r["variant"] == v)
        lines.append(
            f"| {v} | {r['student_params']:,} | {r['vocab_size']:,} | {r['cache_seconds']:.0f} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def run_ablation(
    ablation: AblationConfig, source: str = "<ablation>", overrides: list[str] | None = None, log=print
) -> Path:
    from mergedistill.stages import run_experiment

    configs = variant_configs(ablation, source, overrides)
    problems = budget_problems(configs)
    if problems:
        raise UserError(f"{source}: {problems[0]}")
    for i, (name, cfg) in enumerate(configs.items(), 1):
        log(f"[ablate] variant {i}/{len(configs)}: {name} -> {cfg.output_dir}")
        run_experiment(cfg, config_path=source, overrides=overrides or (), until="eval")
    rows = collect(configs)
    reference = ablation.reference or next(iter(configs))
    out = Path(ablation.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = f"# Ablation: {ablation.name}\n\n" + markdown_table(rows, reference)
    io.write_text_atomic(out / "table.md", table)
    io.write_text_atomic(out / "table.csv", csv_text(rows))
    log(table)
    log(f"[ablate] wrote {out / 'table.md'} and {out / 'table.csv'}")
    return out
