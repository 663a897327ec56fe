"""Lottery-Ticket Sparse Fine-Tuning (Ansell et al., 2022) and the sparse diff it produces.

Dense phase: fine-tune everything. Mask: the ``density`` fraction of the eligible (body) parameters
that moved most, |θ1 − θ0|, chosen globally (exactly round(density·N) entries). Reset the model to θ0
and fine-tune again with the gradients of the eligible parameters masked; after each optimizer step the
unmasked entries are put back to θ0 (AdamW's decoupled weight decay would otherwise move them). The
task head is new and trained fully in both phases; it is saved beside the diff, not in it.

``SparseDiff`` stores θ1 − θ0 in float64: for float32 weights that difference is exact, so applying
the diff gives θ1 bit for bit and removing it gives θ0 back bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from mergedistill.errors import UserError


def snapshot(model, names: Iterable[str] | None = None) -> dict:
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in (names if names is not None else params)}


def select_mask(theta0: Mapping, theta1: Mapping, density: float) -> dict:
    """name -> bool tensor, True for the globally top-``density`` |θ1 − θ0| entries (exactly round(density·N))."""
    import torch

    names = list(theta0)
    flat = torch.cat([(theta1[n].float() - theta0[n].float()).abs().reshape(-1) for n in names])
    k = int(round(density * flat.numel()))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        chosen[torch.topk(flat, k, sorted=False).indices] = True
    out, start = {}, 0
    for n in names:
        size = theta0[n].numel()
        out[n] = chosen[start : start + size].view_as(theta0[n])
        start += size
    return out


def train_steps(
    model,
    params,
    loss_fn: Callable,
    batches: Iterable,
    lr: float,
    weight_decay: float = 0.0,
    after_step: Callable | None = None,
    desc: str = "train",
) -> list[float]:
    """A plain AdamW loop with linear decay over ``batches``; returns the losses."""
    import torch
    from tqdm import tqdm

    batches = list(batches)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / max(1, len(batches))))
    losses = []
    model.train()
    for batch in tqdm(batches, desc=desc, leave=False, disable=None):
        loss = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], 1.0)
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def restore_outside_mask(model, theta0: Mapping, mask: Mapping) -> None:
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, keep in mask.items():
            params[name].copy_(torch.where(keep, params[name], theta0[name]))


def lt_sft(
    model,
    eligible: list[str],
    loss_fn: Callable,
    dense_batches: Iterable,
    sparse_batches: Iterable,
    density: float,
    lr: float,
    weight_decay: float = 0.0,
) -> tuple:
    """Run LT-SFT on ``model`` in place; returns (mask over ``eligible``, θ0 of the eligible params, losses)."""
    theta0_all = snapshot(model)
    theta0 = {n: theta0_all[n] for n in eligible}
    dense = train_steps(model, list(model.parameters()), loss_fn, dense_batches, lr, weight_decay, desc="lt-sft dense")
    mask = select_mask(theta0, snapshot(model, eligible), density)
    import torch

    with torch.no_grad():  # reset everything (head included) to its initial value
        for name, param in model.named_parameters():
            param.copy_(theta0_all[name])
    params = dict(model.named_parameters())
    hooks = [params[n].register_hook(lambda grad, m=mask[n]: grad * m) for n in eligible]
    try:
        sparse = train_steps(
            model,
            list(model.parameters()),
            loss_fn,
            sparse_batches,
            lr,
            weight_decay,
            after_step=lambda: restore_outside_mask(model, theta0, mask),
            desc="lt-sft sparse",
        )
    finally:
        for hook in hooks:
            hook.remove()
    return mask, theta0, {"dense": dense, "sparse": sparse}


@dataclass
class SparseDiff:
    """Sparse parameter differences: name -> (flat indices int64, values float64, shape)."""

    entries: dict

    @classmethod
    def between(cls, theta0: Mapping, theta1: Mapping) -> "SparseDiff":
        import torch

        entries = {}
        for name, before in theta0.items():
            delta = theta1[name].detach().double().cpu().reshape(-1) - before.detach().double().cpu().reshape(
                -1
            )  # stored on the CPU
            index = torch.nonzero(delta, as_tuple=False).reshape(-1)
            entries[name] = (index, delta[index].clone(), tuple(before.shape))
        return cls(entries)

    @property
    def nnz(self) -> int:
        return sum(int(index.numel()) for index, _, _ in self.entries.values())

    def _check(self, model) -> dict:
        params = dict(model.named_parameters())
        for name, (_, _, shape) in self.entries.items():
            if name not in params or tuple(params[name].shape) != shape:
                raise UserError(
                    f"sparse diff: parameter {name} {shape} is not in the model (or has another shape); apply it to the phase-1 model it was trained from"
                )
        return params

    def _add(self, model, sign: float) -> None:
        import torch

        params = self._check(model)
        with torch.no_grad():
            for name, (index, values, _) in self.entries.items():
                flat = params[name].data.view(-1)
                flat[index] = (flat[index].double() + sign * values).to(flat.dtype)

    def apply(self, model):
        self._add(model, 1.0)
        return model

    def remove(self, model):
        self._add(model, -1.0)
        return model

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        tensors, meta = {}, {}
        for name, (index, values, shape) in self.entries.items():
            tensors[f"{name}::index"] = index.contiguous()
            tensors[f"{name}::values"] = values.contiguous()
            meta[name] = ",".join(map(str, shape))
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "SparseDiff":
        from safetensors import safe_open

        try:
            handle = safe_open(str(path), framework="pt")
        except Exception as err:  # missing or corrupt file
            raise UserError(
                f"{path}: not a readable sparse diff ({err}); re-run `mergedistill bistil phase2`"
            ) from None
        with handle:
            meta = handle.metadata() or {}
            entries = {}
            for name, shape in meta.items():
                dims = tuple(int(d) for d in shape.split(",") if d)
                entries[name] = (handle.get_tensor(f"{name}::index"), handle.get_tensor(f"{name}::values"), dims)
        return cls(entries)
