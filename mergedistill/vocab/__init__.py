"""The merged student vocabulary: merge, id maps, storage, routed and unified tokenization."""

from mergedistill.vocab.merge import SPECIAL_IDS, SPECIAL_TOKENS, MergedVocab, map_topk, merge_vocabs, piece_counts
from mergedistill.vocab.store import load_vocab, save_vocab
from mergedistill.vocab.tokenize import RoutedTokenizer, build_unified_tokenizer, load_routed_tokenizer

__all__ = [
    "SPECIAL_IDS",
    "SPECIAL_TOKENS",
    "MergedVocab",
    "map_topk",
    "merge_vocabs",
    "piece_counts",
    "load_vocab",
    "save_vocab",
    "RoutedTokenizer",
    "build_unified_tokenizer",
    "load_routed_tokenizer",
]
