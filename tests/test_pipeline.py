import pytest

from mergedistill import io
from mergedistill.config import ExperimentConfig, from_dict
from mergedistill.errors import UserError
from mergedistill.pipeline import Stage, run_stages

CFG = {"teachers": {"cards": ["a.yaml"]}}


def make_stages(calls, fail_in=None):
    def produce(name, text):
        def run(ctx):
            calls.append(name)
            if fail_in == name:
                (ctx.work / "progress").write_text("half")
                raise KeyboardInterrupt
            upstream = "".join((p / "out.txt").read_text() for p in ctx.inputs.values())
            (ctx.out / "out.txt").write_text(upstream + text(ctx.cfg))
            return {"resumed_from": (ctx.work / "progress").read_text() if (ctx.work / "progress").exists() else None}

        return run

    return [
        Stage("vocab", produce("vocab", lambda c: f"v{c.vocab.min_freq}|"), sections=("vocab",)),
        Stage("train", produce("train", lambda c: f"t{c.train.steps}|"), sections=("train",), after=("vocab",)),
        Stage("eval", produce("eval", lambda c: "e|"), sections=("eval",), after=("train",)),
    ]


def test_second_run_skips_everything(tmp_path):
    cfg = from_dict(ExperimentConfig, CFG)
    calls = []
    first = run_stages(cfg, make_stages(calls), tmp_path, log=lambda m: None)
    assert [r.status for r in first] == ["ran"] * 3
    assert (tmp_path / "eval" / "out.txt").read_text() == "v1e-06|t1000|e|"
    calls.clear()
    second = run_stages(cfg, make_stages(calls), tmp_path, log=lambda m: None)
    assert calls == [] and [r.status for r in second] == ["skipped"] * 3


def test_changed_section_reruns_that_stage_and_everything_after(tmp_path):
    calls = []
    run_stages(from_dict(ExperimentConfig, CFG), make_stages(calls), tmp_path, log=lambda m: None)
    calls.clear()
    changed = from_dict(ExperimentConfig, {**CFG, "train": {"steps": 5}})
    run_stages(changed, make_stages(calls), tmp_path, log=lambda m: None)
    assert calls == ["train", "eval"]
    assert (tmp_path / "eval" / "out.txt").read_text() == "v1e-06|t5|e|"


def test_interrupted_stage_leaves_earlier_outputs_and_resumes(tmp_path):
    cfg = from_dict(ExperimentConfig, CFG)
    calls = []
    run_stages(cfg, make_stages(calls), tmp_path, log=lambda m: None)
    before = (tmp_path / "train" / "out.txt").read_text()
    changed = from_dict(ExperimentConfig, {**CFG, "train": {"steps": 9}})
    with pytest.raises(KeyboardInterrupt):
        run_stages(changed, make_stages(calls, fail_in="train"), tmp_path, log=lambda m: None)
    assert (tmp_path / "train" / "out.txt").read_text() == before  # old output intact, not half-written
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    calls.clear()
    results = run_stages(changed, make_stages(calls), tmp_path, log=lambda m: None)
    assert calls == ["train", "eval"]
    assert io.read_manifest(tmp_path / "train")["resumed_from"] == "half"  # work dir survived the kill
    assert not (tmp_path / "train.work").exists()
    assert [r.status for r in results] == ["skipped", "ran", "ran"]


def test_a_kill_leftover_temp_dir_is_removed_on_the_next_run(tmp_path):
    cfg = from_dict(ExperimentConfig, CFG)
    stale = tmp_path / ".train.abc123.tmp"  # what a SIGKILL inside io.atomic_dir leaves
    stale.mkdir(parents=True)
    (stale / "half.bin").write_text("x")
    run_stages(cfg, make_stages([]), tmp_path, log=lambda m: None)
    assert not stale.exists()
    assert (tmp_path / "train" / "out.txt").exists()


def test_work_dir_from_other_inputs_is_discarded_not_resumed(tmp_path):
    calls, logs = [], []
    changed = from_dict(ExperimentConfig, {**CFG, "train": {"steps": 9}})
    with pytest.raises(KeyboardInterrupt):
        run_stages(changed, make_stages(calls, fail_in="train"), tmp_path, log=logs.append)
    assert (tmp_path / "train.work" / "progress").exists()
    other = from_dict(ExperimentConfig, {**CFG, "train": {"steps": 7}})  # config changed before the re-run
    run_stages(other, make_stages(calls), tmp_path, log=logs.append)
    assert io.read_manifest(tmp_path / "train")["resumed_from"] is None
    assert any("inputs changed" in line and "train.work" in line for line in logs)


def test_changing_a_user_corpus_file_reruns_the_stages_that_read_the_corpus(tmp_path):
    corpus_file = tmp_path / "de.txt"
    corpus_file.write_text("Hallo Welt\n" * 20)
    cfg = from_dict(
        ExperimentConfig, {**CFG, "corpus": {"languages": ["de"], "sources": {"de": {"path": str(corpus_file)}}}}
    )
    calls = []

    def stages():
        out = make_stages(calls)
        out[0] = Stage("vocab", out[0].run, sections=("vocab", "corpus"))
        return out

    run_stages(cfg, stages(), tmp_path / "run", log=lambda m: None)
    calls.clear()
    run_stages(cfg, stages(), tmp_path / "run", log=lambda m: None)
    assert calls == []  # same bytes: everything current
    corpus_file.write_text("Hallo Welt\n" * 19 + "Guten Tag\n")  # same config, new text
    run_stages(cfg, stages(), tmp_path / "run", log=lambda m: None)
    assert calls == ["vocab", "train", "eval"]


def generated_stages(calls, bad_input_in=None):
    """A root stage and per-task stages with path names, chained by what each declares it reads."""

    def produce(name):
        def run(ctx):
            calls.append(name)
            if name == bad_input_in:
                (ctx.work / "progress").write_text("half")
                raise UserError(f"{name}: bad input")
            upstream = "".join((p / "out.txt").read_text() for p in ctx.inputs.values())
            (ctx.out / "out.txt").write_text(upstream + name + "|")

        return run

    stages = [Stage("trim", produce("trim"), sections=("vocab",))]
    for task in ("topic", "topic-nocopy"):  # one name starts with the other
        stages += [
            Stage(f"phase2/{task}/teacher", produce(f"phase2/{task}/teacher"), sections=("train",), after=("trim",)),
            Stage(f"phase2/{task}/bistil", produce(f"phase2/{task}/bistil"), after=("trim", f"phase2/{task}/teacher")),
        ]
    return stages


def test_generated_stage_names_nest_their_outputs_and_chain_fingerprints_by_what_they_read(tmp_path):
    cfg = from_dict(ExperimentConfig, CFG)
    calls = []
    run_stages(cfg, generated_stages(calls), tmp_path, log=lambda m: None)
    assert (
        tmp_path / "phase2" / "topic" / "bistil" / "out.txt"
    ).read_text() == "trim|trim|phase2/topic/teacher|phase2/topic/bistil|"
    manifest = io.read_manifest(tmp_path / "phase2" / "topic-nocopy" / "bistil")
    assert manifest["stage"] == "phase2/topic-nocopy/bistil" and set(manifest["inputs"]) == {
        "trim",
        "phase2/topic-nocopy/teacher",
    }
    calls.clear()
    changed = from_dict(ExperimentConfig, {**CFG, "train": {"steps": 5}})  # what the teachers read
    run_stages(changed, generated_stages(calls), tmp_path, log=lambda m: None)
    assert calls == [
        "phase2/topic/teacher",
        "phase2/topic/bistil",
        "phase2/topic-nocopy/teacher",
        "phase2/topic-nocopy/bistil",
    ]


def test_only_and_force_take_a_stage_or_the_stages_under_a_name(tmp_path):
    cfg = from_dict(ExperimentConfig, CFG)
    calls = []
    run_stages(cfg, generated_stages(calls), tmp_path, log=lambda m: None)
    calls.clear()
    run_stages(cfg, generated_stages(calls), tmp_path, force={"phase2/topic"}, log=lambda m: None)
    assert calls == ["phase2/topic/teacher", "phase2/topic/bistil"]  # not topic-nocopy; what reads them stays current
    calls.clear()
    results = run_stages(
        cfg,
        generated_stages(calls),
        tmp_path,
        only={"phase2"},
        force={"phase2/topic-nocopy/bistil"},
        log=lambda m: None,
    )
    assert calls == ["phase2/topic-nocopy/bistil"]
    assert [r.name for r in results if r.status == "ran"] == ["phase2/topic-nocopy/bistil"]
    calls.clear()
    run_stages(cfg, generated_stages(calls), tmp_path, force={"trim"}, log=lambda m: None)
    assert calls == ["trim"]  # forced alone: its fingerprint is unchanged, so what reads it stays current
    for flag in ("only", "force"):  # a typo is an error, not a run that quietly does nothing
        with pytest.raises(UserError, match=f"--{flag} phase2/topic/bistl: no such stage"):
            run_stages(cfg, generated_stages(calls), tmp_path, **{flag: {"phase2/topic/bistl"}}, log=lambda m: None)


def test_bad_input_in_a_generated_stage_leaves_no_work_dir_or_temp_dir(tmp_path):
    cfg = from_dict(ExperimentConfig, CFG)
    calls = []
    with pytest.raises(UserError):
        run_stages(cfg, generated_stages(calls, bad_input_in="phase2/topic/bistil"), tmp_path, log=lambda m: None)
    assert io.is_current(
        tmp_path / "phase2" / "topic" / "teacher",
        io.read_manifest(tmp_path / "phase2" / "topic" / "teacher")["fingerprint"],
    )
    assert sorted(p.name for p in (tmp_path / "phase2" / "topic").iterdir()) == ["teacher"]  # no bistil.work, no .tmp
    calls.clear()
    run_stages(cfg, generated_stages(calls), tmp_path, log=lambda m: None)
    assert calls == ["phase2/topic/bistil", "phase2/topic-nocopy/teacher", "phase2/topic-nocopy/bistil"]


def test_only_a_stage_whose_input_never_ran_is_one_line_naming_it(tmp_path):
    cfg = from_dict(ExperimentConfig, CFG)
    calls = []
    with pytest.raises(
        UserError, match=r"--only phase2/topic/bistil: it reads trim, phase2/topic/teacher, which have not run in "
    ):
        run_stages(cfg, generated_stages(calls), tmp_path, only={"phase2/topic/bistil"}, log=lambda m: None)
    assert calls == []
    run_stages(cfg, generated_stages(calls), tmp_path, only={"trim", "phase2/topic"}, log=lambda m: None)
    assert calls == ["trim", "phase2/topic/teacher", "phase2/topic/bistil"]
    calls.clear()
    run_stages(
        cfg, generated_stages(calls), tmp_path, only={"phase2/topic/bistil"}, force={"phase2"}, log=lambda m: None
    )
    assert calls == ["phase2/topic/bistil"]  # its inputs exist now
