import json

import pytest
import torch

from mergedistill.cache import OnlineTargets
from mergedistill.config import StudentConfig, TrainConfig
from mergedistill.data import DataPlan, make_stream
from mergedistill.errors import UserError
from mergedistill.student import build_student
from mergedistill.train import LATEST, read_latest, train
from tests.conftest import ASSIGNMENT

STUDENT = StudentConfig(layers=1, hidden=32, heads=2, intermediate=64, max_position=80, dropout=0.1)


@pytest.fixture(scope="module")
def plan(teachers, texts, merged):
    streams = [
        make_stream(lang, teachers[t], texts[lang], merged.id_maps[t], max_length=48)
        for lang, (t,) in sorted(ASSIGNMENT.items())
    ]
    return DataPlan(streams, batch_size=4, n_batches=200, seed=0)


def cfg(**changes):
    base = dict(steps=6, batch_size=4, lr=3e-3, warmup_steps=1, checkpoint_every=2, log_every=1)
    return TrainConfig(**{**base, **changes})


def run(tmp, plan, merged, teachers, train_cfg, **kw):
    student = build_student(STUDENT, len(merged), seed=0)
    targets = OnlineTargets(teachers, merged.id_maps, 4)
    result = train(student, train_cfg, plan.batch, targets, tmp, progress=False, log=lambda m: None, **kw)
    return student, result


def test_training_lowers_the_loss_and_logs(tmp_path, plan, merged, teachers):
    student, result = run(tmp_path, plan, merged, teachers, cfg(steps=30, checkpoint_every=30, lr=5e-3))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 30 and {"loss", "loss_kd", "loss_mlm", "tokens_per_s", "lr"} <= set(records[0])
    first = sum(r["loss"] for r in records[:5]) / 5
    last = sum(r["loss"] for r in records[-5:]) / 5
    assert last < first - 0.3
    assert list((tmp_path / "tensorboard").iterdir())


def test_one_process_skips_deepspeeds_shared_memory_op_and_steps_adam_with_foreach(tmp_path, plan, merged, teachers):
    """A world of one needs no shared-memory collectives: DeepSpeed's op (a C++ build on each new venv) is not loaded."""
    from deepspeed.comm import comm

    from mergedistill.train import deepspeed_config

    run(tmp_path, plan, merged, teachers, cfg(steps=1, checkpoint_every=1))
    assert comm.cdb is not None and comm.cdb.shm_comm_op is None
    assert deepspeed_config(cfg(), 1)["optimizer"]["params"]["foreach"] is True


def test_zero_warmup_steps_trains_with_deepspeeds_shortest_warmup(tmp_path, plan, merged, teachers):
    """``warmup_steps: 0`` is valid config, but DeepSpeed's scheduler refuses 0: it runs with its shortest warm-up."""
    run(tmp_path, plan, merged, teachers, cfg(steps=5, warmup_steps=0, checkpoint_every=5))
    rates = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rates) == 5 and max(rates) == pytest.approx(3e-3) and rates.index(max(rates)) == 2
    assert rates[-1] < rates[-2] < max(rates)


def test_resume_reproduces_the_uninterrupted_run(tmp_path, plan, merged, teachers):
    full, _ = run(tmp_path / "full", plan, merged, teachers, cfg())
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", plan, merged, teachers, cfg(), stop_at_step=3)
    assert read_latest(tmp_path / "cut" / "checkpoints") == "step-2"
    resumed, result = run(tmp_path / "cut", plan, merged, teachers, cfg())
    assert result.resumed_from == 2
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # step 3 was logged before the kill and redone after the resume: it is listed once, like every step
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


def test_trim_metrics_keeps_steps_up_to_the_checkpoint_and_drops_a_cut_line(tmp_path):
    from mergedistill.train import trim_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 3}\n{"step": 2, "loss": 2}\n{"step": 3, "loss": 1}\n{"step": 4, "lo')
    trim_metrics(path, 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    trim_metrics(path, 0)
    assert path.read_text() == ""
    trim_metrics(tmp_path / "absent.jsonl", 3)  # nothing to trim
    assert not (tmp_path / "absent.jsonl").exists()


def test_a_half_written_checkpoint_is_never_the_latest(tmp_path, plan, merged, teachers):
    run(tmp_path, plan, merged, teachers, cfg(steps=4))
    checkpoints = tmp_path / "checkpoints"
    assert (checkpoints / LATEST).read_text().strip() == "step-4"
    (checkpoints / "step-6").mkdir()  # a save killed before the pointer moved
    assert read_latest(checkpoints) == "step-4"
    (checkpoints / LATEST).write_text("step-9\n")  # pointer to a missing dir is ignored
    assert read_latest(checkpoints) is None


def test_nan_loss_is_a_user_error(tmp_path, plan, merged, teachers):
    with pytest.raises(UserError, match="train.lr"):
        run(tmp_path, plan, merged, teachers, cfg(lr=1e6, steps=20, grad_clip=0.0))


def test_zero3_partitions_the_student_and_gives_back_its_full_trained_weights(tmp_path, plan, merged, teachers):
    from mergedistill.train import unpartitioned_student

    partition_all = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}  # small tensors too
    reference, _ = run(tmp_path / "z0", plan, merged, teachers, cfg(steps=4))
    sharded, result = run(tmp_path / "z3", plan, merged, teachers, cfg(steps=4, zero_stage=3, deepspeed=partition_all))
    assert all(p.numel() == 0 for p in sharded.parameters())  # ZeRO-3 moved the weights into shards
    plain = unpartitioned_student(sharded, result)
    expected, got = reference.state_dict(), plain.state_dict()
    assert set(expected) == set(got)
    for key in expected:
        assert got[key].shape == expected[key].shape
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)
    assert not torch.equal(
        got["bert.embeddings.word_embeddings.weight"],
        build_student(STUDENT, len(merged), seed=0).state_dict()["bert.embeddings.word_embeddings.weight"],
    )
