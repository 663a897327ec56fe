"""Named kill points for the fault sweep (``tests/reliability/test_fault_sweep.py``).

The pipeline calls ``point(name)`` at moments where a crash is worth testing: a stage starting (every
rank), a stage's output sealed but not yet renamed into place, an atomic file write done but not yet
renamed, a cache chunk half-written, an optimizer step done, a checkpoint written but not yet published.

- ``MERGEDISTILL_FAULT_TRACE=PATH`` appends each point this process passes to ``PATH.<rank>``;
- ``MERGEDISTILL_KILL_AT=NAME@N`` (or ``NAME@N@RANK``) SIGKILLs this process the N-th time it passes
  ``NAME`` (on that rank only): a real kill, at a moment chosen exactly, however loaded the machine.

With neither variable set (every real run), ``point`` returns at once.
"""

from __future__ import annotations

import os
import signal

_passes: dict[str, int] = {}


def point(name: str) -> None:
    trace, kill = os.environ.get("MERGEDISTILL_FAULT_TRACE"), os.environ.get("MERGEDISTILL_KILL_AT")
    if not trace and not kill:
        return
    rank = os.environ.get("RANK", "0")
    _passes[name] = _passes.get(name, 0) + 1
    if trace:
        with open(f"{trace}.{rank}", "a", encoding="utf-8") as handle:
            handle.write(name + "\n")
    if kill:
        target, count, *on_rank = kill.split("@")
        if target == name and int(count) == _passes[name] and (not on_rank or on_rank[0] == rank):
            os.kill(os.getpid(), signal.SIGKILL)
