"""Two ranks under `torchrun` (gloo on CPU) against one process with the same global batch."""

import os
import subprocess
import sys

import torch

from mergedistill.train import free_port, train
from tests.helpers.two_rank_train import make_student, recording, train_config


def test_two_ranks_read_distinct_batches_and_equal_one_process_with_the_same_global_batch(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "tests/helpers/two_rank_train.py",
        str(tmp_path),
    ]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env=env, cwd=os.path.dirname(os.path.dirname(__file__))
    )
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-4"

    # one process, two micro-batches of the same size per step: the same global batch
    student, read = make_student(), []
    train(student, train_config(grad_accum=2), recording(read), None, tmp_path / "one", progress=False)
    steps = train_config().steps
    assert not set(a["read"]) & set(b["read"]) and len(a["read"]) == len(b["read"]) == steps
    for step in range(steps):  # each step, the two ranks' micro-batches are the one process's two
        assert {a["read"][step], b["read"][step]} == set(read[2 * step : 2 * step + 2])
    # exact, not close: the one process scales each micro-batch's loss by 1/2 and sums the gradients, the two
    # ranks sum theirs and divide by 2; halving is exact in binary floating point and a sum of two commutes
    expected = student.state_dict()
    different = [k for k in expected if not torch.equal(a["weights"][k], expected[k])]
    assert not different, different

    # bf16 under ZeRO-2: every rank exports the same fp32 master weights, whose bf16 rounding is the module
    a, b = torch.load(tmp_path / "bf16-rank0.pt"), torch.load(tmp_path / "bf16-rank1.pt")
    assert all(torch.equal(a["exported"][k], b["exported"][k]) for k in a["exported"])
    for key, low in a["weights"].items():
        if low.is_floating_point():
            assert low.dtype == torch.bfloat16 and a["exported"][key].dtype == torch.float32
            assert torch.equal(a["exported"][key].to(torch.bfloat16), low), key
