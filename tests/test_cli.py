import subprocess
import sys

import pytest

from mergedistill import cli
from mergedistill.commands._stage import STAGE_VERBS


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mergedistill", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_every_verb():
    result = run_cli("--help")
    assert result.returncode == 0
    for verb in cli.VERBS:
        assert verb in result.stdout


@pytest.mark.parametrize("verb", cli.VERBS)
def test_each_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: mergedistill " + verb in capsys.readouterr().out


def test_user_error_is_one_line_and_exit_2(tmp_path):
    result = run_cli("run", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.yaml" in lines[0]
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("--debug", "run", str(tmp_path / "missing.yaml"))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_bad_config_key_exits_2_naming_it(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("teachers:\n  cards: [a.yaml]\ntrain:\n  stepz: 3\n")
    result = run_cli("run", str(path))
    assert result.returncode == 2
    assert "train.stepz" in result.stderr


def test_no_verb_prints_help_and_exits_2():
    result = run_cli()
    assert result.returncode == 2 and "usage" in result.stdout


# A launcher puts --local_rank before the verb (deepspeed: `python -m mergedistill --local_rank=0 run CONFIG`)
# or after it; either spelling, with = or as two words, for every verb.
VERB_ARGS = {
    "corpus": ["stats"],
    "teachers": ["list"],
    "vocab": ["inspect", "DIR"],
    "bistil": ["trim", "c.yaml"],
    "ablate": ["c.yaml"],
}


@pytest.mark.parametrize("verb", cli.VERBS)
@pytest.mark.parametrize("before", [True, False])
def test_local_rank_is_accepted_before_and_after_every_verb(verb, before, monkeypatch):
    seen = []
    monkeypatch.setattr(cli.verb_command(verb), "main", lambda args: seen.append(args) or 0)
    monkeypatch.setenv("LOCAL_RANK", "0")
    rest = VERB_ARGS.get(verb, ["c.yaml", "train.steps=2"])
    argv = ["--local_rank=1", verb, *rest] if before else [verb, *rest, "--local-rank", "1"]
    assert cli.main(argv) == 0 and len(seen) == 1  # parsed, and the verb ran
    assert "train.steps=2" not in rest or seen[0].overrides == [
        "train.steps=2"
    ]  # the flag is not taken for an override


def test_local_rank_before_the_verb_runs_it():
    result = run_cli("--local_rank=0", "corpus", "stats")
    assert result.returncode == 0, result.stderr
    assert "unrecognized" not in result.stderr and result.stdout.strip()


def test_local_rank_after_the_config_reaches_the_config_loader(tmp_path):
    result = run_cli("run", str(tmp_path / "missing.yaml"), "--local_rank=0")
    assert result.returncode == 2
    assert "unrecognized" not in result.stderr and "missing.yaml" in result.stderr  # parsed; failed on the config only


def test_local_rank_fills_LOCAL_RANK_only_when_the_launcher_did_not(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "9")  # recorded first, so the value set below is undone after the test
    monkeypatch.delenv("LOCAL_RANK")
    assert cli.strip_local_rank(["run", "c.yaml", "--local_rank", "3", "x=1"]) == (["run", "c.yaml", "x=1"], "3")
    with pytest.raises(SystemExit):
        cli.main(["--local_rank=3", "corpus", "--help"])
    assert cli.os.environ["LOCAL_RANK"] == "3"
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SystemExit):
        cli.main(["--local_rank=3", "corpus", "--help"])
    assert cli.os.environ["LOCAL_RANK"] == "1"


def test_bad_local_rank_is_one_line_exit_2():
    result = run_cli("--local_rank=x", "corpus", "stats")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "--local_rank=x" in result.stderr


@pytest.mark.parametrize("verb", sorted(STAGE_VERBS))
def test_every_stage_verb_of_the_table_parses_and_runs_the_pipeline_until_its_stage(verb, tmp_path, monkeypatch):
    import mergedistill.stages as stages

    config = tmp_path / "exp.yaml"
    config.write_text("teachers:\n  cards: [a.yaml]\n")
    calls = []
    monkeypatch.setattr(stages, "run_experiment", lambda cfg, **kwargs: calls.append((cfg, kwargs)))
    assert verb in cli.VERBS
    assert cli.main([verb, str(config), "train.steps=2"]) == 0
    assert cli.main([verb, str(config), "--force"]) == 0
    (cfg, plain), (_, forced) = calls
    assert cfg.train.steps == 2 and cfg.teachers.cards == ["a.yaml"]
    assert plain == {"config_path": str(config), "overrides": ["train.steps=2"], "until": verb, "force": []}
    assert forced == {"config_path": str(config), "overrides": [], "until": verb, "force": [verb]}


def test_the_report_names_make_demo_for_the_demo_config_only():
    from mergedistill.commands.run import reproduce_command

    assert reproduce_command("experiments/demo.yaml") == "make demo   # = mergedistill run experiments/demo.yaml"
    assert reproduce_command("exp.yaml", ["train.steps=2"]) == "mergedistill run exp.yaml train.steps=2"
