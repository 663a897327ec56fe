import subprocess
import sys

import pytest

from mergedistill import cli


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
