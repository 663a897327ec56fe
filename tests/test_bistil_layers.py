"""BiStil layer mapping, phase-1 loss indices, balanced batches and a short phase-1 run."""

from types import SimpleNamespace

import pytest
import torch

from mergedistill.bistil.layer_reduction import make_student
from mergedistill.bistil.phase1 import balanced_schedule, pack_language, phase1_loss, train_phase1
from mergedistill.errors import UserError
from mergedistill.layers import attention_pairs, hidden_pairs, kept_layers
from mergedistill.tiny_models import tiny_mlm
from mergedistill.tokenizer_train import train_tokenizer


def test_layer_formulas():
    assert kept_layers(12, 3) == [2, 5, 8, 11]  # teacher layers s, 2s, 3s, 4s (1-based)
    assert kept_layers(12, 3, "bottom") == [0, 1, 2, 3]
    assert kept_layers(6, 4) == [3]
    assert attention_pairs(4, 3) == [(0, 2), (1, 5), (2, 8), (3, 11)]  # student i <-> teacher (i+1)s-1
    assert hidden_pairs(4, 3) == [(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)]  # student i <-> teacher i*s, 0 = embeddings
    with pytest.raises(UserError, match="layer_stride"):
        kept_layers(2, 3)


@pytest.fixture(scope="module")
def tokenizer(corpus_texts):
    return train_tokenizer(
        "wordpiece", corpus_texts["en"]["train"][:150] + corpus_texts["de"]["train"][:150], vocab_size=600
    )


def test_student_copies_chosen_layers_and_embeddings(tokenizer):
    teacher = tiny_mlm("bert", tokenizer, layers=4, seed=2)
    student = make_student(teacher, stride=2)
    assert student.config.num_hidden_layers == 2 and student.config.hidden_dropout_prob == 0.0
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for s_index, t_index in [(0, 1), (1, 3)]:
        for name, value in student.bert.encoder.layer[s_index].state_dict().items():
            assert torch.equal(value, teacher.bert.encoder.layer[t_index].state_dict()[name])
    assert torch.equal(
        s_state["bert.embeddings.word_embeddings.weight"], t_state["bert.embeddings.word_embeddings.weight"]
    )
    bottom = make_student(teacher, stride=2, choice="bottom")
    assert torch.equal(
        bottom.bert.encoder.layer[1].attention.self.query.weight,
        teacher.bert.encoder.layer[1].attention.self.query.weight,
    )
    scratch = make_student(teacher, stride=2, from_scratch=True, seed=5)
    assert not torch.equal(
        scratch.bert.encoder.layer[0].attention.self.query.weight,
        teacher.bert.encoder.layer[1].attention.self.query.weight,
    )


def _outputs(hidden_values, attn_values, mask_len=(3, 2)):
    batch, length, heads, width = 2, 3, 2, 4
    hidden = tuple(torch.full((batch, length, width), float(v)) for v in hidden_values)
    attn = tuple(torch.full((batch, heads, length, length), float(v)) for v in attn_values)
    return SimpleNamespace(hidden_states=hidden, attentions=attn, logits=None)


def test_loss_pairs_student_with_the_formula_layers():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    teacher = _outputs(range(7), [10 + j for j in range(6)])  # 6 layers, 7 hidden states
    exact = _outputs([0, 3, 6], [12, 15])  # s = 3: hidden i <- 3i, attention i <- 3(i+1)-1
    loss, terms = phase1_loss(exact, teacher, mask, 3, 1.0, 1.0)
    assert loss.item() == 0.0
    shifted = _outputs([0, 3, 5], [12, 14])
    _, terms = phase1_loss(shifted, teacher, mask, 3, 1.0, 1.0)
    assert terms["hidden"] == pytest.approx(1.0) and terms["attn"] == pytest.approx(1.0)


def test_loss_ignores_padding():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    teacher = _outputs([0, 1], [5])
    student = _outputs([0, 1], [5])
    student.hidden_states[1][1, 2] += 100.0  # a padded position
    student.attentions[0][1, :, 2, :] += 100.0  # padded query
    student.attentions[0][1, :, :, 2] += 100.0  # padded key
    assert phase1_loss(student, teacher, mask, 1, 1.0, 1.0)[0].item() == 0.0
    student.hidden_states[1][1, 1] += 1.0
    assert phase1_loss(student, teacher, mask, 1, 1.0, 1.0)[0].item() > 0


def test_balanced_monolingual_schedule():
    plan = balanced_schedule({"en": 10, "de": 7}, batch_size=4, steps=8, seed=0)
    langs = [lang for lang, _ in plan]
    assert langs.count("en") == langs.count("de") == 4
    assert all(len(idx) == 4 and max(idx) < {"en": 10, "de": 7}[lang] for lang, idx in plan)
    assert plan == balanced_schedule({"en": 10, "de": 7}, batch_size=4, steps=8, seed=0)


def test_short_phase1_run_improves_eval_loss(tokenizer, corpus_texts):
    torch.manual_seed(0)
    teacher = tiny_mlm("bert", tokenizer, layers=2, seed=4, dropout=0.0)
    teacher.config._attn_implementation = "eager"
    teacher.eval()
    student = make_student(
        teacher, stride=2, from_scratch=True
    )  # a copied student starts near 0 loss on a random teacher
    train = {lang: pack_language(tokenizer, corpus_texts[lang]["train"][:60], 32) for lang in ("en", "de")}
    valid = {lang: pack_language(tokenizer, corpus_texts[lang]["valid"][:20], 32) for lang in ("en", "de")}
    cfg = SimpleNamespace(
        lr=3e-3,
        weight_decay=0.0,
        warmup_steps=2,
        steps=12,
        alpha_attn=1.0,
        alpha_hidden=1.0,
        alpha_kd=0.0,
        temperature=1.0,
        eval_every=6,
        eval_batches=1,
        batch_size=4,
        mlm_probability=0.15,
    )
    cfg.alpha_kd = 0.5  # also exercise the masked-only logit term
    student, history = train_phase1(teacher, student, tokenizer, train, valid, cfg, log=lambda _: None)
    assert history[-1]["best_eval_loss"] < history[0]["eval_loss"]
    assert len([h for h in history if "eval_loss" in h]) == 3


def test_masked_batch_labels_hold_the_original_tokens_at_masked_positions_only(tokenizer, corpus_texts):
    from mergedistill.bistil.phase1 import masked_batch

    seqs = pack_language(tokenizer, corpus_texts["en"]["train"][:20], 32)[:4]
    batch = masked_batch(seqs, tokenizer, 0.3, 0, "t")
    for row, seq in enumerate(seqs):
        labels = batch["labels"][row, : len(seq)]
        masked = batch["masked"][row, : len(seq)]
        assert masked.any() and torch.equal(labels[masked], torch.as_tensor(seq, dtype=torch.long)[masked])
        assert (labels[~masked] == -100).all() and (batch["labels"][row, len(seq) :] == -100).all()


def test_scratch_phase1_learns_masked_lm_without_a_teacher(tokenizer, corpus_texts):
    """The paper's from-scratch baseline: random weights, gold masked-LM, no teacher anywhere."""
    teacher = tiny_mlm("bert", tokenizer, layers=2, seed=4, dropout=0.0)
    student = make_student(teacher, stride=2, from_scratch=True)
    train = {lang: pack_language(tokenizer, corpus_texts[lang]["train"][:60], 32) for lang in ("en", "de")}
    valid = {lang: pack_language(tokenizer, corpus_texts[lang]["valid"][:20], 32) for lang in ("en", "de")}
    cfg = SimpleNamespace(
        lr=3e-3,
        weight_decay=0.0,
        warmup_steps=2,
        steps=12,
        alpha_attn=1.0,
        alpha_hidden=1.0,
        alpha_kd=0.0,
        temperature=1.0,
        eval_every=6,
        eval_batches=1,
        batch_size=4,
        mlm_probability=0.15,
    )
    student, history = train_phase1(None, student, tokenizer, train, valid, cfg, log=lambda _: None, objective="mlm")
    assert history[-1]["best_eval_loss"] < history[0]["eval_loss"]
    assert "mlm" in history[1] and "hidden" not in history[1]  # the logged terms are masked-LM only
    with pytest.raises(ValueError, match="distil or mlm"):
        train_phase1(None, student, tokenizer, train, valid, cfg, objective="tlm")
