"""The student's piece convention on real text, and how far two segmentations of the same text agree.

Student pieces mark a word start ``▁`` only where the TEXT has one: at its start and after whitespace, as
SentencePiece and byte-level BPE do. That is what lets the unified tokenizer decode back to the text.
A WordPiece teacher also starts a word after punctuation it split off and at every CJK character it
isolates; ``faithful_pieces`` re-expresses such a piece in the student convention by the characters it
covers: in ``"save."`` WordPiece's ``▁.`` is the student's ``.``, in ``"中文"`` its ``▁文`` is ``文``.

``unified_pretokenizer`` is the unified tokenizer's pre-tokenization: whitespace only (Metaspace), plus
CJK ideographs isolated where a served teacher isolates them (``han``: ``none``, ``all``, or ``kana-free``:
only in whitespace words without kana, when WordPiece serves Chinese while a SentencePiece/BPE teacher
keeps multi-character kanji pieces for Japanese), and runs of punctuation split from letters and digits
(``punct``, same modes) unless a SentencePiece teacher serves a language without kana. A whitespace word
without kana but with a Han character that only the kana languages' text uses (値, 発: Japanese forms) counts
as Japanese too: ``数値`` stays whole for a SentencePiece teacher while Chinese ``数值`` is isolated. Everything else
(``"...")`` as one piece or three, where a word splits) is the teachers' call, learnt by the unified
tokenizer's scores (``vocab.fit``).
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass
from typing import Sequence

WORD_START = "▁"
KANA = r"\p{Hiragana}\p{Katakana}ー"
# one Han character per match (with the ▁ before it): \G continues where the previous match ended, so in
# kana-free mode matching only ever starts at a whitespace word that holds no kana at all
_HAN_ALL = r"▁?\p{Han}"
HAN_MODES = ("none", "all", "kana-free")
# runs of punctuation/symbols (with the ▁ before them) split from letters and digits, as WordPiece and
# byte-level BPE do; kana-free: only in whitespace words without kana (a Japanese SentencePiece teacher
# keeps pieces such as "る)。" in them)
_PUNCT = r"[^\p{L}\p{N}\p{M}▁\s]"
_PUNCT_ALL = r"▁?" + _PUNCT + "+"


def _kana_free(japanese: str) -> str:
    """The start of a kana-free pattern: at a whitespace word with no kana and none of ``japanese`` (Han
    characters only the kana languages' text uses, such as 値 or 発), or where the previous match ended."""
    return r"(?:\A(?=[^" + KANA + japanese + r"]*\z)|(?!\A)\G)"


def _han_kana_free(japanese: str) -> str:
    return _kana_free(japanese) + r"(?:[^\p{Han}▁]|▁(?!\p{Han}))*+\K▁?\p{Han}"


def _punct_kana_free(japanese: str) -> str:
    return _kana_free(japanese) + r"(?:[\p{L}\p{N}\p{M}]|▁(?!" + _PUNCT + r"))*+\K▁?" + _PUNCT + "+"


_BYTE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_HAN_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA_CHAR = re.compile(r"[\u3040-\u30ff]")


@dataclass(frozen=True)
class Convention:
    """How the unified tokenizer normalizes and pre-tokenizes (stored in the vocabulary's metadata)."""

    han: str = "none"  # see HAN_MODES
    punct: str = "none"  # the same modes for splitting punctuation from letters and digits
    lowercase: bool = False  # every served teacher lowercases (then the student is uncased too)
    strip_accents: bool = False
    # kana-free modes: Han characters that only the kana languages' text uses (Japanese forms such as 値, 発,
    # 関): a whitespace word holding one is Japanese even without kana (数値, 統合開発環境) and is left whole
    japanese_han: str = ""

    def to_dict(self) -> dict:
        return {
            "han": self.han,
            "punct": self.punct,
            "lowercase": self.lowercase,
            "strip_accents": self.strip_accents,
            "japanese_han": self.japanese_han,
        }


def isolates_cjk(tokenizer) -> bool:
    """A BERT normalizer with ``handle_chinese_chars`` (WordPiece teachers): every CJK ideograph is a word."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())

    def walk(node) -> bool:
        if isinstance(node, dict):
            if node.get("type") == "BertNormalizer" and node.get("handle_chinese_chars", True):
                return True
            return any(walk(v) for v in node.values() if isinstance(v, (dict, list)))
        return isinstance(node, list) and any(walk(v) for v in node)

    return walk(spec.get("normalizer"))


def strips_accents(tokenizer) -> bool:
    spec = json.loads(tokenizer.backend_tokenizer.to_str()).get("normalizer") or {}
    text = json.dumps(spec)
    return '"StripAccents"' in text or (
        '"BertNormalizer"' in text
        and (spec.get("strip_accents") or (spec.get("strip_accents") is None and spec.get("lowercase")))
    )


def choose_convention(teachers_by_lang: dict, texts: dict) -> Convention:
    """``teachers_by_lang``: language -> its (routed) teacher's tokenizer; ``texts``: language -> paragraphs.

    Han isolation: ``all`` when every language written with Han characters is served by an isolating teacher,
    ``none`` when none is, else ``kana-free`` (right for isolating Chinese next to a Japanese teacher that
    keeps kanji words; the vocab report shows the cost for other mixes). Lowercasing only when every served
    teacher lowercases: with a mix the student stays cased and an uncased teacher's segmentation is followed
    on the original-case text (its pieces are re-cased from the characters they cover).
    """
    from mergedistill.pieces import detect_family, detect_lowercase

    def share(lang, chars) -> float:
        sample = "".join(texts[lang][:200])
        return len(chars.findall(sample)) / max(len(sample), 1)

    han_langs = [lang for lang in sorted(teachers_by_lang) if share(lang, _HAN_CHAR) > 0.05]
    kana_written = {lang for lang in teachers_by_lang if share(lang, _KANA_CHAR) > 0.05}
    isolating = [lang for lang in han_langs if isolates_cjk(teachers_by_lang[lang])]
    han = "none" if not isolating else "all" if len(isolating) == len(han_langs) else "kana-free"
    # punctuation: split unless a SentencePiece teacher (no such split) serves a language written without kana
    keeps = [lang for lang in sorted(teachers_by_lang) if detect_family(teachers_by_lang[lang]) == "sentencepiece"]
    punct = "all" if not keeps else "kana-free" if set(keeps) <= kana_written else "none"
    lower = all(detect_lowercase(t) for t in teachers_by_lang.values()) if teachers_by_lang else False
    japanese = ""
    if "kana-free" in (han, punct):  # Han characters of the kana languages' text that no other language uses
        seen = {lang: set(_HAN_CHAR.findall("".join(texts[lang]))) for lang in teachers_by_lang}
        others = set().union(*(seen[lang] for lang in teachers_by_lang if lang not in kana_written))
        japanese = "".join(sorted(set().union(*(seen[lang] for lang in kana_written)) - others))
    strip = lower and all(strips_accents(t) for t in teachers_by_lang.values())
    return Convention(han, punct, lower, strip, japanese)


def unified_normalizer(convention: Convention):
    from tokenizers import normalizers

    parts = [normalizers.NFC()]
    if convention.strip_accents:
        parts = [normalizers.NFD(), normalizers.StripAccents(), normalizers.NFC()]
    if convention.lowercase:
        parts.append(normalizers.Lowercase())
    return normalizers.Sequence(parts)


def unified_pretokenizer(convention: Convention):
    from tokenizers import Regex, pre_tokenizers

    parts = [pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="first", split=True)]
    if convention.punct != "none":
        pattern = _PUNCT_ALL if convention.punct == "all" else _punct_kana_free(convention.japanese_han)
        parts.append(pre_tokenizers.Split(Regex(pattern), behavior="isolated"))
    if convention.han != "none":
        pattern = _HAN_ALL if convention.han == "all" else _han_kana_free(convention.japanese_han)
        parts.append(pre_tokenizers.Split(Regex(pattern), behavior="isolated"))
    return pre_tokenizers.Sequence(parts)


Piece = tuple  # (start, end, key): key None = unknown; a bare word marker spans (start, start)


def _spans(text: str, offsets, keys) -> list[Piece]:
    out: list[Piece] = []
    for (start, end), key in zip(offsets, keys):
        while start < end and text[start].isspace():
            start += 1
        out.append((start, end, key))
    return out


def faithful_pieces(text: str, offsets, keys: Sequence[str | None], normalize=None) -> list[Piece]:
    """A teacher's pieces of ``text`` in the student convention. ``keys``: the teacher pieces' normalized keys
    (``mergedistill.pieces``; None = unknown); ``normalize``: the unified normalizer's ``normalize_str``."""
    out: list[Piece] = []
    marked_at = -1  # a bare ▁ piece already marked the word start at this offset
    for start, end, key in _spans(text, offsets, keys):
        if key is None:
            out.append((start, end, None))
            continue
        body = key[1:] if key.startswith(WORD_START) else key
        if not body:  # a bare word marker covers no character
            out.append((start, start, WORD_START))
            marked_at = start
            continue
        if not _BYTE.search(body):  # the characters it covers (an NFKC teacher's "(" covers "（")
            body = text[start:end] if normalize is None else normalize(text[start:end])
        spaced = (start == 0 or text[start - 1].isspace()) and marked_at != start
        out.append((start, end, WORD_START + body if spaced else body))
    return out


def unified_pieces(text: str, encoding) -> list[Piece]:
    """The unified tokenizer's pieces of ``text`` (``encoding``: its fast encoding with offsets)."""
    out = []
    for start, end, token in _spans(text, encoding.offsets, encoding.tokens):
        out.append((start, start, token) if token == WORD_START else (start, end, token))
    return out


def teacher_faithful(tokenizer, vocab, texts: Sequence[str], normalize=None) -> list[list[Piece]]:
    """``faithful_pieces`` of every text under a teacher (``vocab``: its ``NormalizedVocab``)."""
    encoded = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    return [
        faithful_pieces(text, offsets, [vocab.keys[i] for i in ids], normalize)
        for text, ids, offsets in zip(texts, encoded["input_ids"], encoded["offset_mapping"])
    ]


def word_pieces(text: str, pieces: list[Piece]) -> list[tuple[str, list[Piece]]]:
    """(whitespace word, the pieces inside it) for every word of ``text``; a piece that starts before a word
    but reaches into it counts for the word too."""
    starts = [p[0] for p in pieces]
    out = []
    for match in re.finditer(r"\S+", text):
        lo = bisect.bisect_left(starts, match.start())
        hi = bisect.bisect_left(starts, match.end())
        inside = pieces[lo:hi]
        if lo > 0 and pieces[lo - 1][1] > match.start():
            inside = [pieces[lo - 1]] + inside
        out.append((match.group(), inside))
    return out


def word_agreement(text: str, ours: list[Piece], theirs: list[Piece]) -> tuple[int, int]:
    """(whitespace words whose pieces are the same on both sides, words)."""
    a, b = word_pieces(text, ours), word_pieces(text, theirs)
    return sum(x == y for (_, x), (_, y) in zip(a, b)), len(a)


# why a word's unified pieces differ from its teacher's, checked in this order (the vocab report counts them)
CAUSES = {
    "bytes": "byte-fallback pieces",
    "missing": "a teacher piece the student vocabulary lacks (too rare in the training text)",
    "cut": "the pre-tokenizer cuts a teacher piece (a split that another teacher needs)",
    "foreign": "a piece the teacher lacks, brought by another teacher (one model cannot follow both)",
    "scores": "the same pieces, combined otherwise (the fitted scores; a BPE teacher's merge order is no unigram model)",
}


def disagreement_cause(
    ours: list[Piece], theirs: list[Piece], teacher_keys: set, student_keys: set, cuts: set[int]
) -> str:
    """The ``CAUSES`` key for one word whose pieces differ. ``teacher_keys``: the pieces the teacher can
    produce in the student convention; ``cuts``: the unified pre-tokenizer's pre-token boundaries (offsets)."""
    if any(_BYTE.fullmatch(p[2] or "") for p in ours):
        return "bytes"
    if any(p[2] is not None and p[2] not in student_keys for p in theirs):
        return "missing"
    if any(p[0] < cut < p[1] for p in theirs for cut in cuts):
        return "cut"
    if any(p[2] not in teacher_keys for p in ours):
        return "foreign"
    return "scores"


def convention_keys(vocab) -> set:
    """Every piece a teacher can produce in the student convention: a WordPiece word-initial ``▁x`` also
    appears bare (after punctuation or a CJK character it split off)."""
    keys = {k for k in vocab.keys if k is not None}
    if vocab.family == "wordpiece":
        keys |= {k[1:] for k in keys if k.startswith(WORD_START) and len(k) > 1}
    return keys


def pretoken_targets(text: str, pretokens, pieces: list[Piece]) -> list[tuple[str, tuple[str, ...]]]:
    """(pre-token string, the teacher's keys inside it) for every pre-token of the unified pre-tokenizer whose
    characters the teacher's pieces cover exactly (no piece crossing its ends, no unknown piece)."""
    starts = [p[0] for p in pieces]
    out = []
    for string, (a, b) in pretokens:
        body_start = a
        while body_start < b and text[body_start].isspace():
            body_start += 1
        lo = bisect.bisect_left(starts, body_start)
        hi = bisect.bisect_left(starts, b)
        inside = pieces[lo:hi]
        if (
            (lo > 0 and pieces[lo - 1][1] > body_start)
            or (inside and inside[-1][1] > b)
            or any(p[2] is None for p in inside)
        ):
            continue
        keys = tuple(p[2] for p in inside)
        if "".join(keys) == string:
            out.append((string, keys))
    return out
