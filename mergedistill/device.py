"""One device rule for the whole engine, and the one function that moves tensors to a model.

- ``resolve_device(name)``: the config's ``device`` (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``) as a
  ``torch.device``. ``auto`` is CUDA when torch sees a GPU, else the CPU. Under a launcher
  (``torchrun``/``deepspeed``) a bare ``cuda`` is this process's GPU, ``cuda:$LOCAL_RANK``.
- ``to_device(obj, device)``: every tensor that reaches a model goes through here, with the device of
  that model (``device_of(model)``), never a device assumed elsewhere. Dicts, lists and tuples are
  moved element by element; non-tensors pass unchanged. On the CPU it returns the same tensors.

Precision: DeepSpeed runs the student in ``train.precision``; ``auto`` (``resolve_precision``) is bf16 where the
student's device computes bf16 natively (a CUDA GPU that supports it, a CPU with AVX512-BF16 or AMX), else fp32.
Teachers load in bf16 on such a GPU (their card's ``dtype: auto``, ``teachers.resolve_dtype``), in fp32 on a CPU.

``TRACK_TRANSFERS`` (tests only) tags each tensor ``to_device`` returns with the device it was moved to,
so a forward pre-hook can check that every model input came through here with the model's device.
"""

from __future__ import annotations

import os

from mergedistill.errors import UserError

DEVICES = ("auto", "cpu", "cuda")
TRACK_TRANSFERS = False
TAG = "_mergedistill_device"


def device_problems(name: str, key: str = "device") -> list[tuple[str, str]]:
    """Config validation: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    base, _, index = name.partition(":")
    if base in DEVICES and (not index or (base == "cuda" and index.isdigit())):
        return []
    return [(key, f"must be auto, cpu, cuda or cuda:N, got {name!r}")]


def resolve_device(name: str = "auto", key: str = "device"):
    """``torch.device`` for a config value; ``cuda`` without a usable GPU is the user's to fix (UserError)."""
    import torch

    if device_problems(name, key):
        raise UserError(f"{key}: {device_problems(name, key)[0][1]}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(
            f"{key}: {name} asked for, but torch sees no CUDA GPU (torch {torch.__version__}); "
            "set device: cpu (or auto), or install a CUDA build of torch"
        )
    if name in ("auto", "cuda"):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    index = int(name.partition(":")[2])
    if index >= torch.cuda.device_count():
        raise UserError(f"{key}: {name} asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
    return torch.device(name)


def native_bf16(device) -> bool:
    """Whether ``device`` (a ``torch.device``) computes bf16 matmuls in hardware; elsewhere they are emulated and
    slower than fp32 (measured: a CPU without AVX512-BF16)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own CPUID checks
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_precision(precision: str, device) -> str:
    """``train.precision`` for a run on ``device``: ``auto`` is bf16 where ``native_bf16``, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def device_of(model):
    """The device of a model's parameters (or buffers); the CPU for a model with neither."""
    import torch

    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def to_device(obj, device):
    """``obj`` with every tensor in it on ``device`` (dicts, lists and tuples walked; others unchanged)."""
    import torch

    if isinstance(obj, torch.Tensor):
        moved = obj.to(device)  # the same tensor when it is there already
        if TRACK_TRANSFERS:
            if moved is obj:  # tag a view, so the caller's own tensor does not look moved to other models too
                moved = obj.view_as(obj)
            setattr(moved, TAG, str(torch.device(device)))
        return moved
    if isinstance(obj, dict):  # a batch, or a transformers ModelOutput (a dict subclass built from keywords)
        moved = {key: to_device(value, device) for key, value in obj.items()}
        return moved if type(obj) is dict else type(obj)(**moved)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
        return type(obj)(*(to_device(value, device) for value in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(value, device) for value in obj)
    return obj
