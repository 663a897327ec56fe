import numpy as np
import pytest
import torch

from mergedistill.heads import masked_lm_logits
from mergedistill.mlm_metrics import EvalSet, fertility, masked_token_accuracy, pseudo_log_likelihood
from tests.conftest import FAMILIES


class FixedModel(torch.nn.Module):
    """A 'masked-LM' whose log-probs are fixed per position: known answers for the metrics."""

    def __init__(self, vocab=6, right=True):
        super().__init__()
        self.vocab, self.right = vocab, right

    def forward(self, input_ids, attention_mask):
        # predict token (position + 1) mod V with prob 0.5, the rest uniform over the other V-1 tokens
        b, t = input_ids.shape
        probs = torch.full((b, t, self.vocab), 0.5 / (self.vocab - 1))
        target = (torch.arange(t) + 1) % self.vocab if self.right else torch.zeros(t, dtype=torch.long)
        probs[:, torch.arange(t), target] = 0.5
        return type("Out", (), {"logits": probs.log()})()


def make_set():
    seq = np.array([0, 2, 3, 4, 5, 1])  # position p holds p + 1 (mod 6) except the specials 0 and 1
    special = np.array([True, False, False, False, False, True])
    return EvalSet([seq, seq], [special, special], chars=[10, 10], words=[2, 2])


def test_pll_matches_a_hand_computation():
    out = pseudo_log_likelihood(FixedModel(), make_set(), mask_id=5, pad_id=0)
    assert out["pll"] == pytest.approx(8 * np.log(0.5))  # 4 positions x 2 sequences, p = 0.5 each
    assert out["pll_per_char"] == pytest.approx(8 * np.log(0.5) / 20)
    assert out["pll_per_word"] == pytest.approx(8 * np.log(0.5) / 4)


def test_accuracy_is_deterministic_and_sees_right_and_wrong_models():
    right = masked_token_accuracy(FixedModel(), make_set(), mask_id=5, pad_id=0, seed=3, prob=0.5)
    assert right["acc"] == 1.0 and right["masked"] == 4
    assert right == masked_token_accuracy(FixedModel(), make_set(), mask_id=5, pad_id=0, seed=3, prob=0.5)
    assert (
        masked_token_accuracy(FixedModel(right=False), make_set(), mask_id=5, pad_id=0, seed=3, prob=0.5)["acc"] == 0.0
    )


def test_fertility_counts_pieces_per_word_and_unknowns():
    out = fertility(make_set(), unk_id=4)
    assert out["fertility"] == 2.0 and out["unk_rate"] == pytest.approx(2 / 8)


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_masked_only_head_equals_the_full_head(arch, tiny_teachers):
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(tiny_teachers[arch]).eval()
    ids = torch.randint(5, 300, (3, 12))
    attention = torch.ones_like(ids)
    attention[2, 8:] = 0
    masked = torch.rand(3, 12, generator=torch.Generator().manual_seed(0)) < 0.4
    masked &= attention.bool()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=attention).logits[masked]
        fast, _ = masked_lm_logits(model, ids, attention, masked)
    assert torch.allclose(full, fast, atol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "xlm-roberta"])
def test_speed_measurement_never_builds_full_vocabulary_logits(arch, tiny_teachers):
    from transformers import AutoModelForMaskedLM

    from mergedistill.heldout_eval import latency_ms

    model = AutoModelForMaskedLM.from_pretrained(tiny_teachers[arch]).eval()
    projected = []  # rows that reach the vocabulary projection, per call
    model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: projected.append(out.reshape(-1, out.shape[-1]).shape[0])
    )
    assert latency_ms(model, model.config.vocab_size, batch_size=4, length=32, repeats=2) > 0
    assert projected and max(projected) < 4 * 32 / 2  # about 15 % of the 128 positions, never all of them


def test_per_character_scores_divide_by_the_text_actually_scored(teachers, corpus_texts):
    from mergedistill.heldout_eval import teacher_eval_set, teacher_metrics

    teacher = teachers["bert"]  # card max_length 64: a long text is cut
    long_text = " ".join(corpus_texts["en"]["train"][:30])
    eval_set = teacher_eval_set(teacher, [long_text])
    scored = long_text[: eval_set.chars[0]]
    assert 0 < eval_set.chars[0] < len(long_text) / 2 and eval_set.words[0] == len(scored.split())
    assert (
        teacher.tokenizer(scored)["input_ids"] == eval_set.sequences[0].tolist()
    )  # the ids stand for exactly that prefix
    short = corpus_texts["en"]["valid"][0]
    assert teacher_eval_set(teacher, [short]).chars == [len(short)]  # an uncut text counts whole
    once, longer = teacher_metrics(teacher, [long_text]), teacher_metrics(teacher, [long_text + " " + long_text])
    assert once["pll_per_char"] == pytest.approx(longer["pll_per_char"])  # text past the cut is not in the denominator
    assert once["fertility"] == pytest.approx(longer["fertility"])
