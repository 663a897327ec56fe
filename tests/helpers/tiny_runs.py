"""Finished tiny `mergedistill run`s, one per (student architecture, tokenization), shared by every test that
reads a run's outputs (tests/test_export.py, tests/test_report_numbers.py).

All variants run in ONE output directory with the config overridden per variant, so the pipeline's own
skipping shares the teachers, select and vocab stages (and the cache between architectures); after each run
the output directory is copied aside, so every variant keeps its own train/eval/export/report. The
experiment is tests/test_run_pipeline.py's (three demo-style teachers of three tokenizer families, en/de/ja).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

ARCHS = ("deberta-v2", "bert")  # the demo's student architecture (experiments/demo.yaml `student.arch`) and BERT
TOKENIZATIONS = ("routed", "unified")
WITH_BASELINE = ("bert", "routed")  # one variant also trains the gold-MLM baseline, so its report has every table


@dataclass(frozen=True)
class TinyRun:
    arch: str
    tokenization: str
    config: Path  # the experiment YAML
    overrides: tuple[str, ...]  # the overrides the run used (output_dir points at the shared directory)
    out: Path  # this variant's copy of the output directory

    def cfg(self):
        """The resolved config of this run, its output_dir pointing at this variant's copy."""
        from mergedistill.config import load_config

        return load_config(self.config, [*self.overrides, f"output_dir={self.out}"])


class TinyRuns:
    def __init__(self, root: Path):
        from tests.test_run_pipeline import CARD, EXPERIMENT

        self.root = root
        (root / "multi.yaml").write_text(
            CARD.format(name="multi", root=root, langs="en, de, ja", family="wordpiece", arch="bert")
        )
        (root / "de.yaml").write_text(CARD.format(name="de", root=root, langs="de", family="bytelevel", arch="roberta"))
        (root / "ja.yaml").write_text(
            CARD.format(name="ja", root=root, langs="ja", family="unigram", arch="xlm-roberta")
        )
        (root / "exp.yaml").write_text(EXPERIMENT.format(root=root))
        self.runs: dict[tuple[str, str], TinyRun] = {}

    def get(self, arch: str, tokenization: str) -> TinyRun:
        if (arch, tokenization) not in self.runs:
            from mergedistill.cli import main

            baseline = "true" if (arch, tokenization) == WITH_BASELINE else "false"
            overrides = (
                f"output_dir={self.root / 'out'}",
                f"student.arch={arch}",
                f"data.tokenization={tokenization}",
                f"eval.baseline={baseline}",
            )
            assert main(["run", str(self.root / "exp.yaml"), *overrides]) == 0
            copy = self.root / f"{arch}-{tokenization}"
            shutil.copytree(self.root / "out", copy, ignore=shutil.ignore_patterns("topk", "*.work"))
            self.runs[arch, tokenization] = TinyRun(arch, tokenization, self.root / "exp.yaml", overrides, copy)
        return self.runs[arch, tokenization]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> TinyRuns:
    return TinyRuns(tmp_path_factory.mktemp("tiny_runs"))
