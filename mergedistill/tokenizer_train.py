"""Train real tokenizers of the three families (the small masked-LMs around them: ``tiny_models``).

Used by the demo teacher zoo and by tests: each family is configured like its well-known model
(BERT WordPiece, RoBERTa byte-level BPE, XLM-R SentencePiece unigram), so the rest of the framework meets
the same special tokens, pre-tokenizers and decoders it meets on hub checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from mergedistill.errors import UserError

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
TOKENIZER_FAMILIES = ("wordpiece", "bytelevel", "unigram")
FAMILY_SPECIALS = {
    "wordpiece": dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"),
    "bytelevel": dict(
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        cls_token="<s>",
        sep_token="</s>",
        mask_token="<mask>",
    ),
}
FAMILY_SPECIALS["unigram"] = FAMILY_SPECIALS["bytelevel"]


def train_tokenizer(
    family: str, texts: Iterable[str], vocab_size: int, lowercase: bool = False, model_max_length: int = 512
):
    """A ``PreTrainedTokenizerFast``-compatible tokenizer trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    if family == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=BERT_SPECIALS, continuing_subword_prefix="##"
        )
        tok.train_from_iterator(texts, trainer)
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
        )
    elif family in ("bytelevel", "unigram"):
        if family == "bytelevel":
            tok = Tokenizer(models.BPE())
            tok.normalizer = normalizers.NFC()
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(
                vocab_size=vocab_size,
                special_tokens=ROBERTA_SPECIALS,
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            )
        else:
            tok = Tokenizer(models.Unigram())
            tok.normalizer = normalizers.NFKC()
            tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
            tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
            trainer = trainers.UnigramTrainer(
                vocab_size=vocab_size, special_tokens=ROBERTA_SPECIALS, unk_token="<unk>", max_piece_length=12
            )
        tok.train_from_iterator(texts, trainer)
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>",
            pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
        )
    else:
        raise UserError(f"unknown tokenizer family {family!r}; choose one of {', '.join(TOKENIZER_FAMILIES)}")
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **FAMILY_SPECIALS[family])


def tokenizer_from_file(family: str, path: str | Path, model_max_length: int = 512, where: str = "tokenizer file"):
    """A tokenizer ``train_tokenizer`` trained earlier and saved as ``tokenizer.json``: the way to make a build
    reproducible, since the ``tokenizers`` trainers break count ties differently from run to run."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if family not in FAMILY_SPECIALS:
        raise UserError(f"unknown tokenizer family {family!r}; choose one of {', '.join(TOKENIZER_FAMILIES)}")
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{where}: {path} does not exist; give the path of a tokenizer.json (relative to the working directory)"
        )
    tok = Tokenizer.from_file(str(path))
    missing = {t for t in FAMILY_SPECIALS[family].values() if tok.token_to_id(t) is None}
    if missing:
        raise UserError(
            f"{where}: {path} lacks the {family} special token(s) {', '.join(sorted(missing))}; is it a {family} tokenizer?"
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **FAMILY_SPECIALS[family])
