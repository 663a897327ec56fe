"""Which process of a multi-process launch (``torchrun``, ``deepspeed``) this is, and how the ranks wait for each other.

The pipeline runs the same stages on every rank. A single-process stage runs on rank 0 while the other
ranks wait in ``share`` for its outcome; a sharded stage (cache, train, baseline) runs on every rank. The
waits are collectives on a CPU (gloo) process group made next to the default group that DeepSpeed uses
later, so they work whether the model trains on CPUs or GPUs. A rank that dies closes its connections and
the others' waits fail at once (the launcher then stops the rest); a rank that hangs alive is given up on
after ``MERGEDISTILL_WAIT_S`` seconds (default 6 h: rank 0 may score teachers or evaluate for a long time).
One process (no launcher, or ``WORLD_SIZE=1``) needs no group: every wait returns at once.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from mergedistill.errors import UserError

DEFAULT_WAIT_S = 6 * 3600


def world_from_env() -> tuple[int, int]:
    """(rank, world size) as the launcher set them; (0, 1) without a launcher."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    _group: Any = field(default=None, repr=False)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def connect(self, device: str = "auto") -> "Ranks":
        """Join the launcher's process group (DeepSpeed's own init, reused by ``deepspeed.initialize``) and
        make the CPU group the waits use. ``device`` is the run's (config ``device``): on ``cpu`` DeepSpeed
        must not pick a visible GPU for the group, as ``train`` makes it not for the engine. A no-op for one
        process."""
        if self.world == 1 or self._group is not None:
            return self
        from mergedistill.device import resolve_device

        if resolve_device(device).type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed
        import torch.distributed as dist

        from mergedistill.train import skip_shared_memory_collectives

        try:
            wait_s = float(os.environ.get("MERGEDISTILL_WAIT_S", DEFAULT_WAIT_S))
        except ValueError:
            raise UserError(
                f"MERGEDISTILL_WAIT_S={os.environ['MERGEDISTILL_WAIT_S']!r}: expected a number of seconds"
            ) from None
        if not dist.is_initialized():
            skip_shared_memory_collectives()
            deepspeed.init_distributed(verbose=False)
        return replace(self, _group=dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=wait_s)))

    def share(self, value: Any = None, src: int = 0) -> Any:
        """``value`` as rank ``src`` has it, on every rank (a barrier as well)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=src, group=self._group)
        return box[0]

    def gather(self, value: Any) -> list:
        """Every rank's ``value``, in rank order, on every rank (a barrier as well)."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, value, group=self._group)
        return out

    def barrier(self, what: str = "") -> None:
        """Wait for every rank; raise if one reports a failure instead (a plain barrier would let this rank
        go on past the point where the failed one left, and the ranks' collectives would no longer pair)."""
        self.settle(what, None)

    def settle(self, what: str, err: BaseException | None) -> None:
        """Every rank tells the others how its part of ``what`` ended (a barrier as well); a rank raises its
        own error, else the first failed rank's, so that no rank goes on alone or waits for one that stopped."""
        outcomes = self.gather(outcome_of(err))
        if err is not None:
            raise err
        for rank, outcome in enumerate(outcomes):
            raise_outcome(outcome, rank, what)

    def together(self, what: str, part: Callable[[], Any]) -> Any:
        """``part()`` on this rank (rank 0's share, or everyone's), then ``settle``: its result, or the error."""
        err, result = None, None
        try:
            result = part()
        except BaseException as caught:
            err = caught
        self.settle(what, err)
        return result

    def close(self) -> None:
        """After a last barrier, destroy the wait group and the launcher's group, so that no rank exits while
        another's gloo threads still talk to it (a rank could abort at exit: "terminate called without an active
        exception"). A no-op for one process."""
        if self._group is None:
            return
        import torch.distributed as dist

        self.barrier("the end of the run")
        dist.destroy_process_group(self._group)
        if dist.is_initialized():
            dist.destroy_process_group()

    def main_first(self, what: str, part: Callable[[], Any]) -> Any:
        """``part()`` on rank 0, then (once it succeeded) on the other ranks: what rank 0 builds on disk
        (the Arrow data of ``mergedistill.data_store``), the others open."""
        first = self.together(what, part if self.main else lambda: None)
        return first if self.main else part()


SINGLE = Ranks()


def outcome_of(err: BaseException | None) -> tuple[str, str] | None:
    """What a rank tells the others about how its part of a stage ended: None (done) or (kind, message)."""
    if err is None:
        return None
    kind = "user" if isinstance(err, UserError) else "interrupt" if isinstance(err, KeyboardInterrupt) else "crash"
    return kind, str(err) or type(err).__name__


def raise_outcome(outcome: tuple[str, str] | None, rank: int, stage: str) -> None:
    """On a waiting rank: fail the way rank ``rank`` failed (same one-line message for bad input)."""
    if outcome is None:
        return
    kind, message = outcome
    if kind == "user":
        raise UserError(message)
    if kind == "interrupt":
        raise KeyboardInterrupt(f"rank {rank} was interrupted in stage {stage}")
    raise RuntimeError(f"rank {rank} failed in stage {stage}: {message} (see its log)")
