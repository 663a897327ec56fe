"""The out-of-core data path (``mergedistill.data_store``): packed sequences in memory-mapped Arrow files.

The digests below were produced by the in-memory path (``make_stream`` holding ``list[np.ndarray]``) BEFORE
the Arrow path existed (commit 6b60f32): the Arrow-backed streams must give the very same packed sequences
and the very same batches, so the demo's numbers do not move.
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest

from mergedistill.data import DataPlan, make_stream

LANGS = ("de", "en")
PARAGRAPHS = 1500
MAX_LENGTH = 64
# sha256 over every packed sequence, and over 40 batches of 8, as the in-memory path of 6b60f32 made them
OLD_SEQUENCES = {
    "de": "64a6a6260efe0300047a3d8c30beef5a1a89b1bd20c5051e40bc8c695076dd15",
    "en": "a1c3635604b68b7cf630a9c3542cbd9ce86c6f50f2763b9be1ce7bda00ebd0ed",
}
OLD_BATCHES = "c3ee9dc729fbbed29e0534d8325ae8b0fa294548fa34a30f195202c758ad7265"


def word_level_teacher(texts: list[str]):
    """A deterministic teacher stand-in: a word-level tokenizer over the corpus's 3000 most frequent words
    (no training, so the digests do not depend on a trainer's version), with BERT-style specials."""
    from collections import Counter

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    counts = Counter(w for t in texts for w in t.split())
    words = sorted(counts, key=lambda w: (-counts[w], w))[:3000]
    vocab = {piece: i for i, piece in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    roles = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    keys = tuple([None] * len(specials) + [("▁" if i % 2 else "") + w for i, w in enumerate(words)])
    return SimpleNamespace(
        name="words",
        tokenizer=tokenizer,
        card=SimpleNamespace(max_length=512),
        vocab=SimpleNamespace(roles=roles, keys=keys),
        tokenizer_fingerprint=lambda: hashlib.sha256(backend.to_str().encode()).hexdigest(),
    )


@pytest.fixture(scope="module")
def corpus():
    from mergedistill.corpus import load_texts

    return {lang: load_texts(lang, "train", limit=PARAGRAPHS) for lang in LANGS}


@pytest.fixture(scope="module")
def teacher(corpus):
    return word_level_teacher([t for lang in LANGS for t in corpus[lang]])


def id_map_of(teacher) -> np.ndarray:
    size = len(teacher.vocab.keys)
    return np.where(np.arange(size) % 7 == 6, -1, np.arange(size))  # some pieces the student lacks


def sequences_digest(sequences) -> str:
    digest = hashlib.sha256()
    for seq in sequences:
        digest.update(np.asarray(seq, dtype=np.int32).tobytes() + b"|")
    return digest.hexdigest()


def batches_digest(plan: DataPlan, n: int) -> str:
    digest = hashlib.sha256()
    for i in range(n):
        batch = plan.batch(i)
        for key in ("input_ids", "attention_mask", "labels", "teacher_input_ids", "teacher_labels"):
            digest.update(batch[key].numpy().astype(np.int64).tobytes())
        digest.update(f"{batch['lang']}{batch['teacher']}".encode())
    return digest.hexdigest()


def streams_of(corpus, teacher, **kw):
    return [
        make_stream(lang, teacher, corpus[lang], id_map_of(teacher), MAX_LENGTH, whole_word=lang == "en", **kw)
        for lang in LANGS
    ]


def plan_of(streams) -> DataPlan:
    return DataPlan(streams, batch_size=8, n_batches=40, seed=3, alpha=0.5, mask_seed=11)


def print_digests(corpus, teacher) -> None:  # how the constants above were made
    streams = streams_of(corpus, teacher)
    print({s.lang: sequences_digest(s.sequences) for s in streams}, batches_digest(plan_of(streams), 40))


def test_arrow_streams_pack_and_batch_exactly_like_the_in_memory_path(tmp_path, corpus, teacher):
    from mergedistill.corpus import load_text_dataset
    from mergedistill.data_store import ArrowSequences

    in_memory = streams_of(corpus, teacher)
    datasets = {lang: load_text_dataset(lang, "train", limit=PARAGRAPHS) for lang in LANGS}  # memory-mapped
    logs = []
    stored = streams_of(datasets, teacher, data_dir=tmp_path, workers=2, log=logs.append)
    for streams in (in_memory, stored):
        assert {s.lang: sequences_digest(s.sequences) for s in streams} == OLD_SEQUENCES
        assert batches_digest(plan_of(streams), 40) == OLD_BATCHES
    assert all(isinstance(s.sequences, ArrowSequences) for s in stored)
    assert [s.fingerprint() for s in stored] == [s.fingerprint() for s in in_memory]  # plans and caches keep theirs
    assert [s.chars for s in stored] == [s.chars for s in in_memory]
    assert plan_of(stored).fingerprint() == plan_of(in_memory).fingerprint()
    assert len(logs) == 2 and all(": built " in line for line in logs), logs
    # a list of the same texts is the same data: opened, not built again
    again = streams_of(corpus, teacher, data_dir=tmp_path, log=logs.append)
    assert len(logs) == 4 and all(": opened " in line for line in logs[2:]), logs
    assert [s.sequences.path for s in again] == [s.sequences.path for s in stored]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(s.sequences.path.parent.name for s in stored)
    assert sorted(p.name for p in stored[0].sequences.path.parent.iterdir()) == ["info.json", "sequences.arrow"]


def test_other_text_or_tokenization_is_other_data(tmp_path, corpus, teacher):
    first = make_stream("de", teacher, corpus["de"][:300], id_map_of(teacher), MAX_LENGTH, data_dir=tmp_path)
    edited = corpus["de"][:299] + [corpus["de"][299] + " x"]
    second = make_stream("de", teacher, edited, id_map_of(teacher), MAX_LENGTH, data_dir=tmp_path)
    longer = make_stream("de", teacher, corpus["de"][:300], id_map_of(teacher), 2 * MAX_LENGTH, data_dir=tmp_path)
    paths = {s.sequences.path for s in (first, second, longer)}
    assert len(paths) == 3 and all(p.is_file() for p in paths)


def test_packing_arrow_batches_equals_masking_pack():
    import pyarrow as pa

    from mergedistill.data_store import pack_batches
    from mergedistill.masking import pack

    rng = np.random.default_rng(0)
    paragraphs = [rng.integers(5, 100, size=int(n)).tolist() for n in rng.choice([0, 1, 3, 7, 15, 40], size=300)]
    for max_length in (4, 9, 16, 64):
        expected = pack(paragraphs, max_length, 1, 2)
        batches = [pa.array(paragraphs[i : i + 37], pa.list_(pa.int32())) for i in range(0, len(paragraphs), 37)]
        got = list(pack_batches(batches, max_length, 1, 2))
        assert len(got) == len(expected) and all(np.array_equal(a, b) for a, b in zip(got, expected)), max_length


def test_arrow_sequences_index_like_a_list(tmp_path, corpus, teacher, monkeypatch):
    from mergedistill import data_store

    monkeypatch.setattr(data_store, "WRITE_BATCH", 100)  # several Arrow record batches
    stream = make_stream("en", teacher, corpus["en"][:400], id_map_of(teacher), 16, data_dir=tmp_path)
    reference = make_stream("en", teacher, corpus["en"][:400], id_map_of(teacher), 16).sequences
    stored = stream.sequences
    assert len(stored) == len(reference) > 300
    for i in (0, 1, 99, 100, 101, 299, len(reference) - 1, -1):
        assert np.array_equal(stored[i], reference[i]), i
    assert [len(s) for s in stored[:5]] == [len(s) for s in reference[:5]]
    assert stored.pieces == sum(len(s) for s in reference)
    with pytest.raises(IndexError):
        stored[len(reference)]


def test_tokenizing_workers_inherit_the_tokenizer_instead_of_unpickling_it(tmp_path, corpus, teacher, monkeypatch):
    """Forked map workers get the tokenizer from the parent's memory (``data_store.ForkShared``): pickled into the
    tasks, a 250k-piece tokenizer is rebuilt from its JSON in every worker (seconds each, issue 23's small-corpus
    throughput). The sequences are the ones one process makes, and nothing stays registered."""
    from mergedistill import data_store

    pickled = []

    class CountingBackend:  # the plain backend, counting how often it is pickled
        def __init__(self, backend):
            self.backend = backend

        def encode_batch(self, *args, **kwargs):
            return self.backend.encode_batch(*args, **kwargs)

        def __getstate__(self):
            pickled.append(1)
            return {"backend": self.backend}

    real = data_store.plain_backend
    monkeypatch.setattr(data_store, "plain_backend", lambda tokenizer: CountingBackend(real(tokenizer)))
    texts = corpus["en"][:600]
    args = (teacher.tokenizer, "words", MAX_LENGTH, 2, 3)
    forked, _ = data_store.stream_sequences(tmp_path / "forked", texts, *args, workers=2)
    assert pickled == [] and data_store._FORK_SHARED == {}
    alone, _ = data_store.stream_sequences(tmp_path / "alone", texts, *args, workers=1)
    assert sequences_digest(forked) == sequences_digest(alone) and len(alone) > 10


def test_the_plain_backend_is_the_tokenizers_own_unless_it_truncates(teacher):
    from mergedistill.data_store import plain_backend

    tokenizer = teacher.tokenizer
    text = "der die das " * 20
    assert plain_backend(tokenizer) is tokenizer.backend_tokenizer  # no copy of the vocabulary
    tokenizer.backend_tokenizer.enable_truncation(8)
    try:
        backend = plain_backend(tokenizer)
        assert backend is not tokenizer.backend_tokenizer and backend.truncation is None
        assert len(backend.encode(text, add_special_tokens=False).ids) == 60
        assert tokenizer.backend_tokenizer.truncation is not None  # the tokenizer itself is left as it was
    finally:
        tokenizer.backend_tokenizer.no_truncation()
