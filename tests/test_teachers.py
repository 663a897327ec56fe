import json

import pytest
import torch

from mergedistill.errors import UserError
from mergedistill.teachers import Teacher, TeacherCard, load_card
from tests.conftest import FAMILIES


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_topk_matches_a_plain_forward(arch, tiny_teachers, corpus_texts):
    from transformers import AutoModelForMaskedLM

    teacher = Teacher.load(TeacherCard(name=arch, source=str(tiny_teachers[arch]), languages=["en", "de"]))
    batch = teacher.tokenizer(
        corpus_texts["de"]["valid"][:3], padding=True, truncation=True, max_length=40, return_tensors="pt"
    )
    positions = batch["attention_mask"].bool() & (
        torch.rand(batch["input_ids"].shape, generator=torch.Generator().manual_seed(0)) < 0.3
    )
    ids, values = teacher.topk(batch["input_ids"], batch["attention_mask"], positions, k=5)
    plain = AutoModelForMaskedLM.from_pretrained(tiny_teachers[arch]).eval()
    with torch.no_grad():
        logits = plain(**batch).logits[positions]
    ref_values, ref_ids = torch.topk(logits, 5, dim=-1)
    assert ids.shape == (int(positions.sum()), 5)
    assert torch.equal(ids, ref_ids) and torch.allclose(values, ref_values, atol=1e-5)
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_card_loading_and_validation(tmp_path, tiny_teachers):
    card = tmp_path / "t.yaml"
    card.write_text(
        f"# used by tests\nname: tiny\nsource: {tiny_teachers['bert']}\nlanguages: [en, de]\nfamily: wordpiece\n"
    )
    teacher = Teacher.load(card)
    assert teacher.name == "tiny" and teacher.languages == ["en", "de"] and teacher.num_parameters() > 0
    assert len(teacher.fingerprint()) == 64 and teacher.fingerprint() == Teacher.load(card).fingerprint()
    card.write_text(f"name: tiny\nsource: {tiny_teachers['bert']}\nlanguages: [en, xx]\n")
    with pytest.raises(UserError, match="unknown language code 'xx'"):
        load_card(card)
    card.write_text(f"name: tiny\nsource: {tiny_teachers['bert']}\nlanguages: [en]\nlayers: 3\n")
    with pytest.raises(UserError, match="'layers'"):
        load_card(card)
    card.write_text(f"name: tiny\nsource: {tiny_teachers['bert']}\nlanguages: [en]\nfamily: bytelevel\n")
    with pytest.raises(UserError, match="card says family 'bytelevel'"):
        Teacher.load(card)


def test_bad_teacher_checkpoints(tmp_path, tiny_teachers):
    import shutil

    from transformers import AutoModel

    with pytest.raises(UserError, match="teacher directory not found"):
        Teacher.load(TeacherCard(name="x", source=str(tmp_path / "missing"), languages=["en"]))
    # a checkpoint without an MLM head
    headless = tmp_path / "headless"
    AutoModel.from_pretrained(tiny_teachers["bert"]).save_pretrained(headless)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_teachers["bert"] / name, headless / name)
    with pytest.raises(UserError, match="no masked-LM head"):
        Teacher.load(TeacherCard(name="x", source=str(headless), languages=["en"]))
    # a tokenizer without a mask token
    nomask = tmp_path / "nomask"
    shutil.copytree(tiny_teachers["bert"], nomask)
    config = json.loads((nomask / "tokenizer_config.json").read_text())
    config["mask_token"] = None
    (nomask / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="no mask token"):
        Teacher.load(TeacherCard(name="x", source=str(nomask), languages=["en"]))


def test_unreachable_hub_name_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HuggingFace hub"):
        Teacher.load(TeacherCard(name="mbert", source="bert-base-multilingual-cased", languages=["en"]))


def test_a_local_teacher_retrained_in_place_changes_the_teachers_stage_fingerprint(tmp_path, tiny_teachers):
    import shutil

    from mergedistill.config import ExperimentConfig
    from mergedistill.teachers import teacher_inputs

    shutil.copytree(tiny_teachers["bert"], tmp_path / "bert")
    (tmp_path / "bert.yaml").write_text(f"name: bert\nsource: {tmp_path / 'bert'}\nlanguages: [en]\n", encoding="utf-8")
    cfg = ExperimentConfig()
    cfg.teachers.cards = [str(tmp_path / "bert.yaml")]
    before = teacher_inputs(cfg)
    assert teacher_inputs(cfg) == before
    weights = tmp_path / "bert" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # "retrained": same file, same size, other weights; the card is untouched
    weights.write_bytes(bytes(data))
    assert teacher_inputs(cfg) != before


def test_tokenizer_fingerprint_ignores_the_truncation_a_call_leaves_behind(tiny_teachers, texts):
    """Tokenizing with truncation sets the backend's truncation state; a cache built after that must still
    match the same teacher freshly loaded in the train stage (a routed real-teacher run failed on this)."""
    from mergedistill.teachers import Teacher, TeacherCard

    card = TeacherCard(name="bert", source=str(tiny_teachers["bert"]), languages=["en"], max_length=64)
    used, fresh = Teacher.load(card), Teacher.load(card)
    used.tokenizer(texts["en"][:3], truncation=True, max_length=7, padding=True)
    assert used.tokenizer.backend_tokenizer.truncation is not None  # the state the call left behind
    assert used.tokenizer_fingerprint() == fresh.tokenizer_fingerprint()
