"""The pipeline's rank protocol (``pipeline.run_stages`` with ``mergedistill.ranks``), two ranks as two threads.

``ThreadRanks`` exchanges values through a ``threading.Barrier`` instead of a gloo group, so what each rank
runs, sees and raises is checked in a second; ``test_multirank_run.py`` runs the real thing under torchrun.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from mergedistill import io
from mergedistill.config import ExperimentConfig, from_dict
from mergedistill.errors import UserError
from mergedistill.pipeline import Stage, run_stages, stage_fingerprint
from mergedistill.ranks import Ranks

CFG = from_dict(ExperimentConfig, {"teachers": {"cards": ["a.yaml"]}})


class Board:
    """All-gather for threads: each rank posts a value and gets everyone's, round by round. Once a rank has
    left (``leave``, as a process that exits closes its connections), an incomplete round fails at once."""

    def __init__(self, world: int):
        self.world, self.rounds, self.next, self.left = world, {}, [0] * world, False
        self.cond = threading.Condition()

    def exchange(self, rank: int, value: Any) -> list:
        with self.cond:
            posted = self.rounds.setdefault(self.next[rank], {})
            self.next[rank] += 1
            posted[rank] = value
            self.cond.notify_all()
            self.cond.wait_for(lambda: len(posted) == self.world or self.left, timeout=60)
            if len(posted) < self.world:
                raise ConnectionError("connection closed by peer (a rank left)")
            return [posted[r] for r in range(self.world)]

    def leave(self) -> None:
        with self.cond:
            self.left = True
            self.cond.notify_all()


@dataclass(frozen=True)
class ThreadRanks(Ranks):
    board: Any = None

    def gather(self, value):
        return self.board.exchange(self.rank, value)

    def share(self, value=None, src=0):
        return self.gather(value)[src]


def make_stages(calls: list, fail: dict | None = None) -> list[Stage]:
    """prep (rank 0) -> build (sharded: each rank writes its part into the work dir, rank 0 joins them) -> report (rank 0).
    ``fail`` = {(stage, rank): exception} raised by that rank once it has done its part of the stage."""
    fail = fail or {}

    def check(name, ctx):
        calls.append((name, ctx.ranks.rank if name == "build" else threading.current_thread().name))
        err = fail.get((name, int(threading.current_thread().name)))
        if err is not None:
            raise err

    def prep(ctx):
        (ctx.out / "prep.txt").write_text("p")
        check("prep", ctx)

    def build(ctx):
        assert (ctx.inputs["prep"] / "prep.txt").read_text() == "p"  # every rank sees rank 0's finished output
        part = ctx.work / f"part-{ctx.ranks.rank}.txt"
        resumed = part.exists()
        part.write_text(str(ctx.ranks.rank))
        check("build", ctx)
        ctx.ranks.barrier("build")
        if ctx.ranks.main:
            (ctx.out / "parts.txt").write_text(
                "|".join((ctx.work / f"part-{r}.txt").read_text() for r in range(ctx.ranks.world))
            )
            return {"resumed": resumed}
        return {}

    def report(ctx):
        (ctx.out / "report.txt").write_text((ctx.inputs["build"] / "parts.txt").read_text())
        check("report", ctx)

    return [
        Stage("prep", prep, sections=("vocab",)),
        Stage("build", build, sections=("train",), after=("prep",), sharded=True),
        Stage("report", report, sections=("eval",), after=("build",)),
    ]


def run_two(tmp_path, calls, fail=None) -> list:
    """run_stages on ranks 0 and 1 (threads named after them): each rank's results, or the exception it raised."""
    board, outcomes = Board(2), [None, None]

    def rank(r):
        try:
            outcomes[r] = run_stages(
                CFG, make_stages(calls, fail), tmp_path, log=lambda m: None, ranks=ThreadRanks(r, 2, board=board)
            )
        except BaseException as err:  # noqa: BLE001 (what the rank raised is the result)
            outcomes[r] = err
            board.leave()

    threads = [threading.Thread(target=rank, args=(r,), name=str(r)) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a rank hangs"
    return outcomes


def leftovers(root):
    return sorted(p.name for p in root.rglob("*") if p.name.startswith(".") or p.name.endswith((".tmp", ".work")))


def test_single_stages_run_on_rank_0_sharded_on_all_and_the_outputs_are_sealed_once(tmp_path):
    calls = []
    first = run_two(tmp_path, calls)
    assert all(isinstance(results, list) for results in first), first
    assert sorted(calls, key=str) == sorted([("prep", "0"), ("build", 0), ("build", 1), ("report", "0")], key=str)
    assert [r.status for r in first[0]] == [r.status for r in first[1]] == ["ran"] * 3
    assert (tmp_path / "report" / "report.txt").read_text() == "0|1"
    assert io.read_manifest(tmp_path / "build")["resumed"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", "prep", "report"] and not leftovers(tmp_path)
    calls.clear()
    second = run_two(tmp_path, calls)
    assert calls == [] and [r.status for r in second[0]] == [r.status for r in second[1]] == ["skipped"] * 3


def test_bad_input_on_rank_0_stops_every_rank_with_its_message(tmp_path):
    outcomes = run_two(tmp_path, [], fail={("prep", 0): UserError("corpus.x: bad; fix it")})
    assert all(isinstance(err, UserError) and str(err) == "corpus.x: bad; fix it" for err in outcomes), outcomes
    assert not (tmp_path / "prep").exists() and not leftovers(tmp_path)


def test_a_failing_rank_in_a_sharded_stage_stops_rank_0_which_seals_nothing(tmp_path):
    outcomes = run_two(tmp_path, [], fail={("build", 1): UserError("rank 1 input: bad")})
    assert all(isinstance(err, UserError) and str(err) == "rank 1 input: bad" for err in outcomes), outcomes
    assert io.is_current(tmp_path / "prep", io.read_manifest(tmp_path / "prep")["fingerprint"])
    assert not (tmp_path / "build").exists() and not (tmp_path / "build.work").exists()  # bad input: nothing to resume
    assert not leftovers(tmp_path)


def test_an_interrupted_rank_stops_all_and_the_rerun_resumes_from_the_shared_work_dir(tmp_path):
    outcomes = run_two(tmp_path, [], fail={("build", 1): KeyboardInterrupt()})
    assert isinstance(outcomes[1], KeyboardInterrupt) and isinstance(outcomes[0], KeyboardInterrupt), outcomes
    assert sorted(p.name for p in (tmp_path / "build.work").iterdir()) == [".fingerprint", "part-0.txt", "part-1.txt"]
    assert not (tmp_path / "build").exists()
    calls = []
    again = run_two(tmp_path, calls)
    assert all(isinstance(results, list) for results in again), again
    assert [r.status for r in again[0]] == ["skipped", "ran", "ran"]
    assert io.read_manifest(tmp_path / "build")["resumed"] is True
    assert (tmp_path / "report" / "report.txt").read_text() == "0|1" and not leftovers(tmp_path)


def test_the_number_of_ranks_is_part_of_a_sharded_stages_fingerprint_only():
    prep, build, _ = make_stages([])
    assert stage_fingerprint(build, CFG, {"prep": "p"}, world=2) != stage_fingerprint(
        build, CFG, {"prep": "p"}, world=1
    )
    assert stage_fingerprint(build, CFG, {"prep": "p"}, world=2) != stage_fingerprint(
        build, CFG, {"prep": "p"}, world=4
    )
    assert stage_fingerprint(prep, CFG, {}, world=2) == stage_fingerprint(prep, CFG, {}, world=1)


def test_main_first_runs_rank_0_to_the_end_before_the_others_start_and_fails_them_with_it(tmp_path):
    """What rank 0 builds on disk (the Arrow data) exists before another rank looks for it; its failure stops them."""
    import time

    def run(part_of, board) -> list:
        results, errors = [None, None], [None, None]

        def rank(r):
            try:
                results[r] = ThreadRanks(r, 2, board=board).main_first("data", lambda: part_of(r))
            except BaseException as err:  # noqa: BLE001 (each thread's outcome is checked below)
                errors[r] = err
                board.leave()

        threads = [threading.Thread(target=rank, args=(r,)) for r in (1, 0)]  # rank 1 asks first
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        return results, errors

    def build_or_open(r):
        if r == 0:
            time.sleep(0.3)
            io.write_text_atomic(tmp_path / "data.arrow", "rows")
            return "built"
        return "opened " + (tmp_path / "data.arrow").read_text()  # FileNotFoundError if rank 0 has not finished

    assert run(build_or_open, Board(2)) == (["built", "opened rows"], [None, None])

    def fail_on_0(r):
        if r == 0:
            raise UserError("corpus.sources.xx: bad")
        return "ran"

    results, errors = run(fail_on_0, Board(2))
    assert results == [None, None] and [str(e) for e in errors] == ["corpus.sources.xx: bad"] * 2
