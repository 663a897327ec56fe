import numpy as np

from mergedistill.masking import apply_mask, choose_masked, example_rng, mask_sequence, pack, pad_batch, word_ids


def test_rates_are_15_percent_and_80_10_10():
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 1000, size=200_000)
    special = np.zeros_like(ids, dtype=bool)
    special[::50] = True
    masked_ids, masked = mask_sequence(ids, special, rng, 0.15, mask_id=4, random_pool=np.arange(10, 1000))
    assert abs(masked.sum() / (~special).sum() - 0.15) < 0.005
    assert not (masked & special).any()
    changed = masked_ids[masked]
    as_mask = (changed == 4).mean()
    unchanged = (changed == ids[masked]).mean()
    assert abs(as_mask - 0.8) < 0.01 and 0.09 < unchanged < 0.12  # 10 % kept + random draws equal by chance
    assert (masked_ids[~masked] == ids[~masked]).all()


def test_whole_word_masking_takes_whole_words():
    rng = np.random.default_rng(1)
    word_start = np.array([1, 0, 0, 1, 1, 0, 1, 0, 0, 0] * 50, dtype=bool)
    special = np.zeros(500, dtype=bool)
    masked = choose_masked(~special, rng, 0.3, word_start)
    words = word_ids(word_start)
    for w in np.unique(words):
        in_word = masked[words == w]
        assert in_word.all() or not in_word.any()
    assert masked.any()


def test_same_seed_same_mask_different_seed_different():
    ids = np.arange(5, 105)
    special = np.zeros(100, dtype=bool)
    a = mask_sequence(ids, special, example_rng(7, "de", 3), 0.15, 4, np.arange(5, 105))
    b = mask_sequence(ids, special, example_rng(7, "de", 3), 0.15, 4, np.arange(5, 105))
    c = mask_sequence(ids, special, example_rng(8, "de", 3), 0.15, 4, np.arange(5, 105))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_packing_fills_sequences_and_keeps_every_token():
    paragraphs = [[100 + i] * n for i, n in enumerate([5, 7, 30, 3, 2, 40, 1])]
    seqs = pack(paragraphs, max_length=16, cls_id=2, sep_id=3)
    assert all(len(s) <= 16 and s[0] == 2 and s[-1] == 3 for s in seqs)
    content = [t for s in seqs for t in s if t not in (2, 3)]
    assert content == [t for p in paragraphs for t in p]
    ids, attention = pad_batch(seqs, pad_id=0)
    padding = 1 - attention.sum() / attention.size
    unpacked_padding = 1 - sum(min(len(p) + 2, 16) for p in paragraphs) / (len(paragraphs) * 16)
    assert padding < unpacked_padding


def test_apply_mask_with_nothing_masked_is_identity():
    ids = np.arange(10)
    assert np.array_equal(apply_mask(ids, np.zeros(10, bool), np.random.default_rng(0), 4, np.arange(10)), ids)
