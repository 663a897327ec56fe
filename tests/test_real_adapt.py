"""Encoders without a masked-LM head: attaching one (tied, BERT-style), and the zoo's adaptation recipe
(trimmed vocabulary, head-only then full steps, before/after accuracy, drift, resumable) on tiny random encoders."""

import json

import numpy as np
import pytest
import torch

from mergedistill.errors import UserError
from mergedistill.teachers import TeacherCard

LANGS = ["en", "de"]


@pytest.fixture(scope="module")
def tiny_encoders(tmp_path_factory, corpus_texts):
    """arch -> directory of a tiny random bare encoder (``AutoModel``, no head) with a corpus-trained tokenizer."""
    from transformers import AutoModel

    from mergedistill.tiny_models import tiny_mlm
    from mergedistill.tokenizer_train import train_tokenizer

    root = tmp_path_factory.mktemp("encoders")
    texts = [t for lang in LANGS for t in corpus_texts[lang]["train"]]
    out = {}
    for arch, family in (("bert", "wordpiece"), ("xlm-roberta", "unigram")):
        tokenizer = train_tokenizer(family, texts, vocab_size=1500)
        mlm = tiny_mlm(arch, tokenizer, hidden=32, layers=2, heads=2, intermediate=64, seed=3, dropout=0.0)
        encoder = AutoModel.from_config(mlm.config)
        encoder.load_state_dict(mlm.base_model.state_dict(), strict=False)
        encoder.save_pretrained(root / arch)
        tokenizer.save_pretrained(root / arch)
        out[arch] = root / arch
    return out


@pytest.mark.parametrize("arch", ["bert", "xlm-roberta"])
def test_attached_head_loads_as_masked_lm_tied_with_the_encoder_weights(tiny_encoders, tmp_path, arch):
    from transformers import AutoModel, AutoModelForMaskedLM

    from mergedistill.mlm_head import attach_mlm_head, head_is_tied, head_parameter_names
    from mergedistill.teachers import Teacher

    model = attach_mlm_head(tiny_encoders[arch], seed=0)
    assert type(model).__name__.endswith("ForMaskedLM") and head_is_tied(model)
    assert head_parameter_names(model) and all("embeddings" not in n for n in head_parameter_names(model))
    model.save_pretrained(tmp_path / "mlm")
    reloaded, info = AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # every head weight is in the checkpoint
    assert reloaded.get_output_embeddings().weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()
    original = AutoModel.from_pretrained(tiny_encoders[arch])
    state = reloaded.base_model.state_dict()
    for name, value in original.state_dict().items():
        if not name.startswith("pooler."):
            assert torch.equal(state[name], value), name  # the encoder is untouched
    # same head init for the same seed; another seed gives another head
    again, other = attach_mlm_head(tiny_encoders[arch], seed=0), attach_mlm_head(tiny_encoders[arch], seed=1)
    name = next(
        n for n in head_parameter_names(model) if dict(model.named_parameters())[n].ndim == 2
    )  # the transform's dense
    assert torch.equal(dict(again.named_parameters())[name], dict(model.named_parameters())[name])
    assert not torch.equal(dict(other.named_parameters())[name], dict(model.named_parameters())[name])
    # a Teacher accepts the directory once the tokenizer is beside it (it refused the bare encoder)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_encoders[arch]).save_pretrained(tmp_path / "mlm")
    with pytest.raises(UserError, match="no masked-LM head"):
        Teacher.load(TeacherCard(name="bare", source=str(tiny_encoders[arch]), languages=["en"]))
    assert Teacher.load(TeacherCard(name="mlm", source=str(tmp_path / "mlm"), languages=["en"])).num_parameters() > 0


def test_log_prior_orders_pieces_by_frequency():
    from mergedistill.mlm_head import log_prior

    prior = log_prior(np.array([0, 10, 1000, 10]))
    assert prior[2] > prior[1] == prior[3] > prior[0] and abs(float(prior.mean())) < 1e-6


@pytest.mark.parametrize("arch", ["bert", "xlm-roberta"])
def test_head_started_at_the_prior_predicts_it_and_can_learn(tiny_encoders, arch):
    from mergedistill.heads import masked_lm_loss
    from mergedistill.mlm_head import attach_mlm_head, head_parameter_names, log_prior, start_at_prior

    model = attach_mlm_head(tiny_encoders[arch], seed=0)
    rows = model.get_input_embeddings().num_embeddings
    prior = log_prior(np.random.default_rng(0).integers(0, 50, rows))
    start_at_prior(model, prior)
    ids = torch.randint(5, rows, (2, 12))
    logits = model(input_ids=ids).logits
    expected = torch.log_softmax(torch.from_numpy(prior), -1).expand_as(logits)
    assert torch.allclose(torch.log_softmax(logits, -1), expected, atol=1e-5)  # every position predicts the prior
    labels = torch.where(torch.rand(2, 12) < 0.5, ids, torch.full_like(ids, -100))
    masked_lm_loss(model, ids, torch.ones_like(ids), labels).backward()
    names = [n for n in head_parameter_names(model) if n.lower().endswith(("layer_norm.weight", "layernorm.weight"))]
    assert (
        len(names) == 1
    )  # the transform's LayerNorm (BERT: cls.predictions.transform.LayerNorm, XLM-R: lm_head.layer_norm)
    scale = dict(model.named_parameters())[names[0]]
    assert float(scale.detach().abs().sum()) == 0.0
    assert scale.grad is not None and scale.grad.abs().sum() > 0  # the zeroed scale still gets a gradient


def _card(tmp_path, base, **adapt):
    recipe = {
        "steps": 24,
        "head_steps": 8,
        "batch_size": 8,
        "max_length": 32,
        "lr": 3e-3,
        "head_lr": 1e-1,
        "warmup": 2,
        "max_paragraphs": 150,
        "checkpoint_every": 5,
        "eval_paragraphs": 15,
        "prior_bias": False,
        **adapt,
    }
    return TeacherCard(
        name="tiny-adapted",
        source=str(tmp_path / "zoo" / "tiny-adapted"),
        languages=LANGS,
        max_length=64,
        build={"base": str(base), "trim": {"theta": 0.0, "max_paragraphs": 150}, "adapt": recipe},
    )


def test_adaptation_lowers_the_mlm_loss_reports_drift_and_resumes(tiny_encoders, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from mergedistill.zoo import build_teacher

    logs = []
    card = _card(tmp_path, tiny_encoders["bert"])
    out = build_teacher(card, seed=0, progress=False, log=logs.append)
    report = json.loads((out / "adapt_report.json").read_text())
    assert report["vocab_after"] < report["vocab_before"] == 1500  # trimmed to the pieces en+de use
    for lang in LANGS:
        assert report["masked_accuracy_after"][lang]["ce"] < report["masked_accuracy_before"][lang]["ce"] - 0.1, report
    drift = report["drift"]
    assert (
        0.0 < drift["token_cosine"] < 0.9999 and 0.0 < drift["sentence_cosine"] < 0.9999
    )  # the encoder moved, and says how much
    assert "encoder drift" in logs[-1] and "en:" in logs[-1]
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert (
        len(AutoTokenizer.from_pretrained(out)) == model.get_input_embeddings().num_embeddings == report["vocab_after"]
    )
    assert not (tmp_path / "zoo" / "tiny-adapted.partial").exists()
    # current: skipped
    assert build_teacher(card, seed=0, progress=False, log=logs.append) == out and "up to date" in logs[-1]
    # killed at step 12 and re-run: the same weights as the uninterrupted build
    card_b = _card(tmp_path / "b", tiny_encoders["bert"])
    with pytest.raises(KeyboardInterrupt):
        build_teacher(card_b, seed=0, progress=False, stop_at_step=12, log=logs.append)
    build_teacher(card_b, seed=0, progress=False, log=logs.append)
    assert any("resuming at step 10" in line for line in logs)
    resumed = AutoModelForMaskedLM.from_pretrained(card_b.source).state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(resumed[name], value), name


def test_head_only_steps_leave_the_encoder_alone(tiny_encoders, tmp_path):
    from transformers import AutoModel, AutoModelForMaskedLM

    from mergedistill.zoo import build_teacher

    card = _card(tmp_path, tiny_encoders["xlm-roberta"], steps=4, head_steps=4)
    card.build["trim"] = None
    out = build_teacher(card, seed=0, progress=False, log=lambda m: None)
    adapted = AutoModelForMaskedLM.from_pretrained(out).base_model.state_dict()
    for name, value in AutoModel.from_pretrained(tiny_encoders["xlm-roberta"]).state_dict().items():
        if not name.startswith("pooler."):
            assert torch.equal(adapted[name], value), name
    assert json.loads((out / "adapt_report.json").read_text())["drift"]["token_cosine"] == pytest.approx(1.0, abs=1e-5)


def test_adapt_recipe_errors_name_the_key(tmp_path):
    from mergedistill.adapt import adapt_recipe

    with pytest.raises(UserError, match="build.adapt.stepz"):
        adapt_recipe(_card(tmp_path, tmp_path, stepz=3))
    with pytest.raises(UserError, match="head_steps must be between 0 and steps"):
        adapt_recipe(_card(tmp_path, tmp_path, head_steps=30))
    from mergedistill.zoo import build_teacher

    with pytest.raises(UserError, match="config.json missing"):
        build_teacher(_card(tmp_path, tmp_path / "nothing"), progress=False)
