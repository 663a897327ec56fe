import pytest

from mergedistill import io
from mergedistill.errors import UserError
from mergedistill.teachers import Teacher, TeacherCard
from mergedistill.zoo import build_fingerprint, build_teacher

RECIPE = {
    "tokenizer": {"family": "wordpiece", "vocab_size": 400},
    "model": {"arch": "bert", "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
    "train": {"steps": 6, "batch_size": 4, "max_length": 32, "max_paragraphs": 60, "checkpoint_every": 2, "warmup": 1},
}


def card(tmp_path, name="tiny", **changes):
    build = {**RECIPE, **changes}
    return TeacherCard(name=name, source=str(tmp_path / name), languages=["en", "de"], max_length=32, build=build)


def state(directory):
    from transformers import AutoModelForMaskedLM

    return AutoModelForMaskedLM.from_pretrained(directory).state_dict()


def test_build_produces_a_loadable_teacher_and_is_skipped_when_current(tmp_path):
    c = card(tmp_path)
    out = build_teacher(c, progress=False, log=lambda m: None)
    teacher = Teacher.load(c)
    assert teacher.vocab.family == "wordpiece" and io.read_manifest(out)["steps"] == 6
    before = (out / "model.safetensors").stat().st_mtime_ns
    messages = []
    build_teacher(c, progress=False, log=messages.append)
    assert "up to date" in messages[0] and (out / "model.safetensors").stat().st_mtime_ns == before


def test_interrupted_build_resumes_to_identical_weights(tmp_path):
    import shutil

    import torch

    resumed = card(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        build_teacher(resumed, progress=False, stop_at_step=4, log=lambda m: None)
    assert (tmp_path / "b" / "tiny.partial" / "state.pt").exists() and not (tmp_path / "b" / "tiny").exists()
    # the uninterrupted reference starts from the same tokenizer (tokenizer training is not reproducible)
    (tmp_path / "a" / "tiny.partial").mkdir(parents=True)
    shutil.copytree(tmp_path / "b" / "tiny.partial" / "tokenizer", tmp_path / "a" / "tiny.partial" / "tokenizer")
    io.write_manifest(tmp_path / "a" / "tiny.partial", build_fingerprint(card(tmp_path / "a"), seed=0), partial=True)
    build_teacher(card(tmp_path / "a"), progress=False, log=lambda m: None)
    messages = []
    build_teacher(resumed, progress=False, log=messages.append)
    assert any("resuming at step 4" in m for m in messages)
    a, b = state(tmp_path / "a" / "tiny"), state(tmp_path / "b" / "tiny")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fingerprint_follows_the_recipe_and_errors(tmp_path):
    base = build_fingerprint(card(tmp_path), seed=0)
    assert base == build_fingerprint(card(tmp_path), seed=0)
    assert base != build_fingerprint(card(tmp_path, train={**RECIPE["train"], "steps": 7}), seed=0)
    assert base != build_fingerprint(card(tmp_path), seed=1)
    with pytest.raises(UserError, match="no `build:` recipe"):
        build_teacher(TeacherCard(name="hub", source="bert-base-cased", languages=["en"]))
    with pytest.raises(UserError, match="build.train.stepz"):
        build_teacher(card(tmp_path, train={"stepz": 3}))


def test_tlm_rows_join_each_paragraph_to_its_translation_only():
    from mergedistill.zoo import parallel_pairs, tlm_rows

    ids = {"en": ["a", "b", "c"], "de": ["c", "a"], "fr": ["z"]}
    tokens = {"en": [[10, 11], [12], [13, 14, 15, 16]], "de": [[20, 21, 22, 23], [24]], "fr": [[30]]}
    parallel = parallel_pairs(ids, tokens, "en")
    assert sorted(parallel) == ["en-de"]  # fr shares no paragraph with en; no de-fr pairs without the pivot
    assert parallel["en-de"] == [([10, 11], [24]), ([13, 14, 15, 16], [20, 21, 22, 23])]  # pivot order: a, then c
    rows = [r.tolist() for r in tlm_rows(parallel, max_length=7, cls_id=1, sep_id=2)["en-de"]]
    assert rows == [[1, 10, 11, 2, 24, 2], [1, 13, 14, 2, 20, 21, 2]]  # each side cut to (7 - 3) // 2 = 2 pieces


def test_alignment_loss_is_low_for_matched_translations_and_high_for_swapped_ones():
    import torch

    from mergedistill.losses import alignment_loss

    pivot = torch.eye(4) * 3
    other = pivot + 0.1 * torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    matched = alignment_loss(pivot, other, temperature=0.05)
    swapped = alignment_loss(pivot, other[[1, 0, 3, 2]], temperature=0.05)
    assert matched < 0.01 < 10 < swapped
    assert torch.isclose(alignment_loss(pivot, other, 0.05), alignment_loss(other, pivot, 0.05))  # symmetric


@pytest.mark.parametrize("objective", ["tlm_fraction", "align_fraction"])
def test_parallel_builds_train_on_aligned_pairs_and_leave_mlm_only_fingerprints_alone(tmp_path, objective):
    plain = card(tmp_path)
    explicit_off = card(tmp_path, train={**RECIPE["train"], "tlm_fraction": 0.0, "align_fraction": 0.0, "pivot": "de"})
    assert build_fingerprint(plain, seed=0) == build_fingerprint(explicit_off, seed=0)
    parallel = card(tmp_path, name="parallel", train={**RECIPE["train"], objective: 0.5})
    assert build_fingerprint(parallel, seed=0) != build_fingerprint(plain, seed=0)
    out = build_teacher(parallel, progress=False, log=lambda m: None)
    manifest = io.read_manifest(out)
    assert manifest["parallel_pairs"]["en-de"] > 10 and manifest[objective] == 0.5
    assert not torch_equal(state(out), state(build_teacher(plain, progress=False, log=lambda m: None)))
    with pytest.raises(UserError, match="pivot 'ja'"):
        build_teacher(card(tmp_path, train={**RECIPE["train"], objective: 0.5, "pivot": "ja"}))
    with pytest.raises(UserError, match=f"{objective} must be in"):
        build_teacher(card(tmp_path, train={**RECIPE["train"], objective: 1.5}))
    with pytest.raises(UserError, match="must be <= 1"):
        build_teacher(card(tmp_path, train={**RECIPE["train"], "tlm_fraction": 0.6, "align_fraction": 0.6}))


def torch_equal(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_shipped_tokenizer_file_makes_builds_reproducible(tmp_path):
    """Two builds from the same tokenizer.json give identical weights; the file's content is fingerprinted."""
    import shutil

    import torch

    first = build_teacher(card(tmp_path / "a"), progress=False, log=lambda m: None)
    shipped = tmp_path / "shipped.tokenizer.json"
    shutil.copy(first / "tokenizer.json", shipped)
    pinned = {"family": "wordpiece", "vocab_size": 400, "file": str(shipped)}
    builds = [
        build_teacher(card(tmp_path / d, tokenizer=pinned), progress=False, log=lambda m: None) for d in ("b", "c")
    ]
    a, b, c = state(first), state(builds[0]), state(builds[1])
    assert all(
        torch.equal(b[k], c[k]) and torch.equal(a[k], b[k]) for k in b
    )  # and the same as the build that trained it
    assert (builds[0] / "tokenizer.json").read_text() == (builds[1] / "tokenizer.json").read_text()
    before = build_fingerprint(card(tmp_path / "b", tokenizer=pinned), seed=0)
    shipped.write_text(shipped.read_text().replace('"[MASK]"', '"[MASK]" ', 1))  # same path, other bytes
    assert build_fingerprint(card(tmp_path / "b", tokenizer=pinned), seed=0) != before
    with pytest.raises(UserError, match="build.tokenizer.file: .*missing.json does not exist"):
        build_teacher(
            card(tmp_path / "d", tokenizer={**pinned, "file": str(tmp_path / "missing.json")}), progress=False
        )
    with pytest.raises(UserError, match="lacks the bytelevel special token"):
        build_teacher(card(tmp_path / "e", tokenizer={**pinned, "family": "bytelevel"}), progress=False)
