"""Distillation training under DeepSpeed.

- One process with no launcher works: ``setup_distributed`` sets RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR
  and a free MASTER_PORT when they are absent; under ``torchrun``/``deepspeed`` the launcher's are used.
- Micro-batch ``(step * grad_accum + micro) * world + rank`` of the data plan feeds rank ``rank``: the data
  is a pure function of the step, so ``resume`` (model, optimizer, scheduler, RNG from the last complete
  checkpoint) continues exactly where an uninterrupted run would be.
- Checkpoints go to ``<out>/checkpoints/step-N`` through ``engine.save_checkpoint`` (``save_latest=False``);
  only after every file is written does ``latest`` (a one-line pointer) get replaced atomically, so a kill
  at any moment leaves the previous checkpoint as the latest readable one.
- The student's vocabulary projection runs only at masked positions (``heads.masked_lm_logits``).
- Devices (``mergedistill.device``): the student lives on the DeepSpeed engine's device (the run's
  ``device``: ``cuda:$LOCAL_RANK`` on a GPU); each batch, the teachers' targets and hidden states are moved
  there by ``to_device``. Teachers read the CPU batch and move it to their own device themselves.
- Precision: ``train.precision: auto`` resolves per device (``device.resolve_precision``). In bf16/fp16 the
  module holds rounded weights and DeepSpeed's optimizer the fp32 master copy; ``TrainResult.full_state_dict``
  hands back that copy, so the export ships fp32 weights whatever precision trained them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from mergedistill import faults
from mergedistill.data import kd_rows
from mergedistill.errors import UserError
from mergedistill.heads import masked_lm_logits
from mergedistill.internals import internal_terms
from mergedistill.io import write_text_atomic
from mergedistill.losses import combine, mlm_and_kd, mlm_ce

LATEST = "latest"
PRECISION = "precision"  # in each checkpoint: what it trained in (train.precision: auto can resolve differently)
KILL_AT = "MERGEDISTILL_TEST_KILL_AT"  # test hook, see _kill_point


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setup_distributed() -> tuple[int, int]:
    """(rank, world size), setting single-process rendezvous variables when no launcher did."""
    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
        )
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def skip_shared_memory_collectives() -> None:
    """DeepSpeed's CPU backend compiles its shared-memory all-reduce op at init: 25-60 s of C++ on every new
    virtual environment (the build is keyed by its paths), for ``inference_all_reduce`` only, which training
    never calls (its all-reduces go through torch.distributed), so it is skipped for any world size (the
    pipeline's rank group, ``ranks.Ranks.connect``, skips it too). The hook is left alone if a DeepSpeed
    version no longer has it."""
    import importlib

    backend = importlib.import_module(
        "deepspeed.comm.torch"
    )  # not `import ... as`: deepspeed.comm.torch is also torch itself
    if hasattr(backend, "build_shm_op"):
        backend.build_shm_op = lambda: None


def deepspeed_config(train_cfg, world_size: int) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": train_cfg.batch_size,
        "gradient_accumulation_steps": train_cfg.grad_accum,
        "train_batch_size": train_cfg.batch_size * train_cfg.grad_accum * world_size,
        "gradient_clipping": train_cfg.grad_clip,
        # memory_efficient_linear off: ZeRO-3 would swap torch.nn.functional.linear for DeepSpeed's own for the rest of
        # the process, so every later run in it (baseline, ablation variants, tests) would round differently
        "zero_optimization": {"stage": train_cfg.zero_stage, "memory_efficient_linear": False},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": train_cfg.lr,
                "betas": [0.9, train_cfg.adam_beta2],
                "weight_decay": train_cfg.weight_decay,
                "torch_adam": True,
                "foreach": True,
            },
        },  # foreach: 2x faster step on CPU
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {
                "total_num_steps": train_cfg.steps,
                # DeepSpeed refuses 0 and warms up over at least 2 steps, so 0 (valid config) means its shortest
                "warmup_num_steps": max(train_cfg.warmup_steps, 1),
                "warmup_max_lr": train_cfg.lr,
                "warmup_min_lr": 0.0,
                "warmup_type": "linear",
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if train_cfg.precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif train_cfg.precision == "fp16":
        config["fp16"] = {"enabled": True, "initial_scale_power": 12}
    for key, value in (train_cfg.deepspeed or {}).items():
        config[key] = (
            {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
        )
    return config


class MaskedLMForDistillation(torch.nn.Module):
    """Wraps the student so that the DeepSpeed engine's forward returns logits at masked positions only."""

    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, input_ids, attention_mask, masked, hidden_states: bool = False, attentions: bool = False):
        """Logits at the masked positions; with ``hidden_states``/``attentions`` also the encoder outputs."""
        logits, outputs = masked_lm_logits(self.student, input_ids, attention_mask, masked, hidden_states, attentions)
        return (logits, outputs) if hidden_states or attentions else logits


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    seconds: float
    tokens_per_s: float
    resumed_from: int
    precision: str = "fp32"  # what train.precision resolved to
    full_state_dict: dict | None = None  # ZeRO-3 or bf16/fp16: the student's full fp32 weights (full_state_dict())


def read_latest(checkpoint_dir: Path) -> str | None:
    pointer = checkpoint_dir / LATEST
    if not pointer.exists():
        return None
    tag = pointer.read_text(encoding="utf-8").strip()
    return tag if (checkpoint_dir / tag).is_dir() else None


def _save(engine, checkpoint_dir: Path, step: int, rank: int, precision: str, keep: int = 2) -> None:
    tag = f"step-{step}"
    engine.save_checkpoint(
        str(checkpoint_dir), tag=tag, client_state={"step": step, "torch_rng": torch.get_rng_state()}, save_latest=False
    )
    if rank == 0:
        write_text_atomic(checkpoint_dir / tag / PRECISION, precision + "\n")
    faults.point("checkpoint")  # written, not yet `latest`
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    _kill_point(step, "written")
    if rank == 0:
        write_text_atomic(checkpoint_dir / LATEST, tag + "\n")
        _kill_point(step, "published")
        tags = sorted((p for p in checkpoint_dir.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
        for old in tags[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def _kill_point(step: int, phase: str) -> None:
    """Test hook: ``MERGEDISTILL_TEST_KILL_AT=save:<step>:<phase>`` makes the process SIGKILL itself inside the
    save of that step, at ``written`` (every checkpoint file written, ``latest`` not moved yet) or ``published``
    (``latest`` moved, older checkpoints not pruned yet), so a test can land a real kill there every time."""
    if os.environ.get(KILL_AT) == f"save:{step}:{phase}":
        os.kill(os.getpid(), signal.SIGKILL)


def trim_metrics(path: Path, last_step: int) -> None:
    """Keep only the JSONL records of steps <= ``last_step`` (atomically): after a resume from step N the
    run logs steps N+1... again, so without this a killed-and-resumed run would list them twice."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a kill
        if step <= last_step:
            kept.append(line)
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in kept))


def train(
    student,
    train_cfg,
    batch_fn: Callable[[int], dict],
    targets_fn: Callable | None,
    out_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    stop_at_step: int | None = None,
    log: Callable[[str], None] = print,
    internals_fn: Callable | None = None,
    device: str = "auto",
) -> TrainResult:
    """Distil into ``student`` for ``train_cfg.steps`` optimizer steps. ``targets_fn(index, batch)`` gives the
    teacher top-k; None trains with gold MLM only. ``internals_fn(batch)`` (``internals.TeacherInternals``)
    gives the teacher's hidden states/attentions for the ``alpha_hidden``/``alpha_attn`` terms.
    ``device``: where the student trains (``mergedistill.device.resolve_device``). ``stop_at_step``
    simulates a kill (tests)."""
    from tqdm import tqdm

    from mergedistill.device import device_of, resolve_device, resolve_precision, to_device

    rank, world = setup_distributed()
    placed = resolve_device(device, "device")
    precision = resolve_precision(train_cfg.precision, placed)
    if precision != train_cfg.precision:
        log(f"[train] train.precision: {train_cfg.precision} -> {precision} on {placed.type}")
        train_cfg = replace(train_cfg, precision=precision)
    if placed.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would pick a visible GPU by itself
    else:
        torch.cuda.set_device(placed)
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if (
        train_cfg.precision == "fp16" and not get_accelerator().is_fp16_supported()
    ):  # else DeepSpeed raises a bare ValueError
        raise UserError(
            f"train.precision: fp16 is not supported by DeepSpeed on {get_accelerator().device_name()}; "
            "use train.precision: bf16 (or fp32), or train on a GPU"
        )

    skip_shared_memory_collectives()
    out_dir = Path(out_dir)
    checkpoint_dir = out_dir / "checkpoints"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if targets_fn is None and train_cfg.alpha_mlm <= 0:
        raise UserError("train.alpha_mlm must be > 0 when no teacher targets are used (gold-MLM-only training)")
    model = MaskedLMForDistillation(student)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(train_cfg, world),
    )
    on = device_of(engine.module)  # the student's device, where every tensor of the loss goes
    start = 0
    tag = read_latest(checkpoint_dir) if resume else None
    if tag is not None:
        _refuse_other_precision(checkpoint_dir / tag, precision)
        _, client = engine.load_checkpoint(str(checkpoint_dir), tag=tag)
        start = int(client["step"])
        torch.set_rng_state(client["torch_rng"])
        log(f"[train] resuming from {checkpoint_dir / tag} (step {start})")
    want_hidden, want_attn = train_cfg.alpha_hidden > 0, train_cfg.alpha_attn > 0
    if (want_hidden or want_attn) and internals_fn is None:
        raise UserError(
            "train.alpha_hidden/alpha_attn > 0 need the teachers' hidden states: set cache.mode: online (the top-k cache does not store them)"
        )
    if want_attn:
        student.set_attn_implementation("eager")  # attention probabilities are a loss term
    weights = {
        "kd": train_cfg.alpha_kd if targets_fn is not None else 0.0,
        "mlm": train_cfg.alpha_mlm,
        "hidden": train_cfg.alpha_hidden,
        "attn": train_cfg.alpha_attn,
    }
    metrics_path = out_dir / "metrics.jsonl"
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        trim_metrics(metrics_path, start)  # steps logged after the checkpoint we resume from are redone
        writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start + 1 if start else None)
    engine.train()
    began = time.perf_counter()
    tokens_window, window_start, last_loss, total_tokens = 0, time.perf_counter(), float("nan"), 0
    bar = tqdm(
        range(start, train_cfg.steps),
        desc="distil",
        initial=start,
        total=train_cfg.steps,
        disable=not progress or rank != 0,
    )
    step = start
    try:
        for step in bar:
            logged_sum: dict[str, float] = {}
            for micro in range(train_cfg.grad_accum):
                index = (step * train_cfg.grad_accum + micro) * world + rank
                host_batch = batch_fn(index)  # the teachers take it from here to their own device
                batch = to_device(host_batch, on)
                masked = batch["labels"] != -100
                teacher_inside = internals_fn(host_batch) if internals_fn is not None else None
                if teacher_inside is None:
                    logits, student_inside = engine(batch["input_ids"], batch["attention_mask"], masked), None
                else:
                    logits, student_inside = engine(
                        batch["input_ids"], batch["attention_mask"], masked, want_hidden, want_attn
                    )
                gold = batch["labels"][masked]
                if targets_fn is None:
                    terms = {"mlm": mlm_ce(logits, gold)}
                else:
                    topk_ids, topk_logits = to_device(targets_fn(index, host_batch), on)
                    terms = dict(
                        zip(
                            ("mlm", "kd"),
                            mlm_and_kd(  # one log-softmax for both terms
                                logits,
                                gold,
                                kd_rows(batch),  # unified mode: only the masked groups align.py pairs have targets
                                topk_ids,
                                topk_logits,
                                train_cfg.temperature,
                                train_cfg.t2_scaling,
                            ),
                        )
                    )
                if teacher_inside is not None:
                    teacher_out, layer_stride = to_device(teacher_inside, on)
                    terms.update(
                        internal_terms(
                            student_inside,
                            teacher_out,
                            batch["attention_mask"],
                            layer_stride,
                            want_hidden,
                            want_attn,
                            train_cfg.hidden_loss,
                        )
                    )
                loss, logged = combine(terms, weights)
                if not torch.isfinite(loss):
                    raise UserError(
                        f"loss became {float(loss.detach())} at step {step}; lower train.lr (now {train_cfg.lr}) or check the data"
                    )
                engine.backward(loss)
                engine.step()
                for key, value in logged.items():
                    logged_sum[key] = logged_sum.get(key, 0.0) + value / train_cfg.grad_accum
                real = int(batch["attention_mask"].sum())
                tokens_window += real
                total_tokens += real
            done = step + 1
            faults.point("step")
            last_loss = logged_sum["loss"]
            if done % train_cfg.log_every == 0 or done == train_cfg.steps:
                now = time.perf_counter()
                speed = tokens_window * world / max(now - window_start, 1e-9)
                tokens_window, window_start = 0, now
                record = {"step": done, **logged_sum, "lr": engine.get_lr()[0], "tokens_per_s": speed}
                bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{speed:.0f}")
                if rank == 0:
                    with open(metrics_path, "a", encoding="utf-8") as handle:
                        handle.write(json.dumps(record) + "\n")
                    for key, value in record.items():
                        if key != "step":
                            writer.add_scalar(key, value, done)
            if done % train_cfg.checkpoint_every == 0 or done == train_cfg.steps:
                _save(engine, checkpoint_dir, done, rank, precision)
            if stop_at_step is not None and done >= stop_at_step and done < train_cfg.steps:
                raise KeyboardInterrupt(f"stopped at step {done} (test hook)")
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - began
    full = full_state_dict(engine) if train_cfg.zero_stage == 3 or precision != "fp32" else None
    speed = total_tokens * world / max(seconds, 1e-9)
    return TrainResult(train_cfg.steps, last_loss, seconds, speed, start, precision, full)


def _refuse_other_precision(checkpoint: Path, precision: str) -> None:
    """DeepSpeed's optimizers differ by precision and cannot read each other's state: say so in one line."""
    marker = checkpoint / PRECISION
    saved = marker.read_text(encoding="utf-8").strip() if marker.exists() else precision
    if saved != precision:
        raise UserError(
            f"train.precision: {checkpoint} was trained in {saved}, this run trains in {precision}; "
            f"set train.precision: {saved} to resume it, or delete {checkpoint.parent} to start over"
        )


def full_state_dict(engine) -> dict:
    """The student's full weights in fp32: under ZeRO-3 gathered from every rank's shard; under bf16/fp16 taken
    from DeepSpeed's fp32 master copy (the module holds them rounded). Collective: every rank calls it."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    optimizer = engine.optimizer
    masters = {}  # ZeRO-0 in bf16/fp16 (FP16_UnfusedOptimizer): its master groups parallel the module's
    for low, high in zip(getattr(optimizer, "fp16_groups", []), getattr(optimizer, "fp32_groups", [])):
        masters.update({id(param): master for param, master in zip(low, high)})
    student = engine.module.student
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        state = {key: value.detach().clone() for key, value in student.state_dict().items()}
    for name, param in student.named_parameters(remove_duplicate=False):  # tied weights: each of their names
        master = masters.get(id(param))
        if master is None:
            master = safe_get_full_fp32_param(param)  # ZeRO 1-3: None when it keeps no master copy (fp32)
        if master is not None:
            state[name] = master.detach().reshape(state[name].shape).clone()
    return {key: value.float() if value.is_floating_point() else value for key, value in state.items()}


def unpartitioned_student(student, result: TrainResult):
    """A plain fp32 copy of ``student`` holding the trained weights (ZeRO-3, bf16, fp16), or ``student`` itself."""
    if result.full_state_dict is None:
        return student
    fresh = type(student)(student.config)
    fresh.load_state_dict(result.full_state_dict)
    return fresh
