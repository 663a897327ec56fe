import pytest

from mergedistill.pieces import key_bytes, keys_to_text, normalize_vocab, piece_key
from mergedistill.teachers import Teacher, TeacherCard
from tests.conftest import FAMILIES, TEST_LANGUAGES

EXPECTED_FAMILY = {"wordpiece": "wordpiece", "bytelevel": "bytelevel", "unigram": "sentencepiece"}


def test_piece_keys_follow_one_convention():
    assert piece_key("play", "wordpiece") == "▁play" and piece_key("##ing", "wordpiece") == "ing"
    assert piece_key("▁play", "sentencepiece") == "▁play" and piece_key("ing", "sentencepiece") == "ing"
    assert piece_key("Ġplay", "bytelevel") == "▁play" and piece_key("ing", "bytelevel") == "ing"
    assert piece_key("Ġ", "bytelevel") == "▁"
    # 'ã' 'ģ' are the byte-level characters of 0xE3 0x81: not valid UTF-8 on their own
    assert piece_key("ãģ", "bytelevel") == "<0xE3><0x81>"
    assert piece_key("Ġãģ", "bytelevel") == "▁<0xE3><0x81>"
    assert key_bytes("▁<0xE3><0x81>") == b"\xe3\x81"
    assert keys_to_text(["▁<0xE3><0x81>", "<0x93>", "▁ok"]) == "こ ok"


def _load(tiny_teachers, arch):
    return Teacher.load(TeacherCard(name=arch, source=str(tiny_teachers[arch]), languages=list(TEST_LANGUAGES)))


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_normalized_view_detokenizes_real_text(arch, tiny_teachers, corpus_texts):
    teacher = _load(tiny_teachers, arch)
    assert teacher.vocab.family == EXPECTED_FAMILY[FAMILIES[arch]]
    keys = teacher.vocab.keys
    for lang in TEST_LANGUAGES:
        for text in corpus_texts[lang]["valid"][:25]:
            ids = teacher.tokenizer(text)["input_ids"]
            rebuilt = keys_to_text(keys[i] for i in ids)
            # The tokenizer's own normalization (NFKC for unigram, NFC for byte-level, Chinese-character and
            # punctuation splitting for WordPiece) is the reference: decode() applies it too.
            reference = teacher.tokenizer.decode(ids, skip_special_tokens=True)
            if teacher.vocab.family == "wordpiece":
                # WordPiece makes punctuation its own word, so spaces differ; the characters may not.
                assert "".join(rebuilt.split()) == "".join(reference.split()), (lang, text)
            else:
                assert " ".join(rebuilt.split()) == " ".join(reference.split()), (lang, text)


def test_byte_level_japanese_pieces_rejoin(tiny_teachers, corpus_texts):
    teacher = _load(tiny_teachers, "roberta")
    text = corpus_texts["ja"]["valid"][0]
    ids = teacher.tokenizer(text)["input_ids"]
    keys = [teacher.vocab.keys[i] for i in ids if teacher.vocab.keys[i] is not None]
    assert any("<0x" in k for k in keys)  # a small vocabulary splits Japanese characters into bytes
    assert keys_to_text(keys) == " ".join(text.split())


@pytest.mark.parametrize(
    "arch, roles",
    [
        ("bert", {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}),
        ("roberta", {"pad": "<pad>", "unk": "<unk>", "cls": "<s>", "sep": "</s>", "mask": "<mask>"}),
        ("xlm-roberta", {"pad": "<pad>", "unk": "<unk>", "cls": "<s>", "sep": "</s>", "mask": "<mask>"}),
    ],
)
def test_special_tokens_get_canonical_roles(arch, roles, tiny_teachers):
    teacher = _load(tiny_teachers, arch)
    for role, token in roles.items():
        token_id = teacher.vocab.roles[role]
        assert teacher.tokenizer.convert_ids_to_tokens(token_id) == token
        assert teacher.vocab.keys[token_id] is None
    assert teacher.vocab.lowercase is False


def test_lowercasing_wordpiece_is_detected(corpus_texts):
    from mergedistill.tokenizer_train import train_tokenizer

    tokenizer = train_tokenizer("wordpiece", corpus_texts["en"]["train"][:100], 300, lowercase=True)
    vocab = normalize_vocab(tokenizer)
    assert vocab.lowercase and all(k == k.lower() for k in vocab.keys if k)
