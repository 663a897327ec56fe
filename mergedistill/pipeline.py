"""The pipeline: a chain of stages, each writing one output directory with a manifest.

A stage's fingerprint covers its own config sections, the fingerprints of the stages it reads and the
package version. ``run_stages`` skips a stage whose output directory's manifest holds the same
fingerprint, so a re-run resumes where the last one stopped and a changed input re-runs that stage and
everything after it. Outputs are built in a temp directory and renamed into place (``io.atomic_dir``);
long stages keep resumable state in ``<output_dir>/<stage>.work/``, which survives a kill. A stage that
stops on a ``UserError`` (bad input) removes the work dir it created, so a failed attempt leaves nothing.
A stage name may be a path (``phase2/topic/bistil``, generated per task and variant): its output and work
dir nest under ``output_dir`` the same way.

Under a launcher (``torchrun``/``deepspeed``, ``WORLD_SIZE`` > 1) every rank runs ``run_stages``: rank 0
decides what runs, prepares and owns every work dir and output directory; a stage runs on rank 0 alone
while the other ranks wait for its outcome, unless it is ``sharded`` (cache, train): then every rank runs
it into the shared work dir and rank 0 seals the output once all are done (``mergedistill.ranks``).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mergedistill import __version__, faults, io
from mergedistill.config import to_dict
from mergedistill.errors import UserError
from mergedistill.ranks import SINGLE, Ranks, world_from_env


@dataclass(frozen=True)
class StageContext:
    """What a stage function gets: the config, upstream output dirs, its temp output and work dirs."""

    cfg: Any
    inputs: dict[str, Path]
    out: Path  # temporary output directory; renamed into place when the stage returns
    work: Path  # persistent scratch directory for resumable state (removed after success)
    log: Callable[[str], None]
    ranks: Ranks = SINGLE  # a sharded stage's rank; its ``out`` is a scratch dir on ranks other than 0


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[StageContext], dict | None]  # returns extra manifest fields
    sections: tuple[str, ...] = ()  # config sections (dotted paths allowed) the output depends on
    after: tuple[str, ...] = ()  # upstream stages whose outputs it reads
    external: Callable[[Any], Any] | None = None  # fingerprint of inputs outside the pipeline (corpus, cards)
    doc: str = ""
    sharded: bool = False  # under a launcher, every rank runs it (each its share); otherwise rank 0 alone


def _section(cfg_dict: dict, dotted: str) -> Any:
    value: Any = cfg_dict
    for part in dotted.split("."):
        value = value[part]
    return value


def selects(chosen: set[str], name: str) -> bool:
    """``name`` is one of the ``chosen`` stage names or under one of them (``phase2`` selects ``phase2/topic/x``)."""
    return any(name == c or name.startswith(c + "/") for c in chosen)


def check_selection(stages: list[Stage], **chosen: set[str] | None) -> None:
    """A UserError for a name in ``--only``/``--force`` that selects no stage (a typo would do nothing)."""
    names = [s.name for s in stages]
    for flag, wanted in chosen.items():
        unknown = [c for c in sorted(wanted or ()) if not any(selects({c}, n) for n in names)]
        if unknown:
            raise UserError(f"--{flag} {' '.join(unknown)}: no such stage; the stages are {', '.join(names)}")


def reads_corpus(stage: Stage) -> bool:
    return any(name == "corpus" or name.startswith("corpus.") for name in stage.sections)


def stage_fingerprint(
    stage: Stage, cfg: Any, upstream: dict[str, str], corpus_content: str | None = None, world: int = 1
) -> str:
    """Config sections + upstream fingerprints + external inputs; ``corpus_content`` (the corpus files'
    fingerprint, ``corpus.content_fingerprint``) counts for stages that read the corpus, and the number of
    ranks for sharded stages run by several (the plan holds a micro-batch per rank and step, and a ZeRO
    checkpoint is partitioned across the ranks; one process keeps the fingerprints it always had)."""
    cfg_dict = to_dict(cfg)
    sections = {name: _section(cfg_dict, name) for name in stage.sections}
    external = stage.external(cfg) if stage.external else None
    parts = [__version__, stage.name, sections, {n: upstream[n] for n in stage.after}, external]
    if corpus_content is not None and reads_corpus(stage):
        parts.append(corpus_content)
    if stage.sharded and world > 1:
        parts.append({"world_size": world})
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
    work.mkdir(parents=True, exist_ok=True)  # a generated name (phase2/topic/bistil) nests it
    if created:
        io.write_text_atomic(stamp, fp + "\n")
    return work, created


def _run_on_main(name, ranks, output_dir, final, fp, attempt, seal, log) -> float:
    """Rank 0 runs the stage (work dir, temp output, manifest, rename) while the others wait for its outcome."""
    seconds, err = 0.0, None
    if ranks.main:
        work = output_dir / f"{name}.work"
        new_work = not work.exists()  # decided before _work_dir, which may fail half-way (disk full)
        try:
            work, new_work = _work_dir(output_dir, name, fp, log)
            io.remove_stale_temps(final)
            with io.atomic_dir(final) as tmp:
                seconds = seal(tmp, attempt(tmp, work))
            shutil.rmtree(work, ignore_errors=True)
        except BaseException as caught:
            if (
                isinstance(caught, UserError) and new_work
            ):  # bad input: nothing worth resuming (a kill keeps the work dir)
                shutil.rmtree(work, ignore_errors=True)
            err = caught
    ranks.settle(name, err)
    return seconds


def _run_sharded(name, ranks, output_dir, final, fp, attempt, seal, log) -> float:
    """Every rank runs its share into the one work dir, which rank 0 prepares first; rank 0 seals the output
    after all ranks are done, and the others go on once it is in place. A failure on any rank stops all."""
    work = output_dir / f"{name}.work"
    new_work, err, seconds = ranks.main and not work.exists(), None, 0.0
    try:
        if ranks.main:
            work, new_work = _work_dir(output_dir, name, fp, log)
            io.remove_stale_temps(final)
    except BaseException as caught:
        err = caught
    try:
        ranks.settle(name, err)  # the others start once the work dir is ready
    except UserError:
        if new_work:
            shutil.rmtree(work, ignore_errors=True)
        raise
    try:
        if ranks.main:
            with io.atomic_dir(final) as tmp:
                extras = ranks.together(name, lambda: attempt(tmp, work))
                seconds = seal(tmp, extras)
            shutil.rmtree(work, ignore_errors=True)
        else:
            ranks.together(name, lambda: _attempt_in_scratch(attempt, work, ranks.rank))
    except BaseException as caught:
        if ranks.main and isinstance(caught, UserError) and new_work:
            shutil.rmtree(work, ignore_errors=True)
        err = caught
    try:  # rank 0 has sealed (or failed): the others may go on
        ranks.settle(name, err if ranks.main else None)
    except BaseException:
        if err is None:
            raise
    if err is not None:
        raise err
    return seconds


def _attempt_in_scratch(attempt, work: Path, rank: int) -> dict:
    """A rank other than 0 runs its share with ``out`` in a scratch dir it removes before it reports done,
    so that once all ranks have reported, only rank 0 touches the work dir."""
    scratch = work / f".rank{rank}.out"
    scratch.mkdir(exist_ok=True)
    try:
        return attempt(scratch, work)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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
    ranks: Ranks | None = None,
) -> list[StageResult]:
    """Run ``stages`` in order under ``output_dir``; skip the current ones; return what happened. ``only``
    runs just those stages (their inputs must exist), ``force`` re-runs those even if current; a name there
    also selects the stages under it (``phase2`` = ``phase2/<task>/<variant>`` ...). ``ranks`` defaults to
    the launcher's (``RANK``/``WORLD_SIZE``); ranks other than 0 log only their sharded stages."""
    output_dir = Path(output_dir)
    check_selection(stages, only=only, force=force)
    own_ranks = ranks is None  # connected here: closed here, once every rank is done
    ranks = ranks or Ranks(*world_from_env()).connect(getattr(cfg, "device", "auto"))
    rank_log = (lambda message, say=log: say(f"[rank {ranks.rank}] {message}")) if ranks.world > 1 else log
    if not ranks.main:
        log = lambda message: None  # noqa: E731 (rank 0 reports the pipeline's progress)
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
        fp = stage_fingerprint(stage, cfg, fingerprints, corpus_content, ranks.world)
        final = output_dir / stage.name
        fingerprints[stage.name], paths[stage.name] = fp, final
        wanted = only is None or selects(only, stage.name)
        # rank 0 decides for all: another rank looking later could find the output rank 0 has just sealed
        skip = ranks.share(
            not wanted or (io.is_current(final, fp) and not selects(force or set(), stage.name)) if ranks.main else None
        )
        if skip:
            if wanted:
                log(f"[{stage.name}] up to date, skipped")
            results.append(StageResult(stage.name, "skipped", 0.0, final, fp))
            continue
        absent = ranks.share([n for n in stage.after if not (paths[n] / io.MANIFEST).is_file()] if ranks.main else None)
        if absent:  # only with --only: every other run has just made its inputs
            raise UserError(
                f"--only {stage.name}: it reads {', '.join(absent)}, which {'has' if len(absent) == 1 else 'have'} not "
                f"run in {output_dir}; run without --only, or add {' '.join(absent)} to --only"
            )
        log(f"[{stage.name}] running{': ' + stage.doc if stage.doc else ''}")
        faults.point(f"stage:{stage.name}")
        start = time.perf_counter()

        def attempt(out: Path, work: Path) -> dict:  # this rank's part of the stage
            return (
                stage.run(
                    StageContext(
                        cfg,
                        {n: paths[n] for n in stage.after},
                        out,
                        work,
                        log if ranks.main else rank_log,
                        ranks if stage.sharded else SINGLE,
                    )
                )
                or {}
            )

        def seal(tmp: Path, extras: dict) -> float:
            seconds = time.perf_counter() - start
            io.write_manifest(
                tmp,
                fp,
                stage=stage.name,
                seconds=round(seconds, 3),
                inputs={n: fingerprints[n] for n in stage.after},
                **extras,
            )
            faults.point(f"seal:{stage.name}")
            return seconds

        if stage.sharded and ranks.world > 1:
            seconds = _run_sharded(stage.name, ranks, output_dir, final, fp, attempt, seal, log)
        else:
            seconds = _run_on_main(stage.name, ranks, output_dir, final, fp, attempt, seal, log)
        log(f"[{stage.name}] done in {seconds:.1f} s")
        results.append(StageResult(stage.name, "ran", seconds, final, fp))
    if own_ranks:
        ranks.close()
    return results
