"""SIGKILL `mergedistill train` at random moments, resume, and get exactly the uninterrupted run's weights.

For three seeds, a copy of a tiny finished experiment (``world.py``, stages up to the cache) trains a
1.7 M-parameter student for 16 steps with a checkpoint every 4 (each save takes some 20 ms):

1. a fresh run is killed as soon as the directory of a randomly chosen checkpoint appears, i.e. while
   DeepSpeed writes it and before ``latest`` moves to it;
2. the resumed run is killed after a random step (plus a random few milliseconds);
3. the last run resumes and finishes.

After every kill, ``latest`` (when present) names a checkpoint directory whose model states load with
``torch.load`` and hold the step of its name; the final weights (``out/train/model``) equal those of an
uninterrupted run tensor for tensor (``torch.equal``). There is no ``--resume`` flag: the ``train`` verb
resumes from ``<output_dir>/train.work/checkpoints/latest`` on its own, which is what is tested.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reliability.world import build_world, clean_env

pytestmark = pytest.mark.slow

STEPS, EVERY = 16, 4
# a student big enough that a checkpoint save takes measurable time, so a kill can land inside it
OVERRIDES = [
    "student.hidden=256",
    "student.intermediate=1024",
    "student.layers=2",
    "student.heads=4",
    f"train.steps={STEPS}",
    f"train.checkpoint_every={EVERY}",
    "train.log_every=1",
]
TIMEOUT = 120


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"), stages_until="cache")


def launch(world: Path, run: str, log_name: str) -> subprocess.Popen:
    log = open(world / "logs" / f"{log_name}.txt", "wb")
    env = {**clean_env(), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mergedistill", "train", "exp.yaml", f"output_dir={run}", *OVERRIDES],
        cwd=world,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return process


def wait_until(process: subprocess.Popen, condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (exit {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.0005)


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=TIMEOUT) == -signal.SIGKILL


def logged_steps(metrics: Path) -> list[int]:
    try:
        lines = metrics.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line)["step"] for line in lines if line.endswith("}")]  # the last line may be half-written


def latest_tag(checkpoints: Path) -> str | None:
    pointer = checkpoints / "latest"
    return pointer.read_text(encoding="utf-8").strip() if pointer.exists() else None


def assert_latest_loadable(checkpoints: Path) -> int:
    """``latest`` names a complete checkpoint (or is absent before the first one); returns its step (0 if none)."""
    import torch

    tag = latest_tag(checkpoints)
    if tag is None:
        return 0
    states = torch.load(checkpoints / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    step = int(tag.split("-")[1])
    assert states["step"] == step and states["module"], f"{tag}: model states of step {states.get('step')}"
    assert all(torch.isfinite(v).all() for v in states["module"].values() if v.is_floating_point())
    return step


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    manifest = json.loads((run_dir / "train" / "manifest.json").read_text(encoding="utf-8"))
    return load_file(run_dir / "train" / "model" / "model.safetensors"), manifest


def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_weights(world):
    import torch

    (world / "logs").mkdir()
    shutil.copytree(world / "out", world / "reference")
    reference = launch(world, "reference", "reference")
    assert reference.wait(timeout=TIMEOUT) == 0, (world / "logs" / "reference.txt").read_text()[-3000:]
    expected, reference_manifest = final_weights(world / "reference")
    assert reference_manifest["resumed_from_step"] == 0

    for seed in (0, 1, 2):
        rng = random.Random(seed)
        run = f"seed{seed}"
        shutil.copytree(world / "out", world / run)
        checkpoints = world / run / "train.work" / "checkpoints"
        metrics = world / run / "train.work" / "metrics.jsonl"

        # 1. kill while a randomly chosen checkpoint is being written (before `latest` points to it)
        target = f"step-{rng.choice(range(EVERY, STEPS, EVERY))}"
        process = launch(world, run, f"{run}-1")
        wait_until(process, lambda: (checkpoints / target).is_dir(), f"{target} appeared")
        kill(process)
        assert (checkpoints / target).is_dir() and latest_tag(checkpoints) != target, (
            "the kill landed after the checkpoint was published"
        )
        resumed_from = assert_latest_loadable(checkpoints)
        assert resumed_from == int(target.split("-")[1]) - EVERY

        # 2. resume, then kill after a random later step (plus a few random milliseconds)
        seen = len(logged_steps(metrics))
        stop_after = rng.randint(resumed_from + 1, STEPS - 2)  # at least two steps and a save left to kill
        process = launch(world, run, f"{run}-2")
        wait_until(process, lambda: any(s >= stop_after for s in logged_steps(metrics)[seen:]), f"step {stop_after}")
        time.sleep(rng.uniform(0.0, 0.03))
        kill(process)
        resumed_from = assert_latest_loadable(checkpoints)
        print(
            f"seed {seed}: killed while writing {target}, then after step {max(logged_steps(metrics))} "
            f"(latest: {latest_tag(checkpoints)}); resuming from step {resumed_from}"
        )

        # 3. resume to the end
        process = launch(world, run, f"{run}-3")
        assert process.wait(timeout=TIMEOUT) == 0, (world / "logs" / f"{run}-3.txt").read_text()[-3000:]
        weights, manifest = final_weights(world / run)
        assert manifest["resumed_from_step"] == resumed_from
        assert not (world / run / "train.work").exists()
        assert weights.keys() == expected.keys()
        different = [name for name in expected if not torch.equal(weights[name], expected[name])]
        assert not different, f"seed {seed}: tensors differ from the uninterrupted run: {different}"
