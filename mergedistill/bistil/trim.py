"""BiStil's vocabulary trimming (§3.1): the core's ``mergedistill.vocab.trim``, re-exported (the core never imports bistil)."""

from mergedistill.vocab.trim import (  # noqa: F401  (re-exported)
    complete_kept,
    piece_counts,
    save_trimmed,
    select_kept,
    trim_model,
    trim_teacher,
    trim_tokenizer,
)
