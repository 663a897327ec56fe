"""Hidden-state and attention terms of the MergeDistill trainer (mergedistill/internals.py)."""

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from mergedistill.cache import OnlineTargets
from mergedistill.config import ExperimentConfig, StudentConfig, TrainConfig, from_dict
from mergedistill.errors import UserError
from mergedistill.internals import TeacherInternals, internal_terms
from mergedistill.student import build_student
from mergedistill.train import train
from tests.test_train import plan  # noqa: F401  (fixture)


def outputs(n_layers, seed, batch=2, length=5, hidden=4, heads=2):
    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(
        hidden_states=tuple(torch.randn(batch, length, hidden, generator=g) for _ in range(n_layers + 1)),
        attentions=tuple(
            torch.softmax(torch.randn(batch, heads, length, length, generator=g), -1) for _ in range(n_layers)
        ),
    )


def test_layer_pairing_follows_the_stride():
    teacher = outputs(4, seed=0)
    mask = torch.ones(2, 5, dtype=torch.long)
    # a 2-layer student whose states/attentions ARE the teacher's at the BiStil pairs: hidden i <- i*2, attention i <- (i+1)*2-1
    student = SimpleNamespace(
        hidden_states=tuple(teacher.hidden_states[i * 2] for i in range(3)),
        attentions=tuple(teacher.attentions[(i + 1) * 2 - 1] for i in range(2)),
    )
    terms = internal_terms(student, teacher, mask, 2, True, True)
    assert float(terms["hidden"]) == 0.0 and float(terms["attn"]) == 0.0
    shifted = SimpleNamespace(
        hidden_states=tuple(teacher.hidden_states[i] for i in range(3)),
        attentions=tuple(teacher.attentions[i] for i in range(2)),
    )
    wrong = internal_terms(shifted, teacher, mask, 2, True, True)
    assert float(wrong["hidden"]) > 0.1 and float(wrong["attn"]) > 0
    assert set(internal_terms(student, teacher, mask, 2, True, False)) == {"hidden"}
    assert float(
        internal_terms(student, teacher, mask, 2, True, False, hidden_loss="cosine")["hidden"]
    ) == pytest.approx(0.0, abs=1e-6)


def test_padding_does_not_count():
    teacher = outputs(2, seed=1)
    student = outputs(2, seed=1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    student.hidden_states[1][0, 3:] += 100.0  # differences at padded positions only
    assert float(internal_terms(student, teacher, mask, 1, True, False)["hidden"]) == 0.0


def sharpened(teachers):
    """Copies of the tiny random teachers with scaled query/key weights: their attention is far from uniform
    (a random tiny model's is nearly uniform, which would make the attention term ~0 from the start)."""
    out = {}
    for name, teacher in teachers.items():
        teacher = copy.deepcopy(teacher)
        with torch.no_grad():
            for param_name, param in teacher.model.named_parameters():
                if param_name.endswith(("query.weight", "key.weight")):
                    param.mul_(8.0)
        out[name] = teacher
    return out


def test_train_with_hidden_and_attention_terms_lowers_them(tmp_path, plan, merged, teachers):  # noqa: F811
    student_cfg = StudentConfig(
        layers=1, hidden=32, heads=2, intermediate=64, max_position=80, dropout=0.0
    )  # the teachers' width
    student = build_student(student_cfg, len(merged), seed=0)
    teachers = sharpened(teachers)
    internals = TeacherInternals(teachers, student.config, want_hidden=True, want_attn=True, log=lambda m: None)
    assert internals.strides == {"bert": 2, "roberta": 2, "xlm-roberta": 2}
    cfg = TrainConfig(
        steps=40,
        batch_size=4,
        lr=5e-3,
        warmup_steps=1,
        checkpoint_every=40,
        log_every=1,
        alpha_kd=0.0,
        alpha_mlm=0.1,
        alpha_hidden=1.0,
        alpha_attn=300.0,
    )  # attention MSE is ~1e-4: weight it up
    train(
        student,
        cfg,
        plan.batch,
        OnlineTargets(teachers, merged.id_maps, 4),
        tmp_path,
        progress=False,
        log=lambda m: None,
        internals_fn=internals,
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_hidden", "loss_attn", "loss_kd", "loss_mlm"} <= set(records[0])
    for term, factor in (
        ("loss_hidden", 0.8),
        ("loss_attn", 0.95),
    ):  # attention sharpens slowly (Q/K weights must grow)
        first = sum(r[term] for r in records[:5]) / 5
        last = sum(r[term] for r in records[-5:]) / 5
        assert last < factor * first, (term, first, last)
    # the logged total is the weighted sum of the terms (kd has weight 0 here)
    r = records[-1]
    assert r["loss"] == pytest.approx(0.1 * r["loss_mlm"] + r["loss_hidden"] + 300.0 * r["loss_attn"], rel=1e-5)


def test_incompatible_teachers_are_refused_with_the_reason(teachers):
    wide = build_student(StudentConfig(layers=1, hidden=48, heads=2, intermediate=64, max_position=80), 100).config
    with pytest.raises(UserError, match="hidden size 32 != the student's 48"):
        TeacherInternals(teachers, wide, want_hidden=True, want_attn=False, log=lambda m: None)
    deep = build_student(StudentConfig(layers=3, hidden=32, heads=2, intermediate=64, max_position=80), 100).config
    with pytest.raises(UserError, match="2 layers < the student's 3"):
        TeacherInternals(teachers, deep, want_hidden=False, want_attn=True, log=lambda m: None)


CARDS = {"teachers": {"cards": ["a.yaml"]}}


def test_unified_tokenization_is_the_default():  # the student trains on what its exported AutoTokenizer gives
    cfg = from_dict(ExperimentConfig, CARDS)
    assert cfg.data.tokenization == "unified" and cfg.vocab.unified_tokenizer


def test_config_refuses_terms_without_online_teachers_and_unified_tokenization():
    routed = {"data": {"tokenization": "routed"}}
    with pytest.raises(UserError, match="train.alpha_hidden.*cache.mode: online"):
        from_dict(ExperimentConfig, {**CARDS, **routed, "train": {"alpha_hidden": 1.0}})
    accepted = {**CARDS, **routed, "train": {"alpha_attn": 1.0}, "cache": {"mode": "online"}}
    from_dict(ExperimentConfig, accepted)
    with pytest.raises(UserError, match="train.alpha_hidden.*routed"):  # the default (unified) refuses them
        from_dict(ExperimentConfig, {**CARDS, "train": {"alpha_attn": 1.0}, "cache": {"mode": "online"}})
    unified = {"tokenization": "unified"}
    from_dict(ExperimentConfig, {**CARDS, "data": unified, "vocab": {"unified_tokenizer": True}})  # accepted
    with pytest.raises(UserError, match="data.tokenization.*vocab.unified_tokenizer: true"):
        from_dict(ExperimentConfig, {**CARDS, "data": unified, "vocab": {"unified_tokenizer": False}})
    with pytest.raises(UserError, match="train.alpha_hidden.*routed"):  # positions differ between the two sides
        from_dict(
            ExperimentConfig,
            {
                **CARDS,
                "data": unified,
                "vocab": {"unified_tokenizer": True},
                "train": {"alpha_attn": 1.0},
                "cache": {"mode": "online"},
            },
        )


def test_train_refuses_terms_without_internals(tmp_path, plan, merged):  # noqa: F811
    student = build_student(
        StudentConfig(layers=1, hidden=32, heads=2, intermediate=64, max_position=80), len(merged), seed=0
    )
    cfg = TrainConfig(steps=1, batch_size=4, alpha_hidden=1.0)
    with pytest.raises(UserError, match="cache.mode: online"):
        train(student, cfg, plan.batch, None, tmp_path, progress=False, log=lambda m: None)


def test_hidden_and_attention_terms_pair_the_layers_student_init_copied(teachers, merged):
    from transformers import BertConfig, BertForMaskedLM

    from mergedistill.layers import attention_pairs, hidden_pairs
    from mergedistill.student import init_from_teacher

    tokenizer = teachers["bert"].tokenizer
    torch.manual_seed(0)
    deep = BertForMaskedLM(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=12,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
        )
    ).eval()  # 12 -> 4 layers
    query = [layer.attention.self.query.weight for layer in deep.bert.encoder.layer]

    def copied_and_paired(**stride):
        cfg = StudentConfig(
            layers=4,
            init="teacher",
            init_teacher="deep",
            max_position=64,
            new_piece_init="random",
            **({"layer_stride": stride["configured_stride"]} if stride else {}),
        )
        student = init_from_teacher(cfg, deep, tokenizer, merged.id_maps["bert"], merged.pieces)
        copied = [
            next(j for j, q in enumerate(query) if torch.equal(q, layer.attention.self.query.weight))
            for layer in student.bert.encoder.layer
        ]
        internals = TeacherInternals(
            {"deep": SimpleNamespace(model=deep)}, student.config, True, False, log=lambda m: None, **stride
        )
        return copied, internals.strides["deep"]

    copied, stride = copied_and_paired()  # student.layer_stride unset: 12 // 4 = 3, the top layer kept
    assert (
        [t for _, t in attention_pairs(4, stride)] == copied == [2, 5, 8, 11]
    )  # attention i meets the layer it was copied from
    assert [t for _, t in hidden_pairs(4, stride)][1:] == [
        j + 1 for j in copied
    ]  # hidden state i+1: the output of that layer
    copied, stride = copied_and_paired(
        configured_stride=2
    )  # student.layer_stride: 2 -> layers 2, 4, 6, 8 (1-based), both sides
    assert [t for _, t in attention_pairs(4, stride)] == copied == [1, 3, 5, 7]


def test_no_core_module_imports_bistil():
    import ast
    from pathlib import Path

    import mergedistill

    root = Path(mergedistill.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if (
            relative.startswith("bistil/") or relative == "commands/bistil.py"
        ):  # the `bistil` verb is BiStil's entry point
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [
                f"{relative}: {n}" for n in names if n == "mergedistill.bistil" or n.startswith("mergedistill.bistil.")
            ]
    assert not offenders, offenders
