"""Merge realistic vocabulary sizes: a 250k SentencePiece unigram, a 120k WordPiece and a 50k byte-level BPE.

The vocabularies are generated (no hub here) with realistic strings: word-initial and continuation pieces
of several scripts, with the overlap real vocabularies have (shared frequent subwords and words). The run
normalizes each (through the same `piece_key` used for real tokenizers), merges them with corpus counts,
builds the id maps and writes them; it prints the wall time and peak memory as a final JSON line.
Target (issue 4): under 10 s and under 2 GB.

    python benchmarks/vocab_merge.py
"""

import json
import resource
import tempfile
import time

import numpy as np

from mergedistill.io import atomic_dir
from mergedistill.pieces import NormalizedVocab, piece_key
from mergedistill.vocab import merge_vocabs, save_vocab

ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyzäöüß",
    "абвгдежзийклмнопрстуфхцчшщыэюя",
    "あいうえおかきくけこさしすせそたちつてとなにぬねの日本語東京",
    "éèàçùâêîôûë",
]


def random_pieces(rng, n, lengths=(1, 9)):
    out = set()
    while len(out) < n:
        alphabet = ALPHABETS[rng.integers(len(ALPHABETS))]
        size = int(rng.integers(*lengths))
        out.add("".join(alphabet[i] for i in rng.integers(len(alphabet), size=size)))
    return sorted(out)


def generate(rng):
    shared = random_pieces(rng, 60_000)  # the overlap real vocabularies share
    unigram = ["<s>", "<pad>", "</s>", "<unk>"] + [
        ("▁" if rng.random() < 0.6 else "") + p for p in shared[:40_000] + random_pieces(rng, 215_000)
    ]
    unigram = list(dict.fromkeys(unigram))[:250_000] + ["<mask>"]
    wordpiece = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
        ("##" if rng.random() < 0.4 else "") + p for p in shared[20_000:60_000] + random_pieces(rng, 85_000)
    ]
    wordpiece = list(dict.fromkeys(wordpiece))[:120_000]
    byte_table = {
        b: c for c, b in __import__("mergedistill.pieces", fromlist=["_byte_decoder"])._byte_decoder().items()
    }

    def to_bytelevel(text, initial):
        return "".join(byte_table[b] for b in ((" " if initial else "") + text).encode("utf-8"))

    bytelevel = ["<s>", "<pad>", "</s>", "<unk>"] + [
        to_bytelevel(p, rng.random() < 0.5) for p in shared[:10_000] + random_pieces(rng, 42_000, (1, 5))
    ]
    bytelevel = list(dict.fromkeys(bytelevel))[:50_000] + ["<mask>"]
    return {
        "unigram": (unigram, "sentencepiece", {"cls": 0, "pad": 1, "sep": 2, "unk": 3, "mask": len(unigram) - 1}),
        "wordpiece": (wordpiece, "wordpiece", {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}),
        "bytelevel": (bytelevel, "bytelevel", {"cls": 0, "pad": 1, "sep": 2, "unk": 3, "mask": len(bytelevel) - 1}),
    }


def main():
    rng = np.random.default_rng(0)
    raw = generate(rng)
    start = time.perf_counter()
    vocabs, counts = {}, {}
    for name, (pieces, family, roles) in raw.items():
        special = set(roles.values())
        keys = tuple(None if i in special else piece_key(p, family) for i, p in enumerate(pieces))
        vocabs[name] = NormalizedVocab(family, keys, roles, False)
        counts[name] = rng.zipf(1.3, size=len(pieces)).astype(np.int64) * (rng.random(len(pieces)) < 0.9)
    merged = merge_vocabs(vocabs, counts, min_freq=1e-6, add_byte_pieces=True)
    with tempfile.TemporaryDirectory() as tmp, atomic_dir(f"{tmp}/vocab") as out:
        save_vocab(merged, out)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"teachers: {', '.join(f'{n}={len(v)}' for n, v in vocabs.items())}; merged: {len(merged)} pieces")
    print(
        json.dumps(
            {
                "benchmark": "vocab_merge",
                "teacher_sizes": {n: len(v) for n, v in vocabs.items()},
                "merged_size": len(merged),
                "seconds": round(seconds, 2),
                "peak_rss_mb": round(peak_mb, 1),
                "target_seconds": 10,
                "target_mb": 2048,
                "meets_target": seconds < 10 and peak_mb < 2048,
            }
        )
    )


if __name__ == "__main__":
    main()
