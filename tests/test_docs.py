"""Generated documentation stays current with the code it is generated from."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_reference_is_current():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config_reference.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_configuration_reference_names_every_section_key():
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for key in ("`train.alpha_kd`", "`select.strategy`", "`vocab.min_freq`", "`phase2.sparse_steps`", "`trim.theta`"):
        assert key in text
