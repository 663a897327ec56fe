"""Shared test set-up: offline, single-threaded, deterministic."""

import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402

# (arch, tokenizer family) of every teacher family the framework supports
FAMILIES = {
    "bert": "wordpiece",
    "roberta": "bytelevel",
    "xlm-roberta": "unigram",
    "distilbert": "wordpiece",
    "electra": "wordpiece",
    "deberta-v2": "unigram",
}
TEST_LANGUAGES = ("en", "de", "ja", "ru")


@pytest.fixture(autouse=True)
def deepspeed_logger_on_a_live_stream():
    """DeepSpeed's logger takes sys.stdout when first imported: inside a test that captures output (capsys) that
    is the test's buffer, closed afterwards, and a later test's DeepSpeed warning then fails on it ("I/O
    operation on closed file" in that test's stderr). After each test, such a handler gets today's sys.stdout."""
    yield
    ds_logging = sys.modules.get("deepspeed.utils.logging")
    for handler in getattr(getattr(ds_logging, "logger", None), "handlers", []):
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            handler.stream = sys.stdout  # not setStream: it would flush the closed one


@pytest.fixture(scope="session")
def corpus_texts():
    """A few hundred real paragraphs per language (train split) and some held-out ones (valid)."""
    from mergedistill.corpus import load_texts

    return {
        lang: {"train": load_texts(lang, "train", limit=400), "valid": load_texts(lang, "valid", limit=40)}
        for lang in TEST_LANGUAGES
    }


@pytest.fixture(scope="session")
def tiny_teachers(tmp_path_factory, corpus_texts):
    """Saved tiny random teachers of each family with real tokenizers trained on corpus text: arch -> dir."""
    from mergedistill.tiny_models import save_pretrained_teacher, tiny_mlm
    from mergedistill.tokenizer_train import train_tokenizer

    root = tmp_path_factory.mktemp("teachers")
    texts = [t for lang in TEST_LANGUAGES for t in corpus_texts[lang]["train"]]
    tokenizers = {family: train_tokenizer(family, texts, vocab_size=1200) for family in set(FAMILIES.values())}
    dirs = {}
    for arch, family in FAMILIES.items():
        model = tiny_mlm(arch, tokenizers[family], seed=1)
        dirs[arch] = save_pretrained_teacher(model, tokenizers[family], root / arch)
    return dirs


# three families: WordPiece BERT (en, ru), byte-level RoBERTa (de), SentencePiece unigram XLM-R (ja)
ASSIGNMENT = {"en": ["bert"], "ru": ["bert"], "de": ["roberta"], "ja": ["xlm-roberta"]}


@pytest.fixture(scope="session")
def teachers(tiny_teachers):
    from mergedistill.teachers import Teacher, TeacherCard

    langs = {"bert": ["en", "de", "ru", "ja"], "roberta": ["de"], "xlm-roberta": ["ja"]}
    return {
        a: Teacher.load(TeacherCard(name=a, source=str(tiny_teachers[a]), languages=langs[a], max_length=64))
        for a in langs
    }


@pytest.fixture(scope="session")
def texts(corpus_texts):
    return {lang: corpus_texts[lang]["train"][:200] for lang in ASSIGNMENT}


@pytest.fixture(scope="session")
def merged(teachers, texts):
    from mergedistill.vocab.build import build_vocab

    return build_vocab(teachers, ASSIGNMENT, texts)


from tests.helpers.tiny_runs import tiny_runs  # noqa: E402,F401  (fixture: finished tiny pipeline runs per student arch and tokenization)
