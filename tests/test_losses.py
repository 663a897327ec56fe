import math

import pytest
import torch

from mergedistill.losses import (
    attention_mse,
    combine,
    hidden_cosine,
    hidden_mse,
    kd_kl,
    kd_soft_ce,
    mlm_and_kd,
    mlm_ce,
    soft_ce,
)


def test_soft_ce_matches_a_hand_computation_and_renormalizes_topk():
    student = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    ids = torch.tensor([[0, 1, -1]])
    logits = torch.tensor([[0.0, 0.0, float("-inf")]])  # teacher: 50/50 over ids 0 and 1, third entry dropped
    expected = -(0.5 * math.log(0.5) + 0.5 * math.log(0.25))
    assert kd_soft_ce(student, ids, logits, 1.0) == pytest.approx(expected)


def test_temperature_and_t2_scaling():
    torch.manual_seed(0)
    student, ids, logits = torch.randn(4, 10), torch.randint(0, 10, (4, 3)), torch.randn(4, 3)
    plain = kd_soft_ce(student, ids, logits, 2.0, t2_scaling=False)
    assert kd_soft_ce(student, ids, logits, 2.0, t2_scaling=True) == pytest.approx(4 * float(plain))
    assert kd_kl(student, ids, logits, 1.0) <= kd_soft_ce(student, ids, logits, 1.0)


def test_kl_is_zero_when_the_student_equals_the_teacher_on_its_support():
    teacher_logits = torch.tensor([[2.0, 1.0, 0.5]])
    student = torch.full((1, 5), -1e9)
    student[0, :3] = teacher_logits
    assert kd_kl(student, torch.tensor([[0, 1, 2]]), teacher_logits, 1.0) == pytest.approx(0.0, abs=1e-5)


def test_mlm_and_empty_batches():
    logits = torch.tensor([[10.0, 0.0], [0.0, 10.0]])
    assert mlm_ce(logits, torch.tensor([0, 1])) < 1e-3
    empty = torch.zeros(0, 5, requires_grad=True)
    assert kd_soft_ce(empty, torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2)) == 0
    assert mlm_ce(empty, torch.zeros(0, dtype=torch.long)) == 0


def test_hidden_and_attention_terms_ignore_padding():
    s = torch.zeros(1, 3, 2)
    t = torch.zeros(1, 3, 2)
    t[0, 2] = 100.0  # only the padded position differs
    mask = torch.tensor([[1, 1, 0]])
    assert hidden_mse(s, t, mask) == 0 and hidden_cosine(s + 1, t + 1, mask) == pytest.approx(0.0, abs=1e-6)
    sa = torch.full((1, 2, 3, 3), 1 / 3)
    ta = sa.clone()
    ta[0, :, 2, :] = 0.9  # padded query row
    ta[0, :, :, 2] = 0.9  # padded key column
    assert attention_mse(sa, ta, mask) == 0
    ta[0, 0, 0, 0] = 1 / 3 + 0.5
    assert attention_mse(sa, ta, mask) == pytest.approx(0.25 / (4 * 2))


def test_combine_weights_and_logs():
    total, logged = combine(
        {"kd": torch.tensor(2.0), "mlm": torch.tensor(3.0), "hidden": torch.tensor(9.0)}, {"kd": 1.0, "mlm": 0.5}
    )
    assert float(total) == 3.5 and logged["loss_hidden"] == 9.0 and logged["loss"] == 3.5
    with pytest.raises(ValueError):
        combine({"kd": torch.tensor(1.0)}, {"kd": 0.0})


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_full_vocabulary_soft_ce_is_kd_soft_ce_with_every_id_kept(temperature):
    """BiStil's task KD and phase-1 logit term (``soft_ce``) are ``kd_soft_ce`` with the teacher's whole
    distribution: the same value and gradient, bit for bit, as the full-vocabulary formula they replaced."""
    torch.manual_seed(0)
    teacher = torch.randn(7, 11) * 3
    student = torch.randn(7, 11, requires_grad=True)
    every_id = torch.arange(11).expand(7, -1)
    reference = (
        -(torch.softmax(teacher / temperature, -1) * torch.log_softmax(student / temperature, -1)).sum(-1).mean()
        * temperature**2
    )
    (grad_reference,) = torch.autograd.grad(reference, student)
    loss = soft_ce(student, teacher, temperature)
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.equal(loss, reference) and torch.equal(grad, grad_reference)
    assert torch.equal(loss, kd_soft_ce(student, every_id, teacher, temperature))
    assert float(soft_ce(student, teacher, temperature, t2_scaling=False)) == pytest.approx(
        float(loss) / temperature**2
    )
    assert soft_ce(torch.zeros(0, 11), torch.zeros(0, 11)) == 0  # no scored rows: no loss


def _reference_terms(logits, gold, rows, ids, topk_logits):
    kd_input = logits if rows is None else logits[rows]
    return mlm_ce_reference(logits, gold), kd_soft_ce(kd_input, ids, topk_logits)


def mlm_ce_reference(logits, gold):
    return torch.nn.functional.cross_entropy(logits.float(), gold.long())


@pytest.mark.parametrize("with_rows", [True, False])
def test_mlm_and_kd_gives_the_two_terms_and_their_gradient_from_one_softmax(with_rows):
    """The fused path (train.py's) against torch's cross_entropy + kd_soft_ce: same values, same gradient, with
    missing teacher ids (-1), a row with no valid target, a repeated id and unequal term weights."""
    torch.manual_seed(0)
    n, vocab, k = 12, 50, 4
    rows = torch.rand(n) < 0.7 if with_rows else None
    m = n if rows is None else int(rows.sum())
    ids = torch.randint(0, vocab, (m, k))
    ids[0, 1] = -1
    ids[1, 2] = ids[1, 3]  # two teacher pieces that map to one student piece
    topk_logits = torch.randn(m, k)
    topk_logits[ids < 0] = float("-inf")
    ids[2], topk_logits[2] = -1, float("-inf")  # no target left in this row
    gold = torch.randint(0, vocab, (n,))
    base = torch.randn(n, vocab) * 2
    grads, values = [], []
    for fn in (_reference_terms, lambda *a: mlm_and_kd(*a)):
        logits = base.clone().requires_grad_()
        mlm, kd = fn(logits, gold, rows, ids, topk_logits)
        (0.3 * mlm + 1.7 * kd).backward()
        values.append(torch.stack([mlm.detach(), kd.detach()]))
        grads.append(logits.grad)
    torch.testing.assert_close(values[1], values[0])
    torch.testing.assert_close(grads[1], grads[0])
    assert grads[0].abs().max() > 1e-3  # the comparison is not between zeros


def test_the_fused_function_without_kd_rows_is_torch_cross_entropy():
    """benchmarks/vocab_losses.py times MLM alone through the fused function (no KD row) against torch's."""
    from mergedistill.losses import _MlmAndKd

    torch.manual_seed(1)
    logits, gold = torch.randn(9, 30, requires_grad=True), torch.randint(0, 30, (9,))
    none = torch.zeros(0, dtype=torch.long)
    ours, kd = _MlmAndKd.apply(logits, gold, none, none[:, None], none[:, None].float())
    (ours + kd).backward()
    reference = logits.detach().clone().requires_grad_()
    expected = torch.nn.functional.cross_entropy(reference, gold)
    expected.backward()
    assert float(kd) == 0.0
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(logits.grad, reference.grad)


def test_mlm_and_kd_at_another_temperature_is_the_two_functions():
    torch.manual_seed(2)
    logits, gold = torch.randn(5, 20), torch.randint(0, 20, (5,))
    ids, topk_logits = torch.randint(0, 20, (5, 3)), torch.randn(5, 3)
    mlm, kd = mlm_and_kd(logits, gold, None, ids, topk_logits, temperature=2.0)
    torch.testing.assert_close(kd, kd_soft_ce(logits, ids, topk_logits, 2.0))
    torch.testing.assert_close(mlm, mlm_ce(logits, gold))
