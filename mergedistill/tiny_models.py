"""Small masked-LMs of the well-known architectures around a trained tokenizer (the demo zoo's teachers and the
tests' models), saved so that ``transformers``' Auto classes load them."""

from __future__ import annotations

from pathlib import Path

from mergedistill.errors import UserError
from mergedistill.io import atomic_dir

# DeBERTa-v3 style: relative positions only (no absolute position embeddings), so a model trained on short
# sequences still handles longer ones, and small models learn to use context in far fewer steps than BERT.
DEBERTA_RELATIVE = dict(
    relative_attention=True, position_buckets=32, pos_att_type=["p2c", "c2p"], position_biased_input=False
)
ARCHS = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta-v2")


def tiny_mlm(
    arch: str,
    tokenizer,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    intermediate: int = 64,
    max_position: int = 130,
    seed: int = 0,
    dropout: float = 0.1,
):
    """A randomly initialised ``*ForMaskedLM`` of ``arch`` sized for ``tokenizer``."""
    import torch
    from transformers import (
        AutoModelForMaskedLM,
        BertConfig,
        DebertaV2Config,
        DistilBertConfig,
        ElectraConfig,
        RobertaConfig,
        XLMRobertaConfig,
    )

    vocab = len(tokenizer)
    pad = tokenizer.pad_token_id
    common = dict(vocab_size=vocab, pad_token_id=pad)
    if arch == "bert":
        config = BertConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            max_position_embeddings=max_position,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            **common,
        )
    elif arch in ("roberta", "xlm-roberta"):
        cls = RobertaConfig if arch == "roberta" else XLMRobertaConfig
        config = cls(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            max_position_embeddings=max_position + pad + 1,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            type_vocab_size=1,
            **common,
        )
    elif arch == "distilbert":
        config = DistilBertConfig(
            dim=hidden,
            n_layers=layers,
            n_heads=heads,
            hidden_dim=intermediate,
            max_position_embeddings=max_position,
            dropout=dropout,
            attention_dropout=dropout,
            **common,
        )
    elif arch == "electra":
        config = ElectraConfig(
            embedding_size=hidden,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            max_position_embeddings=max_position,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            **common,
        )
    elif arch == "deberta-v2":
        config = DebertaV2Config(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            max_position_embeddings=max_position,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            **DEBERTA_RELATIVE,
            **common,
        )
    else:
        raise UserError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    torch.manual_seed(seed)
    return AutoModelForMaskedLM.from_config(config)


def save_pretrained_teacher(model, tokenizer, directory: str | Path, extra_files: dict[str, str] | None = None) -> Path:
    """Save model + tokenizer (+ config.json) atomically so Auto* classes load the directory."""
    with atomic_dir(directory) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(directory)
