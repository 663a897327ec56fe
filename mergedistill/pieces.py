"""One view of every tokenizer family's vocabulary: student piece keys.

Keys use the SentencePiece convention for all families:
- word-initial pieces start with ``▁``: WordPiece ``play``, SentencePiece ``▁play`` and byte-level ``Ġplay``
  all become ``▁play``;
- continuation pieces are bare: WordPiece ``##ing``, SentencePiece ``ing`` and byte-level ``ing`` -> ``ing``;
- byte-level pieces whose bytes are not valid UTF-8 on their own become ``<0xE3><0x81>`` (one ``<0xHH>`` per
  byte, after a ``▁`` when the piece began with ``Ġ``), the notation SentencePiece uses for byte fallback;
- special tokens get canonical roles (pad, unk, cls, sep, mask; bos counts as cls and eos as sep when the
  tokenizer has no separate ones) and key ``None``, as do other added tokens.

Equal keys from two families are the same STRING, not the same segmentation rule: WordPiece splits
punctuation into its own words and may lowercase; SentencePiece does not. The merged vocabulary only
needs a consistent key per piece.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

WORD_START = "▁"
ROLES = ("pad", "unk", "cls", "sep", "mask")
FAMILIES = ("wordpiece", "sentencepiece", "bytelevel")
_BYTE_KEY = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@dataclass(frozen=True)
class NormalizedVocab:
    family: str  # "wordpiece" | "sentencepiece" | "bytelevel"
    keys: tuple[str | None, ...]  # teacher id -> student piece key (None for specials / added tokens)
    roles: dict[str, int]  # canonical role -> teacher id
    lowercase: bool  # the tokenizer lowercases before splitting

    def __len__(self) -> int:
        return len(self.keys)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable character byte-level BPE uses for each byte."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


def _json_has(node, type_name: str) -> bool:
    """True when a tokenizer.json component (possibly a Sequence) contains a part of ``type_name``."""
    if isinstance(node, dict):
        if node.get("type") == type_name:
            return True
        return any(_json_has(v, type_name) for v in node.values() if isinstance(v, (dict, list)))
    if isinstance(node, list):
        return any(_json_has(v, type_name) for v in node)
    return False


def _backend_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} has no fast (tokenizers) backend; load it with use_fast=True")
    return json.loads(backend.to_str())


def detect_family(tokenizer) -> str:
    spec = _backend_json(tokenizer)
    model_type = spec["model"]["type"]
    if model_type == "WordPiece":
        return "wordpiece"
    if model_type == "Unigram":
        return "sentencepiece"
    if model_type == "BPE":
        if _json_has(spec.get("pre_tokenizer"), "ByteLevel") or _json_has(spec.get("decoder"), "ByteLevel"):
            return "bytelevel"
        return "sentencepiece"  # BPE with Metaspace (SentencePiece BPE)
    raise ValueError(f"unsupported tokenizer model type {model_type!r}")


def detect_lowercase(tokenizer) -> bool:
    normalizer = _backend_json(tokenizer).get("normalizer")
    if _json_has(normalizer, "Lowercase"):
        return True

    def bert_lower(node) -> bool:
        if isinstance(node, dict):
            if node.get("type") == "BertNormalizer" and node.get("lowercase"):
                return True
            return any(bert_lower(v) for v in node.values() if isinstance(v, (dict, list)))
        if isinstance(node, list):
            return any(bert_lower(v) for v in node)
        return False

    return bert_lower(normalizer)


def _bytes_key(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(f"<0x{b:02X}>" for b in data)


def piece_key(piece: str, family: str, continuing_prefix: str = "##") -> str:
    """The student key of one teacher piece string (not for special tokens)."""
    if family == "wordpiece":
        if piece.startswith(continuing_prefix) and len(piece) > len(continuing_prefix):
            return piece[len(continuing_prefix) :]
        return WORD_START + piece
    if family == "sentencepiece":
        return piece
    decoder = _byte_decoder()
    try:
        data = bytes(decoder[ch] for ch in piece)
    except KeyError:  # not a byte-level string (an added plain token): keep it as text
        return piece
    if data.startswith(b" "):
        return WORD_START + _bytes_key(data[1:])
    return _bytes_key(data)


def special_roles(tokenizer) -> dict[str, int]:
    roles = {}
    for role in ROLES:
        token_id = getattr(tokenizer, f"{role}_token_id", None)
        if token_id is not None:
            roles[role] = int(token_id)
    if "cls" not in roles and getattr(tokenizer, "bos_token_id", None) is not None:
        roles["cls"] = int(tokenizer.bos_token_id)
    if "sep" not in roles and getattr(tokenizer, "eos_token_id", None) is not None:
        roles["sep"] = int(tokenizer.eos_token_id)
    return roles


def normalize_vocab(tokenizer) -> NormalizedVocab:
    """The normalized view of a fast tokenizer's whole vocabulary (ids 0 .. len(tokenizer)-1)."""
    family = detect_family(tokenizer)
    spec = _backend_json(tokenizer)
    prefix = spec["model"].get("continuing_subword_prefix") or "##"
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    keys: list[str | None] = [None] * size
    special_ids = set(tokenizer.all_special_ids)
    special_ids |= {
        i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(tok, "special", False)
    }
    for piece, token_id in vocab.items():
        if token_id not in special_ids:
            keys[token_id] = piece_key(piece, family, prefix)
    return NormalizedVocab(family, tuple(keys), special_roles(tokenizer), detect_lowercase(tokenizer))


def key_bytes(key: str) -> bytes:
    """The UTF-8 bytes a key stands for (without the word-start marker)."""
    text = key[1:] if key.startswith(WORD_START) else key
    out = bytearray()
    position = 0
    for match in _BYTE_KEY.finditer(text):
        out += text[position : match.start()].encode("utf-8")
        out.append(int(match.group(1), 16))
        position = match.end()
    out += text[position:].encode("utf-8")
    return bytes(out)


def keys_to_text(keys: Iterable[str | None]) -> str:
    """Detokenize keys: a word-initial key starts a new word (a space before it); None keys are skipped."""
    out = bytearray()
    for key in keys:
        if key is None:
            continue
        if key.startswith(WORD_START) and out:
            out += b" "
        out += key_bytes(key)
    return out.decode("utf-8", errors="replace")
