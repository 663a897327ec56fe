"""Device and precision options shared by the speed benchmarks (``--device``, ``--dtype``).

On a GPU the suite runs in bf16 (``--device cuda --dtype bf16``, what ``run_all.py --gpu`` passes): the
models are cast to the dtype for inference, training steps run under ``torch.autocast`` with fp32 master
weights (how mixed-precision training runs), and every timed region ends with a device synchronisation,
because CUDA kernels return before they finish.
"""

from __future__ import annotations

import contextlib
import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_device_args(parser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="compute precision (bf16 on a GPU)")


def resolve(parser, args) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) from the parsed options; a missing GPU is a usage error, not a traceback."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device here")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device}: use cpu or cuda[:N]")
    return device, DTYPES[args.dtype]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """A wall-clock reading after the device has finished the work queued so far."""
    synchronize(device)
    return time.perf_counter()


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed-precision context for a training step (nothing for fp32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def describe(device: torch.device, dtype: torch.dtype) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": name, "dtype": str(dtype).removeprefix("torch.")}
