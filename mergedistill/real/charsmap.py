"""A per-character normalization map compiled into SentencePiece's ``precompiled_charsmap``.

``tokenizers``' ``Precompiled`` normalizer reads that blob (a darts-clone trie + the replacement strings);
``sentencepiece``'s own builder writes it, so nothing here re-implements the format.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterable, Iterator


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """The builder logs two lines to file descriptor 2 through absl; keep them out of the user's output."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def precompiled_charsmap(rules: Iterable[tuple[int, str]]) -> bytes:
    """The ``precompiled_charsmap`` blob replacing each code point of ``rules`` by its string ("" deletes)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    pairs = [(chr(cp), out) for cp, out in rules]
    with _quiet_stderr():
        normalizer = spm.SentencePieceNormalizer(norm_map=pairs)
        spec = sentencepiece_model_pb2.NormalizerSpec()
        spec.ParseFromString(normalizer.serialized_normalizer_spec())
    return bytes(spec.precompiled_charsmap)
