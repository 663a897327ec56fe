"""`mergedistill run` under a launcher, two ranks on CPU (gloo), against one process with the same global batch.

The reliability tests' tiny experiment (``tests/reliability/world.py``), teachers through report, 30 steps:
two ranks with one micro-batch of 4 each per step against one process with two (``train.grad_accum=2``).
Both plan the same 60 micro-batches, so the same two cache chunks (one built by each rank) and the same
teacher targets; rank r reads micro-batch 2*step + r, the one process both. The outputs must be complete
and current (every manifest holds the fingerprint a two-rank run computes), with nothing left behind (no
temp, work or scratch dirs), the cache chunks byte for byte the one process's, and the student and its
evaluation exactly the one process's: the one process halves each micro-batch's loss and sums the
gradients, the two ranks sum theirs and halve the sum; halving is exact in binary floating point and a
sum of two commutes, so no tolerance is needed. Dropout is off: each rank's dropout RNG would differ.

The default suite runs the `torchrun` case with the offline cache; the `deepspeed` launcher with teachers
run online is slow-marked (another minute and a half of two-process start-up on a 2-core machine).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mergedistill.cli import main
from mergedistill.io import read_manifest
from mergedistill.train import free_port
from tests.reliability.world import build_world, clean_env, cwd

# 30 steps x 2 ranks = 60 micro-batches: two cache chunks of 50, one per rank; eval needs the teachers' 64 positions
OVERRIDES = ["train.steps=30", "student.dropout=0", "student.max_position=66"]
STAGES = ("teachers", "select", "vocab", "cache", "train", "eval", "export", "report")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("multirank"))


def run_one_process(world: Path, output: str, *extra: str) -> Path:
    with cwd(world):
        assert main(["run", "exp.yaml", *OVERRIDES, "train.grad_accum=2", f"output_dir={output}", *extra]) == 0
    return world / output


def run_two_ranks(world: Path, launcher: str, output: str, *extra: str) -> Path:
    port = str(free_port())
    if launcher == "torchrun":
        head = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            port,
            "-m",
            "mergedistill",
        ]
    else:  # puts --local_rank=N before the verb
        head = [
            str(Path(sys.executable).parent / "deepspeed"),
            "--num_gpus",
            "2",
            "--master_port",
            port,
            "--module",
            "mergedistill",
        ]
    result = subprocess.run(
        [*head, "run", "exp.yaml", *OVERRIDES, f"output_dir={output}", *extra],
        cwd=world,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert_ranks_share_the_arrow_data(result.stderr, world, output)
    # each rank built its own chunk (lines may interleave with rank 0's progress bar)
    if "cache.mode=online" not in extra:
        assert re.search(r"(?<!\[rank 1\] )\[cache\] built 1 chunk\(s\): 0\n", result.stderr), result.stderr[-3000:]
        assert re.search(r"\[rank 1\] \[cache\] built 1 chunk\(s\): 1\n", result.stderr), result.stderr[-3000:]
    return world / output


def assert_ranks_share_the_arrow_data(stderr: str, world: Path, output: str) -> None:
    """Rank 0 built each stream's Arrow file once, in the cache stage; rank 1 built none and opened the same files
    (in the cache stage, after rank 0, and in the train stage), and so did rank 0 in the train stage."""
    data_files = sorted(str(p.relative_to(world)) for p in (world / output / "data").glob("*/sequences.arrow"))

    def paths(rank: int, verb: str) -> list[str]:
        prefix = r"\[rank 1\] " if rank else r"(?<!\[rank 1\] )"  # rank 0's lines have no prefix
        return sorted(re.findall(prefix + r"\[data\] \S+: " + verb + r" (\S+)", stderr))

    assert data_files and paths(0, "built") == data_files, stderr[-3000:]
    assert paths(1, "built") == []
    assert paths(1, "opened") == sorted(data_files * 2)  # in the cache and the train stage
    assert paths(0, "opened") == data_files  # in the train stage


def assert_complete_and_current(world: Path, out: Path, overrides: list[str], ranks: int) -> None:
    """Every stage's manifest holds the fingerprint a run with ``ranks`` ranks computes; nothing else is left."""
    from mergedistill.config import load_config
    from mergedistill.corpus import content_fingerprint
    from mergedistill.pipeline import stage_fingerprint
    from mergedistill.stages import pipeline_stages

    with cwd(world):
        cfg = load_config("exp.yaml", overrides)
        corpus = content_fingerprint(cfg.corpus)
        fingerprints: dict[str, str] = {}
        for stage in pipeline_stages(cfg):
            fingerprints[stage.name] = stage_fingerprint(stage, cfg, fingerprints, corpus, ranks)
            assert (read_manifest(out / stage.name) or {}).get("fingerprint") == fingerprints[stage.name], stage.name
    assert sorted(p.name for p in out.iterdir()) == sorted(STAGES + ("data",))
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith((".tmp", ".work", ".old"))]
    assert not leftovers, leftovers


def assert_same_student(two: Path, one: Path) -> None:
    import torch
    from safetensors.torch import load_file

    a, b = (
        load_file(two / "train" / "model" / "model.safetensors"),
        load_file(one / "train" / "model" / "model.safetensors"),
    )
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"tensors differ from the one-process run: {different}"
    rows = [json.loads((out / "eval" / "eval.json").read_text())["rows"] for out in (two, one)]
    assert rows[0] == rows[1]
    plans = [json.loads((out / "cache" / "plan.json").read_text()) for out in (two, one)]
    assert plans[0] == plans[1] and plans[0]["batches"] == 60


def test_torchrun_two_ranks_offline_cache_equal_one_process(world):
    one = run_one_process(world, "one")
    two = run_two_ranks(world, "torchrun", "two")
    assert_complete_and_current(world, two, OVERRIDES + ["output_dir=two"], ranks=2)
    chunks = sorted(p.name for p in (two / "cache" / "topk").glob("chunk-*.arrow"))
    assert (
        chunks
        == sorted(p.name for p in (one / "cache" / "topk").glob("chunk-*.arrow"))
        == ["chunk-00000.arrow", "chunk-00001.arrow"]
    )
    for name in chunks:
        assert (two / "cache" / "topk" / name).read_bytes() == (one / "cache" / "topk" / name).read_bytes(), name
    assert read_manifest(two / "cache")["cache_fingerprint"] == read_manifest(one / "cache")["cache_fingerprint"]
    assert_same_student(two, one)
    data = sorted(p.relative_to(two) for p in (two / "data").rglob("*") if p.is_file())
    assert data == sorted(p.relative_to(one) for p in (one / "data").rglob("*") if p.is_file())
    assert all((two / p).read_bytes() == (one / p).read_bytes() for p in data)


@pytest.mark.slow
def test_deepspeed_launcher_two_ranks_online_teachers_equal_one_process(world):
    one = run_one_process(world, "one-online", "cache.mode=online")
    two = run_two_ranks(world, "deepspeed", "two-online", "cache.mode=online")
    assert_complete_and_current(world, two, OVERRIDES + ["output_dir=two-online", "cache.mode=online"], ranks=2)
    assert read_manifest(two / "cache")["mode"] == "online" and not (two / "cache" / "topk").exists()
    assert_same_student(two, one)
