import json

import pytest

from mergedistill import io


def test_atomic_dir_replaces_only_on_success(tmp_path):
    final = tmp_path / "stage"
    with io.atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (final / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with io.atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("killed mid-stage")
    assert (final / "a.txt").read_text() == "one"  # earlier output intact
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]  # no temp dirs left behind


def test_manifest_decides_currency(tmp_path):
    fp = io.fingerprint({"steps": 3}, "input-hash")
    assert fp == io.fingerprint({"steps": 3}, "input-hash")
    assert fp != io.fingerprint({"steps": 4}, "input-hash")
    assert not io.is_current(tmp_path, fp)
    io.write_manifest(tmp_path, fp, holds=["x"])
    assert io.is_current(tmp_path, fp)
    assert json.loads((tmp_path / io.MANIFEST).read_text())["holds"] == ["x"]
    (tmp_path / io.MANIFEST).write_text("{broken")
    assert not io.is_current(tmp_path, fp)


def test_file_fingerprint_sees_content_changes(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "w.bin").write_bytes(b"abc")
    before = io.file_fingerprint(tmp_path / "d")
    (tmp_path / "d" / "w.bin").write_bytes(b"abd")
    assert io.file_fingerprint(tmp_path / "d") != before


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        io.write_json_atomic(tmp_path / "a.json", {"x": 1})
        with io.atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o755
