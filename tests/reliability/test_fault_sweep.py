"""SIGKILL `mergedistill run` at points chosen at random over every stage, re-run it, and get exactly the
outputs of an uninterrupted run: one process (16 kills, two per stage), and one rank of a two-rank
`torchrun` run (6 kills, rank 0 and rank 1).

The kills are real SIGKILLs at exact moments: ``mergedistill.faults`` kills the process the N-th time it
passes a named point (``MERGEDISTILL_KILL_AT=NAME@N[@RANK]``), so a kill lands inside a cache chunk write
or between a checkpoint's files and its ``latest`` pointer however loaded the machine is. An uninterrupted
run, traced (``MERGEDISTILL_FAULT_TRACE``), lists the points it passes in order; the sweep picks some at
random (seeded), two per stage for one process, and for each:

1. a fresh output dir gets the uninterrupted run's outputs of the stages before the chosen point's stage
   (what a run killed there would have finished), so the point is reached after the same passes;
2. the run is killed there (asserted: it died of SIGKILL, or under torchrun the rank did);
3. the same command again must finish; every stage's manifest must be current, nothing must be left
   over (temp, work, scratch, ``.old``), and the cache chunks (byte for byte), the student (tensor for
   tensor) and the evaluation rows must equal the uninterrupted one-process run's (two ranks x one
   micro-batch equal one process x two exactly; see ``tests/test_multirank_run.py``).

``MERGEDISTILL_SWEEP_RESULTS=tests/reliability/fault_sweep.json`` records what was killed where; the
committed record is the table in docs/reliability.md (``scripts/reliability_table.py``). Slow: some 25
minutes on 2 cores (each kill is two start-ups; under torchrun, of two processes each).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mergedistill.train import free_port
from tests.reliability.world import build_world, clean_env
from tests.test_multirank_run import OVERRIDES, STAGES, assert_complete_and_current, assert_same_student

pytestmark = pytest.mark.slow

SEED = 20
TIMEOUT = 900
RESULTS: list[dict] = []


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("sweep"))


def record(kill: dict) -> None:
    """Keep the kill in the sweep's record (written after each one, so a stopped sweep keeps what it did)."""
    RESULTS.append(kill)
    target = os.environ.get("MERGEDISTILL_SWEEP_RESULTS")
    if target:
        Path(target).write_text(json.dumps({"seed": SEED, "kills": RESULTS}, indent=1) + "\n", encoding="utf-8")


def command(ranks: int, output: str) -> list[str]:
    args = ["run", "exp.yaml", *OVERRIDES, f"output_dir={output}"] + (["train.grad_accum=2"] if ranks == 1 else [])
    if ranks == 1:
        return [sys.executable, "-m", "mergedistill", *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "mergedistill",
        *args,
    ]


def overrides(ranks: int, output: str) -> list[str]:
    return OVERRIDES + [f"output_dir={output}"] + (["train.grad_accum=2"] if ranks == 1 else [])


def launch(world: Path, ranks: int, output: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(ranks, output), cwd=world, env={**clean_env(), **env}, capture_output=True, text=True, timeout=TIMEOUT
    )


def traced_run(world: Path, ranks: int, output: str) -> dict[int, list[str]]:
    """An uninterrupted run; the points each rank passed, in order."""
    trace = world / f"trace-{output}"
    result = launch(world, ranks, output, MERGEDISTILL_FAULT_TRACE=str(trace))
    assert result.returncode == 0, result.stderr[-4000:]
    return {rank: Path(f"{trace}.{rank}").read_text(encoding="utf-8").split() for rank in range(ranks)}


def segments(points: list[str]) -> dict[str, tuple[int, int]]:
    """stage -> (first, end) indices of its points in a trace (a stage starts at ``stage:<name>``)."""
    starts = [(i, p.split(":", 1)[1]) for i, p in enumerate(points) if p.startswith("stage:")]
    return {name: (i, starts[k + 1][0] if k + 1 < len(starts) else len(points)) for k, (i, name) in enumerate(starts)}


def describe(point: str, n: int) -> str:
    kind, _, stage = point.partition(":")
    return {
        "stage": "the stage starts",
        "seal": "output complete, before its rename into place",
        "write": f"atomic file write #{n} of the stage done, before its rename",
        "chunk": f"inside cache chunk #{n}'s write",
        "step": f"after optimizer step #{n} of the attempt",
        "checkpoint": f"checkpoint #{n} written, before `latest` points to it",
    }[kind]


def kill_and_resume(
    world: Path, reference: Path, source: Path, ranks: int, stage: str, point: str, n: int, rank: int, run: str
) -> None:
    out = world / run
    out.mkdir()
    for done in STAGES[: STAGES.index(stage)]:
        shutil.copytree(source / done, out / done)
    if "cache" in STAGES[: STAGES.index(stage)]:  # with the Arrow data the cache stage built, as a killed run has it
        shutil.copytree(source / "data", out / "data")
    spec = f"{point}@{n}" + (f"@{rank}" if ranks > 1 else "")
    killed = launch(world, ranks, run, MERGEDISTILL_KILL_AT=spec)
    if ranks == 1:
        assert killed.returncode == -signal.SIGKILL, f"{spec}: exit {killed.returncode}\n{killed.stderr[-3000:]}"
    else:
        assert killed.returncode != 0 and re.search(rf"rank\s*:\s*{rank} .*\n\s*exitcode\s*:\s*-9 ", killed.stderr), (
            f"{spec}: rank {rank} was not killed\n{killed.stderr[-3000:]}"
        )
    resumed = launch(world, ranks, run)
    assert resumed.returncode == 0, f"{spec}: the re-run failed\n{resumed.stderr[-4000:]}"
    assert_complete_and_current(world, out, overrides(ranks, run), ranks)
    for name in sorted(p.name for p in (reference / "cache" / "topk").glob("chunk-*.arrow")):
        assert (out / "cache" / "topk" / name).read_bytes() == (reference / "cache" / "topk" / name).read_bytes(), (
            f"{spec}: {name}"
        )
    assert_same_student(out, reference)
    record(
        {
            "launch": "1 process" if ranks == 1 else f"torchrun, {ranks} ranks",
            "killed_rank": rank,
            "stage": stage,
            "point": f"{point}@{n}",
            "moment": describe(point, n),
            "outcome": "re-run equal",
        }
    )
    shutil.rmtree(out)


@pytest.fixture(scope="module")
def reference(world):
    trace = traced_run(world, 1, "reference")
    return world / "reference", trace[0]


def test_one_process_killed_at_two_random_points_per_stage_resumes_to_the_same_outputs(world, reference):
    ref, points = reference
    rng = random.Random(SEED)
    parts = segments(points)
    assert list(parts) == list(STAGES)
    for stage in STAGES:
        first, end = parts[stage]
        must = {"cache": "chunk", "train": "checkpoint"}.get(stage)  # one kill inside a chunk write / a checkpoint save
        pool = list(range(first, end))
        picks = [rng.choice([i for i in pool if points[i] == must])] if must else []
        picks += rng.sample([i for i in pool if i not in picks], 2 - len(picks))
        for k, index in enumerate(sorted(picks)):
            name = points[index]
            kill_and_resume(
                world, ref, ref, 1, stage, name, points[first : index + 1].count(name), 0, f"one-{stage}-{k}"
            )


def test_one_rank_of_two_killed_at_random_points_resumes_to_the_same_outputs(world, reference):
    ref, _ = reference
    traces = traced_run(world, 2, "two")
    source = world / "two"
    assert_same_student(source, ref)
    rng = random.Random(SEED + 1)
    for rank in (0, 1):
        points = traces[rank]
        parts = segments(points)
        picks = [
            rng.choice([i for i, p in enumerate(points) if p == "chunk"]),
            rng.choice([i for i, p in enumerate(points) if p == "checkpoint"]),
        ]
        picks.append(rng.choice([i for i in range(len(points)) if i not in picks]))
        for k, index in enumerate(picks):
            stage = next(name for name, (first, end) in parts.items() if first <= index < end)
            name = points[index]
            kill_and_resume(
                world,
                ref,
                source,
                2,
                stage,
                name,
                points[parts[stage][0] : index + 1].count(name),
                rank,
                f"two-{rank}-{k}",
            )
