"""ZeRO-2, bf16 and gradient accumulation against the plain run (ZeRO-0, fp32, no accumulation), exact
resume under ZeRO-2 and bf16, and fp16 on a CPU refused with a one-line error.

The tolerances, and why:
- ZeRO-2 vs ZeRO-0: the same AdamW on the same gradients; ZeRO-2 only keeps them in flat fp32 buffers
  (another summation order for the clipping norm), so the weights agree to float rounding (atol 1e-6;
  6e-8 measured).
- grad_accum=2 over micro-batches (a, b) vs one batch a+b: the same gradient when a and b have the same
  number of masked pieces (the mean of the two means is then the mean over a+b), so the pairs are chosen so;
  only summation order differs (atol 1e-6 on weights that training moved by up to 2e-3, 4e-9 measured; 1e-5
  relative on each logged loss). AdamW is run so that its update is proportional to the gradient (below).
- bf16 vs fp32: bf16 keeps 8 significant bits, so every activation and gradient is off by up to 0.4 %;
  DeepSpeed keeps fp32 master weights, so the runs stay close but not equal: the weights' distance to the
  fp32 run is under 15 % of how far fp32 training moved them (6 % measured, the final rounding of the
  weights to bf16 included), and each logged loss is within 1 % (0.08 % measured). The export takes
  DeepSpeed's fp32 master weights, of which the module's bf16 weights are the exact rounding.
"""

import json

import pytest
import torch

from mergedistill.cache import OnlineTargets
from mergedistill.config import StudentConfig
from mergedistill.errors import UserError
from mergedistill.student import build_student
from mergedistill.train import deepspeed_config, train, unpartitioned_student
from tests.test_train import STUDENT, cfg, plan  # noqa: F401  (plan: the module fixture of test_train)

STEPS = 6


def train_run(tmp, plan, merged, teachers, train_cfg, student_cfg=STUDENT, batch_fn=None, **kw):
    student = build_student(student_cfg, len(merged), seed=0)
    result = train(
        student,
        train_cfg,
        batch_fn or plan.batch,
        OnlineTargets(teachers, merged.id_maps, 4),
        tmp,
        progress=False,
        log=lambda m: None,
        **kw,
    )
    return student, result


def logged_losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(student) -> dict:
    return {k: v.detach().float() for k, v in student.state_dict().items()}


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory, plan, merged, teachers):
    """The reference: ZeRO-0, fp32, no accumulation."""
    out = tmp_path_factory.mktemp("fp32")
    student, _ = train_run(out, plan, merged, teachers, cfg(steps=STEPS))
    return weights(student), logged_losses(out)


def test_zero2_gives_the_zero0_weights(tmp_path, plan, merged, teachers, fp32_run):
    expected, expected_losses = fp32_run
    student, _ = train_run(tmp_path, plan, merged, teachers, cfg(steps=STEPS, zero_stage=2))
    assert list((tmp_path / "checkpoints" / f"step-{STEPS}").glob("zero_pp_rank_0_*optim_states.pt"))  # ZeRO ran
    got = weights(student)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)
    assert logged_losses(tmp_path) == pytest.approx(expected_losses, rel=1e-6)


def equal_pairs(plan, n: int) -> list[tuple[dict, dict]]:
    """``n`` pairs of the plan's micro-batches that can be concatenated into one batch with the same loss: the
    same teacher, the same padded length and the same number of masked pieces."""
    waiting, pairs = {}, []
    for index in range(plan.n_batches):
        batch = plan.batch(index)
        key = (batch["teacher"], tuple(batch["input_ids"].shape), int((batch["labels"] != -100).sum()))
        if key in waiting:
            pairs.append((waiting.pop(key), batch))
            if len(pairs) == n:
                return pairs
        else:
            waiting[key] = batch
    raise AssertionError(f"the plan has fewer than {n} pairs of alike micro-batches")


def concatenated(a: dict, b: dict) -> dict:
    return {k: torch.cat([a[k], b[k]]) if isinstance(a[k], torch.Tensor) else a[k] for k in a}


def test_grad_accum_2_gives_the_weights_of_one_batch_twice_as_big(tmp_path, plan, merged, teachers):
    """AdamW's update m/(sqrt(v)+eps) and clipping to a norm hide a constant factor on the gradient, so a
    sum of micro-batch gradients instead of their mean would pass unseen: these runs clip nothing and use
    eps=1, far above sqrt(v), which makes each update proportional to the gradient itself."""
    no_dropout = StudentConfig(
        **{**STUDENT.__dict__, "dropout": 0.0}
    )  # the two runs draw dropout masks of other shapes
    pairs = equal_pairs(plan, STEPS)
    linear = {"optimizer": {"params": {**deepspeed_config(cfg(), 1)["optimizer"]["params"], "eps": 1.0}}}
    settings = dict(steps=STEPS, grad_clip=0.0, deepspeed=linear)
    accumulated, _ = train_run(
        tmp_path / "accum",
        plan,
        merged,
        teachers,
        cfg(**settings, grad_accum=2),
        no_dropout,
        batch_fn=lambda i: pairs[i // 2][i % 2],
    )
    big, _ = train_run(
        tmp_path / "big",
        plan,
        merged,
        teachers,
        cfg(**settings, batch_size=8),
        no_dropout,
        batch_fn=lambda i: concatenated(*pairs[i]),
    )
    got, expected = weights(accumulated), weights(big)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)
    assert logged_losses(tmp_path / "accum") == pytest.approx(logged_losses(tmp_path / "big"), rel=1e-5)


@pytest.mark.parametrize("stage", [0, 1])  # two optimizers: DeepSpeed's FP16_UnfusedOptimizer, its ZeRO optimizer
def test_bf16_stays_close_to_fp32(tmp_path, plan, merged, teachers, fp32_run, stage):
    expected, expected_losses = fp32_run
    student, result = train_run(tmp_path, plan, merged, teachers, cfg(steps=STEPS, precision="bf16", zero_stage=stage))
    assert all(p.dtype == torch.bfloat16 for p in student.parameters())  # it did run in bf16
    exported = unpartitioned_student(student, result)  # what the train stage saves
    assert all(p.dtype == torch.float32 for p in exported.state_dict().values() if p.is_floating_point())
    rounded = {k: v for k, v in student.state_dict().items() if v.is_floating_point()}
    masters = exported.state_dict()
    assert any(not torch.equal(masters[k], rounded[k].float()) for k in rounded)  # finer than the module's copy
    for key in rounded:  # ... and the module's copy is exactly that master rounded to bf16
        assert torch.equal(masters[key].to(torch.bfloat16), rounded[key]), key
    start = weights(build_student(STUDENT, len(merged), seed=0))
    moved = sum(float((expected[k] - start[k]).norm() ** 2) for k in expected) ** 0.5
    for got in (weights(student), weights(exported)):
        off = sum(float((got[k] - expected[k]).norm() ** 2) for k in expected) ** 0.5
        assert 0 < off < 0.15 * moved
    assert logged_losses(tmp_path) == pytest.approx(expected_losses, rel=0.01)


def checkpoint_leaves(directory) -> dict:
    """Every value in every file of a DeepSpeed checkpoint directory, by file and key path."""
    leaves = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(f"{prefix}/{i}", item)
        elif hasattr(value, "__dict__") and not isinstance(value, torch.Tensor):  # e.g. DeepSpeed's loss scaler
            walk(f"{prefix}:{type(value).__name__}", vars(value))
        else:
            leaves[prefix] = value

    for path in sorted(directory.glob("*.pt")):
        walk(path.name, torch.load(path, map_location="cpu", weights_only=False))
    return leaves


@pytest.mark.parametrize("stage, precision", [(2, "fp32"), (0, "bf16"), (1, "bf16")])
def test_resume_is_exact_under_zero2_and_bf16(tmp_path, plan, merged, teachers, stage, precision):
    """Stopped after step 3 (the last checkpoint is step 2), resumed: the weights and the whole final checkpoint
    (fp32 master weights, optimizer moments, scheduler, RNG) equal the uninterrupted run's, bit for bit."""
    settings = cfg(steps=STEPS, zero_stage=stage, precision=precision)
    full, _ = train_run(tmp_path / "full", plan, merged, teachers, settings)
    with pytest.raises(KeyboardInterrupt):
        train_run(tmp_path / "cut", plan, merged, teachers, settings, stop_at_step=3)
    resumed, result = train_run(tmp_path / "cut", plan, merged, teachers, settings)
    assert result.resumed_from == 2
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    expected, got = (checkpoint_leaves(tmp_path / run / "checkpoints" / f"step-{STEPS}") for run in ("full", "cut"))
    assert expected.keys() == got.keys()
    differ = [
        k
        for k in expected
        if not (torch.equal(expected[k], got[k]) if isinstance(expected[k], torch.Tensor) else expected[k] == got[k])
    ]
    assert differ == []


def test_a_checkpoint_resumes_only_in_the_precision_it_trained_in(tmp_path, plan, merged, teachers):
    """``train.precision: auto`` may resolve differently on another machine; DeepSpeed's bf16 and fp32 optimizers
    cannot read each other's state, so the resume stops in one line saying which precision to set."""
    with pytest.raises(KeyboardInterrupt):
        train_run(tmp_path, plan, merged, teachers, cfg(steps=STEPS, precision="bf16"), stop_at_step=3)
    with pytest.raises(
        UserError, match=r"^train\.precision: .*step-2 was trained in bf16, this run trains in fp32; set"
    ):
        train_run(tmp_path, plan, merged, teachers, cfg(steps=STEPS, precision="fp32"))
    _, result = train_run(tmp_path, plan, merged, teachers, cfg(steps=STEPS, precision="bf16"))
    assert (result.resumed_from, result.precision) == (2, "bf16")


def test_fp16_on_a_cpu_is_a_user_error_naming_the_key(tmp_path, plan, merged, teachers):
    """DeepSpeed's CPU accelerator has no fp16: without the check, ``deepspeed.initialize`` raises a bare
    ``ValueError: Type fp16 is not supported on your device.`` (the CLI's path is in reliability/test_bad_inputs.py)."""
    with pytest.raises(
        UserError, match=r"^train\.precision: fp16 is not supported by DeepSpeed on cpu; use train\.precision: bf16"
    ):
        train_run(tmp_path, plan, merged, teachers, cfg(precision="fp16"))
    assert not tmp_path.joinpath("checkpoints").exists()


def test_a_zero3_run_leaves_later_runs_in_the_process_unchanged(tmp_path, plan, merged, teachers, fp32_run):
    """DeepSpeed's ZeRO-3 may swap ``torch.nn.functional.linear`` for its own until the process ends (its
    ``memory_efficient_linear``); a later run in the same process (the baseline stage, the next ablation
    variant, a resumed run in a test) would then round differently from the same run in a fresh process."""
    linear = torch.nn.functional.linear
    train_run(tmp_path / "zero3", plan, merged, teachers, cfg(steps=2, zero_stage=3))
    assert torch.nn.functional.linear is linear
    student, _ = train_run(tmp_path / "after", plan, merged, teachers, cfg(steps=STEPS))
    expected, _ = fp32_run
    assert all(torch.equal(value, expected[key]) for key, value in weights(student).items())
