"""LT-SFT: exactly the chosen density of body parameters changes; the sparse diff applies and removes exactly."""

import pytest
import torch

from mergedistill.bistil.ltsft import SparseDiff, lt_sft, select_mask, snapshot
from mergedistill.errors import UserError


def _model(seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def _batches(n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [
        {"input_ids": torch.randint(5, 50, (8, 10), generator=gen), "labels": torch.randint(0, 3, (8,), generator=gen)}
        for _ in range(n)
    ]


def _loss(model, batch):
    return model(input_ids=batch["input_ids"], labels=batch["labels"]).loss


def test_select_mask_is_global_top_k():
    theta0 = {"a": torch.zeros(4), "b": torch.zeros(2, 3)}
    theta1 = {"a": torch.tensor([0.1, -5.0, 0.0, 0.2]), "b": torch.tensor([[3.0, 0.0, -0.3], [0.0, 0.0, 4.0]])}
    mask = select_mask(theta0, theta1, density=0.3)  # round(0.3 * 10) = 3
    assert mask["a"].tolist() == [False, True, False, False]
    assert mask["b"].tolist() == [[True, False, False], [False, False, True]]


def test_lt_sft_changes_exactly_the_density():
    model = _model()
    eligible = [
        n
        for n, _ in model.named_parameters()
        if n.startswith("bert.") and "pooler" not in n and "word_embeddings" not in n
    ]
    head = [n for n, _ in model.named_parameters() if n not in eligible]
    theta0 = snapshot(model)
    batches = _batches(6)
    mask, base, losses = lt_sft(model, eligible, _loss, batches, batches, density=0.08, lr=1e-2, weight_decay=0.01)
    total = sum(theta0[n].numel() for n in eligible)
    k = round(0.08 * total)
    assert sum(int(m.sum()) for m in mask.values()) == k
    after = snapshot(model)
    changed = {n: after[n] != theta0[n] for n in eligible}
    assert sum(int(c.sum()) for c in changed.values()) == k  # weight decay did not leak outside the mask
    assert all(not (changed[n] & ~mask[n]).any() for n in eligible)
    assert all(not torch.equal(after[n], theta0[n]) for n in head if "classifier" in n)  # the head trains densely
    assert losses["sparse"][-1] < losses["sparse"][0]


def test_sparse_diff_apply_remove_roundtrip(tmp_path):
    model = _model()
    names = [n for n, _ in model.named_parameters() if n.startswith("bert.encoder")]
    theta0 = snapshot(model, names)
    tuned = _model()
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if name in names:
                param.copy_(theta0[name])
                flat = param.view(-1)
                flat[::7] += torch.randn(flat[::7].shape) * 1e-3  # awkward float increments
    theta1 = snapshot(tuned, names)
    diff = SparseDiff.between(theta0, theta1)
    assert diff.nnz == sum(int((theta1[n] != theta0[n]).sum()) for n in names)
    diff.save(tmp_path / "diff.safetensors")
    loaded = SparseDiff.load(tmp_path / "diff.safetensors")
    loaded.apply(model)
    assert all(torch.equal(dict(model.named_parameters())[n], theta1[n]) for n in names)
    loaded.remove(model)
    assert all(torch.equal(dict(model.named_parameters())[n], theta0[n]) for n in names)


def test_sparse_diff_rejects_other_model(tmp_path):
    model = _model()
    diff = SparseDiff({"bert.nope.weight": (torch.tensor([0]), torch.tensor([1.0], dtype=torch.float64), (1,))})
    with pytest.raises(UserError, match="bert.nope.weight"):
        diff.apply(model)
    (tmp_path / "bad.safetensors").write_text("junk")
    with pytest.raises(UserError, match="bad.safetensors"):
        SparseDiff.load(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("variant", ["dense", "bistil"])
def test_phase2_head_learns_at_head_lr_and_the_body_at_lr(tmp_path, variant):
    from types import SimpleNamespace

    from transformers import BertForMaskedLM

    from mergedistill.bistil.phase2 import task_model, train_student

    BertForMaskedLM(_model(seed=3).config).save_pretrained(
        tmp_path / "phase1"
    )  # a phase-1 masked LM: the task head is new
    teacher = _model(seed=4).eval()
    batches = [{**b, "attention_mask": torch.ones_like(b["input_ids"])} for b in _batches(4)]
    cfg = SimpleNamespace(
        temperature=1.0,
        alpha_kd=1.0,
        alpha_gold=1.0,
        alpha_attn=0.0,
        alpha_hidden=0.0,
        include_embeddings=False,
        lr=1e-2,
        head_lr=1e-12,
        density=0.5,
    )
    trained, _, head, _ = train_student(
        tmp_path / "phase1", teacher, "sequence", 3, variant, cfg, batches[:2], batches[2:]
    )
    fresh = task_model(tmp_path / "phase1", "sequence", 3)  # the same seed: the head's initial weights
    assert head and all(
        torch.allclose(value, dict(fresh.named_parameters())[name], atol=1e-8) for name, value in head.items()
    )
    body = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(dict(trained.named_parameters())[body], dict(fresh.named_parameters())[body])
