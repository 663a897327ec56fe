from pathlib import Path

import numpy as np
import pytest
import torch

from mergedistill.config import StudentConfig, load_config
from mergedistill.errors import UserError
from mergedistill.heads import masked_lm_logits
from mergedistill.student import build_student, init_from_teacher, teacher_layers

ROOT = Path(__file__).resolve().parents[1]


def test_layer_map_copies_teacher_layers_s_2s_3s():
    assert teacher_layers(3, 2) == [1, 3, 5]  # 1-based teacher layers 2, 4, 6
    assert teacher_layers(2, 1) == [0, 1]


def test_init_from_teacher_copies_layers_and_owned_embeddings(teachers, merged):
    teacher = teachers["bert"]
    cfg = StudentConfig(layers=1, layer_stride=2, init="teacher", init_teacher="bert", max_position=64)
    student = init_from_teacher(cfg, teacher.model, teacher.tokenizer, merged.id_maps["bert"], merged.pieces)
    t_layer = teacher.model.bert.encoder.layer[1].state_dict()  # s = 2 -> teacher layer 2 (index 1)
    s_layer = student.bert.encoder.layer[0].state_dict()
    assert all(torch.equal(t_layer[k], s_layer[k]) for k in t_layer)
    id_map = np.asarray(merged.id_maps["bert"])
    owned = np.flatnonzero(id_map >= 5)[:50]
    assert torch.equal(
        student.bert.embeddings.word_embeddings.weight[id_map[owned]],
        teacher.model.bert.embeddings.word_embeddings.weight[owned],
    )
    # a piece only another teacher owns starts from the mean of this teacher's sub-piece embeddings, not at random
    from mergedistill.student import _piece_text

    owned_ids = set(id_map[id_map >= 0].tolist())

    def sub_pieces(sid):
        return teacher.tokenizer(_piece_text(merged.pieces[sid]), add_special_tokens=False)["input_ids"]

    foreign = next(sid for sid in range(5, len(merged)) if sid not in owned_ids and sub_pieces(sid))
    sub = sub_pieces(foreign)
    expected = teacher.model.bert.embeddings.word_embeddings.weight[sub].mean(0)
    assert torch.allclose(student.bert.embeddings.word_embeddings.weight[foreign], expected)
    with pytest.raises(UserError, match="needs 4 teacher layers"):
        init_from_teacher(
            StudentConfig(layers=2, layer_stride=2),
            teacher.model,
            teacher.tokenizer,
            merged.id_maps["bert"],
            merged.pieces,
        )


@pytest.mark.parametrize("arch", ["bert", "deberta-v2"])
def test_student_masked_only_head_equals_full_head(merged, arch):
    student = build_student(
        StudentConfig(arch=arch, layers=1, hidden=32, heads=2, intermediate=64, max_position=40), len(merged)
    ).eval()
    assert student.config.model_type == arch and student.config.vocab_size == len(merged)
    ids = torch.randint(5, len(merged), (2, 20))
    masked = torch.zeros(2, 20, dtype=torch.bool)
    masked[0, 3] = masked[1, 7] = masked[1, 8] = True
    with torch.no_grad():
        fast, _ = masked_lm_logits(student, ids, torch.ones_like(ids), masked)
        full = student(input_ids=ids).logits[masked]
    assert torch.allclose(fast, full, atol=1e-5)


def test_deberta_student_has_relative_positions_only_and_refuses_teacher_init(teachers, merged):
    student = build_student(
        StudentConfig(arch="deberta-v2", layers=1, hidden=32, heads=2, intermediate=64, max_position=40), len(merged)
    )
    assert student.config.relative_attention and not student.config.position_biased_input
    assert not any("position_embeddings" in name for name, _ in student.named_parameters())
    cfg = StudentConfig(arch="deberta-v2", layers=1, init="teacher", init_teacher="bert")
    with pytest.raises(UserError, match="student.arch: bert"):
        init_from_teacher(
            cfg, teachers["bert"].model, teachers["bert"].tokenizer, merged.id_maps["bert"], merged.pieces
        )


CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("experiments/**/*.yaml"))


def test_shipped_experiment_configs_are_found():
    assert "experiments/demo.yaml" in CONFIGS and "experiments/bistil/demo.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_experiment_configs_validate_and_name_their_command(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # a config's paths (cards, base) are relative to the working directory: the repository root
    first = open(path, encoding="utf-8").readline()
    assert first.startswith("# ") and "mergedistill" in first  # the config opens with the command that runs it
    if "/bistil/" in path:  # BiStil experiments have their own schema
        from mergedistill.bistil.schema import BistilConfig

        load_config(path, schema=BistilConfig)
        return
    if "/ablations/" in path:  # an ablation: every variant must be a valid experiment on one shared budget
        from mergedistill.ablate import AblationConfig, budget_problems, variant_configs

        configs = variant_configs(load_config(path, schema=AblationConfig), path)
        assert len(configs) >= 2 and not budget_problems(configs)
        return
    cfg = load_config(path)
    for card in cfg.teachers.cards:
        from mergedistill.teachers import load_card

        load_card(card)  # every card the config names exists and validates
