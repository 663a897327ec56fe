"""The pipeline: a chain of stages, each writing one output directory with a manifest.

A stage's fingerprint covers its own config sections, the fingerprints of the stages it reads and the
package version. ``run_stages`` skips a stage whose output directory's manifest holds the same
fingerprint, so a re-run resumes where the last one stopped and a changed input re-runs that stage and
everything after it. Outputs are built in a temp directory and renamed into place (``io.atomic_dir``);
long stages keep resumable state in ``<output_dir>/<stage>.work/``, which survives a kill. A stage that
stops on a ``UserError`` (bad input) removes the work dir it created, so a failed attempt leaves nothing.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mergedistill import __version__, io
from mergedistill.config import to_dict
from mergedistill.errors import UserError


@dataclass(frozen=True)
class StageContext:
    """What a stage function gets: the config, upstream output dirs, its temp output and work dirs."""

    cfg: Any
    inputs: dict[str, Path]
    out: Path  # temporary output directory; renamed into place when the stage returns
    work: Path  # persistent scratch directory for resumable state (removed after success)
    log: Callable[[str], None]


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[StageContext], dict | None]  # returns extra manifest fields
    sections: tuple[str, ...] = ()  # config sections (dotted paths allowed) the output depends on
    after: tuple[str, ...] = ()  # upstream stages whose outputs it reads
    external: Callable[[Any], Any] | None = None  # fingerprint of inputs outside the pipeline (corpus, cards)
    doc: str = ""


def _section(cfg_dict: dict, dotted: str) -> Any:
    value: Any = cfg_dict
    for part in dotted.split("."):
        value = value[part]
    return value


def reads_corpus(stage: Stage) -> bool:
    return any(name == "corpus" or name.startswith("corpus.") for name in stage.sections)


def stage_fingerprint(stage: Stage, cfg: Any, upstream: dict[str, str], corpus_content: str | None = None) -> str:
    """Config sections + upstream fingerprints + external inputs; ``corpus_content`` (the corpus files'
    fingerprint, ``corpus.content_fingerprint``) counts for stages that read the corpus."""
    cfg_dict = to_dict(cfg)
    sections = {name: _section(cfg_dict, name) for name in stage.sections}
    external = stage.external(cfg) if stage.external else None
    parts = [__version__, stage.name, sections, {n: upstream[n] for n in stage.after}, external]
    if corpus_content is not None and reads_corpus(stage):
        parts.append(corpus_content)
    return io.fingerprint(*parts)


def _work_dir(output_dir: Path, stage: str, fp: str, log: Callable[[str], None]) -> tuple[Path, bool]:
    """``<stage>.work`` for this fingerprint: resumable state left by a killed attempt with the same inputs
    is kept; state from different inputs (config or data changed since) is discarded. (dir, created)."""
    work = output_dir / f"{stage}.work"
    stamp = work / ".fingerprint"
    if work.exists() and (not stamp.is_file() or stamp.read_text(encoding="utf-8").strip() != fp):
        log(f"[{stage}] inputs changed since the interrupted attempt: discarding {work}")
        shutil.rmtree(work)
    created = not work.exists()
    work.mkdir(exist_ok=True)
    if created:
        io.write_text_atomic(stamp, fp + "\n")
    return work, created


@dataclass
class StageResult:
    name: str
    status: str  # "ran" | "skipped"
    seconds: float
    path: Path
    fingerprint: str = field(repr=False, default="")


def run_stages(
    cfg: Any,
    stages: list[Stage],
    output_dir: str | Path,
    only: set[str] | None = None,
    force: set[str] | None = None,
    log: Callable[[str], None] = print,
) -> list[StageResult]:
    """Run ``stages`` in order under ``output_dir``; skip the current ones; return what happened."""
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"output_dir {output_dir}: cannot create it ({err.strerror}); choose a writable path") from None
    if not os.access(output_dir, os.W_OK):
        raise UserError(f"output_dir {output_dir}: not writable; choose a writable path")
    fingerprints: dict[str, str] = {}
    paths: dict[str, Path] = {}
    results = []
    known = {s.name for s in stages}
    corpus_content = None
    if any(reads_corpus(stage) for stage in stages) and hasattr(cfg, "corpus"):
        from mergedistill.corpus import content_fingerprint

        corpus_content = content_fingerprint(cfg.corpus)
    for stage in stages:
        missing = [n for n in stage.after if n not in known]
        if missing:
            raise ValueError(f"stage {stage.name} reads unknown stage(s) {missing}")
        fp = stage_fingerprint(stage, cfg, fingerprints, corpus_content)
        final = output_dir / stage.name
        fingerprints[stage.name], paths[stage.name] = fp, final
        wanted = only is None or stage.name in only
        if not wanted or (io.is_current(final, fp) and not (force and stage.name in force)):
            if wanted:
                log(f"[{stage.name}] up to date, skipped")
            results.append(StageResult(stage.name, "skipped", 0.0, final, fp))
            continue
        log(f"[{stage.name}] running{': ' + stage.doc if stage.doc else ''}")
        start = time.perf_counter()
        work = output_dir / f"{stage.name}.work"
        new_work = not work.exists()  # decided before _work_dir, which may fail half-way (disk full)
        try:
            work, new_work = _work_dir(output_dir, stage.name, fp, log)
            io.remove_stale_temps(final)
            with io.atomic_dir(final) as tmp:
                context = StageContext(cfg, {n: paths[n] for n in stage.after}, tmp, work, log)
                extras = stage.run(context) or {}
                seconds = time.perf_counter() - start
                io.write_manifest(tmp, fp, stage=stage.name, seconds=round(seconds, 3), inputs={n: fingerprints[n] for n in stage.after}, **extras)
        except UserError:
            if new_work:  # bad input: this attempt made nothing worth resuming (a kill keeps the work dir)
                shutil.rmtree(work, ignore_errors=True)
            raise
        shutil.rmtree(work, ignore_errors=True)
        log(f"[{stage.name}] done in {seconds:.1f} s")
        results.append(StageResult(stage.name, "ran", seconds, final, fp))
    return results
