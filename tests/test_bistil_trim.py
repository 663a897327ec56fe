"""BiStil vocabulary trimming: the trimmed teacher reproduces the original on the two languages' text."""

import numpy as np
import pytest
import torch

from mergedistill.tiny_models import tiny_mlm
from mergedistill.tokenizer_train import train_tokenizer
from mergedistill.vocab.trim import piece_counts, select_kept, trim_teacher


@pytest.fixture(scope="module")
def bilingual(corpus_texts):
    return {lang: corpus_texts[lang]["train"][:120] for lang in ("en", "de")}


@pytest.fixture(scope="module")
def family_tokenizers(corpus_texts):
    # trained on four languages, so trimming to en+de has ja/ru pieces to drop
    texts = [t for lang in ("en", "de", "ja", "ru") for t in corpus_texts[lang]["train"][:150]]
    return {family: train_tokenizer(family, texts, vocab_size=900) for family in ("wordpiece", "unigram", "bytelevel")}


def test_select_kept_uses_either_language_and_specials():
    src = np.array([0, 50, 50, 0, 0])
    tgt = np.array([0, 0, 1, 99, 0])
    assert select_kept([src, tgt], theta=0.02, always=[0]).tolist() == [0, 1, 2, 3]
    assert select_kept([src, tgt], theta=0.5, always=[0]).tolist() == [0, 1, 2, 3]  # 0.5 in src, 0.99 in tgt
    assert select_kept([src, tgt], theta=0.6, always=[4]).tolist() == [3, 4]


@pytest.mark.parametrize("arch,family", [("bert", "wordpiece"), ("xlm-roberta", "unigram"), ("roberta", "bytelevel")])
def test_trimmed_teacher_gives_same_outputs(arch, family, family_tokenizers, bilingual):
    tokenizer = family_tokenizers[family]
    original = tiny_mlm(arch, tokenizer, seed=3).eval()
    reference = tiny_mlm(arch, tokenizer, seed=3).eval()
    texts = bilingual["en"] + bilingual["de"]
    model, trimmed_tok, kept, counts = trim_teacher(original, tokenizer, [bilingual["en"], bilingual["de"]], theta=1e-6)
    assert 0 < len(kept) < len(tokenizer)  # something was dropped (ja/ru pieces)
    assert len(trimmed_tok) == len(kept) == model.config.vocab_size == model.get_input_embeddings().weight.shape[0]
    assert set(tokenizer.all_special_ids) <= set(kept.tolist())
    for lang_counts in counts:  # every piece the two languages use survives
        assert set(np.flatnonzero(lang_counts).tolist()) <= set(kept.tolist())
    sample = texts[::12] + ["LibreOffice Calc öffnet die Datei."]
    old = tokenizer(sample, padding=True, truncation=True, max_length=64, return_tensors="pt")
    new = trimmed_tok(sample, padding=True, truncation=True, max_length=64, return_tensors="pt")
    assert torch.equal(torch.as_tensor(kept)[new["input_ids"]], old["input_ids"])  # same pieces, new ids
    with torch.no_grad():
        want = reference(**old).logits[..., torch.as_tensor(kept)]
        got = model(**new).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert trimmed_tok.decode(new["input_ids"][0], skip_special_tokens=True) == tokenizer.decode(
        old["input_ids"][0], skip_special_tokens=True
    )


def test_counts_ignore_special_tokens(family_tokenizers):
    tokenizer = family_tokenizers["wordpiece"]
    counts = piece_counts(tokenizer, ["Hello world", "Hello"])
    assert counts[tokenizer.cls_token_id] == 0 and counts.sum() == len(
        tokenizer("Hello world Hello", add_special_tokens=False)["input_ids"]
    )
