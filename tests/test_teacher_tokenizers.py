"""Two teacher tokenizers the zoo does not build, merged into one student vocabulary with a cased WordPiece
teacher and round-tripped (teacher ids -> student ids -> student pieces -> text, and through the saved routed
tokenizer):
- a SentencePiece BPE with byte fallback (Llama-style: the 256 ``<0xHH>`` pieces in the vocabulary), trained
  without Japanese, so Japanese text reaches it as bytes;
- an uncased WordPiece (lowercases and strips accents before splitting)."""

import json
import re
import unicodedata

import numpy as np
import pytest

from mergedistill.pieces import keys_to_text
from mergedistill.teachers import Teacher, TeacherCard
from mergedistill.tiny_models import save_pretrained_teacher, tiny_mlm
from mergedistill.tokenizer_train import FAMILY_SPECIALS, ROBERTA_SPECIALS, train_tokenizer
from mergedistill.vocab import SPECIAL_IDS, build_unified_tokenizer, load_routed_tokenizer, load_vocab
from mergedistill.vocab.build import build_vocab, write_vocab_dir
from tests.test_pieces import wordpiece_words

ASSIGNMENT = {"en": ["uncased"], "ru": ["uncased"], "de": ["bert"], "ja": ["bytes"]}
BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


def byte_fallback_tokenizer(texts, vocab_size: int):
    """A SentencePiece-style BPE (Metaspace, NFKC) whose vocabulary also holds the 256 byte pieces, used for
    any character outside it (``byte_fallback``), as in Llama/Mistral tokenizers."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=ROBERTA_SPECIALS))
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **FAMILY_SPECIALS["unigram"])


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, corpus_texts, tiny_teachers):
    root = tmp_path_factory.mktemp("teacher_tokenizers")
    no_japanese = [t for lang in ("en", "de", "ru") for t in corpus_texts[lang]["train"]]
    tokenizers = {
        "bytes": byte_fallback_tokenizer(no_japanese, 800),
        "uncased": train_tokenizer("wordpiece", no_japanese, 800, lowercase=True),
    }
    sources = {
        name: save_pretrained_teacher(tiny_mlm("bert", tok, seed=1), tok, root / name)
        for name, tok in tokenizers.items()
    }
    sources["bert"] = tiny_teachers["bert"]  # cased WordPiece
    return {
        name: Teacher.load(
            TeacherCard(
                name=name,
                source=str(source),
                languages=[lang for lang, (n,) in ASSIGNMENT.items() if n == name],
                max_length=128,
            )
        )
        for name, source in sources.items()
    }


@pytest.fixture(scope="module")
def merged(teachers, corpus_texts):
    return build_vocab(teachers, ASSIGNMENT, {lang: corpus_texts[lang]["train"][:150] for lang in ASSIGNMENT})


def round_trip(teacher, merged, text):
    """(teacher keys, student pieces) of ``text`` without special tokens; special ids must map to their roles."""
    ids = teacher.tokenizer(text)["input_ids"]
    student = merged.map_ids(teacher.name, ids)
    keys, pieces = [], []
    for teacher_id, student_id in zip(ids, student):
        key = teacher.vocab.keys[teacher_id]
        if key is None:
            role = next(r for r, i in teacher.vocab.roles.items() if i == teacher_id)
            assert student_id == SPECIAL_IDS[role]
        else:
            keys.append(key)
            pieces.append(merged.pieces[student_id])
    return keys, pieces


def test_byte_fallback_sentencepiece_teacher_merges_and_round_trips(teachers, merged, corpus_texts):
    teacher = teachers["bytes"]
    assert teacher.vocab.family == "sentencepiece" and not teacher.vocab.lowercase
    used_bytes = set()
    for text in corpus_texts["ja"]["train"][:150]:  # the text the vocabulary was counted on: nothing pruned
        keys, pieces = round_trip(teacher, merged, text)
        assert pieces == keys  # every piece, byte pieces included, is the same student piece
        used_bytes |= {k for k in keys if BYTE_PIECE.fullmatch(k)}
        expected = " ".join(unicodedata.normalize("NFKC", text).split())
        assert (
            keys_to_text(pieces)
            == expected
            == " ".join(
                teacher.tokenizer.decode(teacher.tokenizer(text)["input_ids"], skip_special_tokens=True).split()
            )
        )
    assert len(used_bytes) >= 20  # Japanese reached this teacher as UTF-8 bytes
    assert all(merged.pieces.count(key) == 1 for key in used_bytes)  # one student piece per byte
    # ... the very pieces the unified student tokenizer falls back to: Japanese, which no other teacher serves,
    # reaches both as the same byte ids (on counted text, where the teacher's NFKC and the unified NFC agree)
    unified = build_unified_tokenizer(merged)
    texts = [
        t
        for t in corpus_texts["ja"]["train"][:150]
        if unicodedata.normalize("NFKC", t) == unicodedata.normalize("NFC", t)
    ]
    assert len(texts) >= 5
    for text in texts:
        student = merged.map_ids("bytes", teacher.tokenizer(text, add_special_tokens=False)["input_ids"]).tolist()
        own = unified(text, add_special_tokens=False)["input_ids"]
        assert [i for i in own if BYTE_PIECE.fullmatch(merged.pieces[i])] == [
            i for i in student if BYTE_PIECE.fullmatch(merged.pieces[i])
        ]


def test_uncased_wordpiece_teacher_merges_and_round_trips(teachers, merged, corpus_texts):
    teacher = teachers["uncased"]
    assert teacher.vocab.family == "wordpiece" and teacher.vocab.lowercase
    kept = merged.id_maps["uncased"][merged.id_maps["uncased"] >= len(SPECIAL_IDS)]
    assert len(kept) > 100 and all(merged.pieces[i] == merged.pieces[i].lower() for i in kept)
    for lang in ("en", "ru"):
        for text in corpus_texts[lang]["train"][:150]:
            keys, pieces = round_trip(teacher, merged, text)
            assert pieces == keys
            assert keys_to_text(pieces) == wordpiece_words(teacher.tokenizer, text), (lang, text)
            assert keys_to_text(pieces) == keys_to_text(pieces).lower()
    # merged with the cased teacher (German) where the strings are equal, and only there
    student_id = {piece: i for i, piece in enumerate(merged.pieces)}
    uncased = {merged.pieces[i] for i in kept}
    cased = {merged.pieces[i] for i in merged.id_maps["bert"][merged.id_maps["bert"] >= len(SPECIAL_IDS)]}
    assert len(uncased & cased) >= 10
    capitalised = {piece for piece in cased if piece != piece.lower() and piece.lower() in uncased}
    assert capitalised and all(student_id[piece] != student_id[piece.lower()] for piece in capitalised)


def test_saved_vocabulary_routes_both_teachers(teachers, merged, corpus_texts, tmp_path):
    write_vocab_dir(tmp_path, merged, teachers, ASSIGNMENT, unified=True, max_length=128)
    assert load_vocab(tmp_path).pieces == merged.pieces
    routed = load_routed_tokenizer(tmp_path)
    for lang, (name,) in ASSIGNMENT.items():
        texts = corpus_texts[lang]["valid"][:20]
        teacher_ids = teachers[name].tokenizer(texts, truncation=True, max_length=128)["input_ids"]
        assert routed.encode(texts, lang) == [merged.map_ids(name, ids).tolist() for ids in teacher_ids]
    assert np.array_equal(np.load(tmp_path / "routed" / "bytes" / "id_map.npy"), merged.id_maps["bytes"])
