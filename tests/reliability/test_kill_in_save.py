"""A real SIGKILL inside a checkpoint save, landed deterministically, then a resume to the uninterrupted weights.

``MERGEDISTILL_TEST_KILL_AT=save:<step>:<phase>`` (``mergedistill/train.py``, ``_kill_point``) makes
``mergedistill train`` SIGKILL itself inside the save of step ``<step>``: at ``written`` every file of
``checkpoints/step-<step>`` is on disk but ``latest`` still names the previous checkpoint; at ``published``
``latest`` has moved but the older checkpoints are not pruned yet. Here one run of the tiny reliability
experiment (``world.py``: 12 steps, a checkpoint every 3) is killed with step 6 written but not published;
the next run resumes from step 3 to the end, and the trained weights must equal an uninterrupted run's
tensor for tensor. The killed run is a subprocess (the kill is real); the uninterrupted and the resumed
runs go through ``mergedistill.cli.main`` in-process (the same code, without a 5-10 s interpreter start).
The slow ``test_kill_resume.py`` kills at random steps and phases, and at random moments.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mergedistill.cli import main
from mergedistill.train import KILL_AT, read_latest
from tests.reliability.world import build_world, clean_env, cwd


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"), stages_until="cache")


def train_in_process(world: Path, run: str) -> None:
    with cwd(world), open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):
        assert main(["train", "exp.yaml", f"output_dir={run}"]) == 0


def train_killed_at(world: Path, run: str, kill_at: str) -> None:
    env = {**clean_env(), KILL_AT: kill_at}
    done = subprocess.run(
        [sys.executable, "-m", "mergedistill", "train", "exp.yaml", f"output_dir={run}"],
        cwd=world,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


def trained(world: Path, run: str) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    manifest = json.loads((world / run / "train" / "manifest.json").read_text(encoding="utf-8"))
    return load_file(world / run / "train" / "model" / "model.safetensors"), manifest


def test_sigkill_inside_the_save_then_resume_gives_the_uninterrupted_weights(world):
    shutil.copytree(world / "out", world / "reference")
    train_in_process(world, "reference")
    expected, manifest = trained(world, "reference")
    assert manifest["resumed_from_step"] == 0

    shutil.copytree(world / "out", world / "killed")
    checkpoints = world / "killed" / "train.work" / "checkpoints"
    train_killed_at(world, "killed", "save:6:written")
    # step-6 is on disk in full, but the kill came before `latest` moved to it: the resume point stays step 3
    assert (checkpoints / "step-6" / "mp_rank_00_model_states.pt").is_file()
    assert read_latest(checkpoints) == "step-3"
    assert not (world / "killed" / "train").exists()
    train_in_process(world, "killed")
    weights, manifest = trained(world, "killed")
    assert manifest["resumed_from_step"] == 3
    assert weights.keys() == expected.keys()
    assert [name for name in expected if not torch.equal(weights[name], expected[name])] == []
    steps = [
        json.loads(line)["step"] for line in (world / "killed" / "train" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(1, 13))  # steps 4-6, logged before the kill, were redone and are listed once
