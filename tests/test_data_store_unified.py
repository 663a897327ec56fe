"""Unified-mode streams (``data.tokenization: unified``) out of core: the aligned sequences in memory-mapped Arrow.

The digests below were produced by the in-memory unified path (``make_stream`` holding ``list[AlignedSequence]``)
BEFORE the Arrow path stored them (commit 7d5a38f): the Arrow-backed streams must give the very same aligned
sequences and the very same batches. They cover the four fields the record had then; every field the record has
now is compared with the in-memory path of the same run. The tokenizers are built from fixed vocabularies (no
training), so the digests do not depend on a trainer: the teacher is test_data_store's word-level one, the student
a WordPiece over fewer words (other words in pieces: groups of several pieces on the student side).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter

import numpy as np
import pytest

from mergedistill.data import DataPlan, make_stream
from tests.test_data_store import id_map_of, word_level_teacher

LANGS = ("de", "en")
PARAGRAPHS = 300
MAX_LENGTH = 64
FIELDS = ("student_ids", "teacher_ids", "student_groups", "teacher_groups")  # the record's fields at 7d5a38f
BATCH_KEYS = (
    "input_ids",
    "attention_mask",
    "labels",
    "teacher_input_ids",
    "teacher_attention_mask",
    "teacher_labels",
    "teacher_positions",
    "kd_positions",
    "teacher_glued",
)
OLD_ALIGNED = {
    "de": "5b037b683d172b550931af1e9504514478539e606a1bbd726f1780acdb9ee68b",
    "en": "6970efc636a30fb7bcc51f59d10e7769e6a917d11690149f38fe89ddaaa46f72",
}
OLD_BATCHES = "07d9667a23e4ec393ae5dec364123667b085c75d166b79a0ef6f6a9a5ef03b0a"


def wordpiece_student(texts: list[str]):
    """A unified-tokenizer stand-in: WordPiece over the 800 most frequent words and every character (alone and as
    ``##`` continuation), the merged vocabulary's special ids first."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # SPECIAL_IDS: pad 0, unk 1, cls 2, sep 3, mask 4
    counts = Counter(w for t in texts for w in t.split())
    words = sorted(counts, key=lambda w: (-counts[w], w))[:800]
    chars = sorted({c for t in texts for c in t if not c.isspace()})
    pieces = list(dict.fromkeys(specials + words + chars + ["##" + c for c in chars]))
    backend = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


@pytest.fixture(scope="module")
def corpus():
    from mergedistill.corpus import load_texts

    return {lang: load_texts(lang, "train", limit=PARAGRAPHS) for lang in LANGS}


@pytest.fixture(scope="module")
def teacher(corpus):
    return word_level_teacher([t for lang in LANGS for t in corpus[lang]])


@pytest.fixture(scope="module")
def student(corpus):
    return wordpiece_student([t for lang in LANGS for t in corpus[lang]])


def aligned_digest(aligned, fields=FIELDS) -> str:
    digest = hashlib.sha256()
    for record in aligned:
        for name in fields:
            value = np.asarray(getattr(record, name))
            digest.update(name.encode() + str(value.dtype).encode() + value.tobytes() + b"|")
    return digest.hexdigest()


def batches_digest(plan: DataPlan, n: int) -> str:
    digest = hashlib.sha256()
    for i in range(n):
        batch = plan.batch(i)
        for key in BATCH_KEYS:
            digest.update(key.encode() + batch[key].numpy().astype(np.int64).tobytes())
        digest.update(f"{batch['lang']}{batch['teacher']}".encode())
    return digest.hexdigest()


def streams_of(corpus, teacher, student, **kw):
    return [
        make_stream(lang, teacher, corpus[lang], id_map_of(teacher), MAX_LENGTH, student_tokenizer=student, **kw)
        for lang in LANGS
    ]


def plan_of(streams) -> DataPlan:
    return DataPlan(streams, batch_size=8, n_batches=40, seed=3, alpha=0.5, mask_seed=11)


def print_digests(corpus, teacher, student) -> None:  # how the constants above were made
    streams = streams_of(corpus, teacher, student)
    print({s.lang: aligned_digest(s.aligned) for s in streams}, batches_digest(plan_of(streams), 40))


def test_arrow_unified_streams_align_and_batch_exactly_like_the_in_memory_path(tmp_path, corpus, teacher, student):
    from mergedistill.corpus import load_text_dataset
    from mergedistill.data_store import ArrowAligned, ArrowSequences

    in_memory = streams_of(corpus, teacher, student)
    datasets = {lang: load_text_dataset(lang, "train", limit=PARAGRAPHS) for lang in LANGS}  # memory-mapped
    logs = []
    stored = streams_of(datasets, teacher, student, data_dir=tmp_path, workers=2, log=logs.append)
    for streams in (in_memory, stored):
        assert {s.lang: aligned_digest(s.aligned) for s in streams} == OLD_ALIGNED
        assert batches_digest(plan_of(streams), 40) == OLD_BATCHES
    assert all(isinstance(s.aligned, ArrowAligned) and isinstance(s.sequences, ArrowSequences) for s in stored)
    for memory, arrow in zip(in_memory, stored):  # every field the record has, with its dtype
        names = [f.name for f in dataclasses.fields(memory.aligned[0])]
        assert list(arrow.aligned.fields) == names and len(arrow.aligned) == len(memory.aligned) > 100
        assert aligned_digest(arrow.aligned, names) == aligned_digest(memory.aligned, names)
        assert all(np.array_equal(a, b) for a, b in zip(arrow.sequences, memory.sequences))
    assert [s.fingerprint() for s in stored] == [s.fingerprint() for s in in_memory]
    assert [s.chars for s in stored] == [s.chars for s in in_memory]
    assert len(logs) == 2 and all(": built " in line for line in logs), logs
    again = streams_of(corpus, teacher, student, data_dir=tmp_path, log=logs.append)  # a list of the same texts
    assert len(logs) == 4 and all(": opened " in line for line in logs[2:]), logs
    assert [s.aligned.path for s in again] == [s.aligned.path for s in stored]
    assert sorted(p.name for p in stored[0].aligned.path.parent.iterdir()) == ["aligned.arrow", "info.json"]
    routed = make_stream("de", teacher, corpus["de"], id_map_of(teacher), MAX_LENGTH, data_dir=tmp_path)
    assert routed.sequences.path.parent != stored[0].aligned.path.parent  # routed data of the same text: other data


def test_any_numpy_field_of_the_aligned_record_is_stored(tmp_path, monkeypatch, corpus, teacher, student):
    """A field another part of the code adds to the aligned record (here a bool flag and an int32 position per
    student piece) is stored and read back, with its dtype, without code for it in the store."""
    from mergedistill import align

    @dataclasses.dataclass
    class Wider(align.AlignedSequence):
        spaced: np.ndarray = None
        position: np.ndarray = None

    original, base_fields = align.iter_pack_aligned, [f.name for f in dataclasses.fields(align.AlignedSequence)]

    def widened(*args):
        for record in original(*args):
            base = {name: getattr(record, name) for name in base_fields}
            n = len(record.student_ids)
            yield Wider(**base, spaced=record.student_ids % 3 == 0, position=np.arange(n, dtype=np.int32))

    monkeypatch.setattr(align, "iter_pack_aligned", widened)

    def stream(**kw):
        return make_stream("en", teacher, corpus["en"], id_map_of(teacher), MAX_LENGTH, student_tokenizer=student, **kw)

    in_memory = stream()
    monkeypatch.setattr(align, "AlignedSequence", Wider)  # the record type the store builds and reads
    stored = stream(data_dir=tmp_path)
    names = [f.name for f in dataclasses.fields(Wider)]
    assert names[-2:] == ["spaced", "position"] and list(stored.aligned.fields) == names
    assert isinstance(stored.aligned[0], Wider) and stored.aligned[0].spaced.dtype == bool
    assert stored.aligned[0].position.dtype == np.int32
    assert aligned_digest(stored.aligned, names) == aligned_digest(in_memory.aligned, names)
    assert batches_digest(plan_of([stored]), 10) == batches_digest(plan_of([in_memory]), 10)
