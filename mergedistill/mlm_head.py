"""Give an encoder without a masked-LM head (a sentence encoder, e5, a plain ``AutoModel``) a fresh one.

The head is the one ``AutoModelForMaskedLM`` builds for the encoder's architecture: BERT's transform
(dense + GELU + LayerNorm), a decoder tied to the input embeddings, and an output bias. The result is an
ordinary ``*ForMaskedLM`` model (``save_pretrained`` gives a checkpoint ``AutoModelForMaskedLM`` loads) whose
encoder weights are exactly the given encoder's; ``mergedistill.adapt`` then trains the head briefly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mergedistill.errors import UserError

IGNORED_BASE_KEYS = ("pooler.",)  # parts of an AutoModel that a *ForMaskedLM does not have


def attach_mlm_head(encoder, seed: int = 0):
    """A ``*ForMaskedLM`` with ``encoder``'s weights and a new head (seeded init), decoder tied to the embeddings.

    ``encoder`` is a loaded ``PreTrainedModel`` (a bare encoder or a ``*ForMaskedLM``) or a checkpoint directory."""
    import torch
    from transformers import AutoModel, AutoModelForMaskedLM

    if isinstance(encoder, (str, Path)):
        directory = Path(encoder)
        if not (directory / "config.json").is_file():
            raise UserError(f"{directory}: no config.json; give a HuggingFace encoder directory (save_pretrained)")
        encoder = AutoModel.from_pretrained(directory, dtype=torch.float32)
    base = encoder.base_model
    config = base.config.__class__.from_dict(base.config.to_dict())
    config.architectures = None
    config.tie_word_embeddings = True
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            model = AutoModelForMaskedLM.from_config(config)
        except ValueError as err:
            raise UserError(
                f"encoder {config.model_type}: transformers has no masked-LM class for it ({str(err).splitlines()[0][:160]})"
            ) from None
    target = model.base_model
    state = {k: v for k, v in base.state_dict().items() if not k.startswith(IGNORED_BASE_KEYS)}
    missing, unexpected = target.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise UserError(
            f"encoder {config.model_type}: its weights do not fit {type(model).__name__} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.tie_weights()
    if not head_is_tied(model):
        raise UserError(f"{type(model).__name__}: the decoder could not be tied to the input embeddings")
    return model


def head_is_tied(model) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def head_parameter_names(model) -> list[str]:
    """Names of the trainable parameters outside the encoder: the head (the tied decoder weight is the encoder's)."""
    encoder_ids = {id(p) for p in model.base_model.parameters()}
    return [name for name, p in model.named_parameters() if id(p) not in encoder_ids]


def output_bias(model):
    """The head's output bias parameter (one value per vocabulary row), or None."""
    rows = model.get_input_embeddings().num_embeddings
    out = model.get_output_embeddings()
    if out is not None and getattr(out, "bias", None) is not None and out.bias.shape == (rows,):
        return out.bias
    for name, param in model.named_parameters():
        if name.endswith("bias") and param.shape == (rows,):
            return param
    return None


def log_prior(counts: np.ndarray, smoothing: float = 1.0) -> np.ndarray:
    """Centred log unigram probabilities (add-``smoothing``): an output bias that starts the head at the corpus prior."""
    logp = np.log((counts.astype(np.float64) + smoothing) / (counts.sum() + smoothing * len(counts)))
    return (logp - logp.mean()).astype(np.float32)


def start_at_prior(model, log_prior_values: np.ndarray) -> None:
    """Make the fresh head predict ``log_prior_values`` (softmax = the corpus unigram distribution) whatever the input.

    The head's LayerNorm scale is set to 0 (its shift is 0), so the transform outputs 0 and the logits are the bias
    alone. A random head instead adds logits of several nats of noise (LayerNorm output of norm ~sqrt(hidden) against
    pretrained embedding rows), starting above uniform cross-entropy; from the prior, every step is a gain."""
    import torch

    rows = model.get_input_embeddings().num_embeddings
    head = set(head_parameter_names(model))
    scales = [
        p
        for n, p in model.named_parameters()
        if n in head and p.ndim == 1 and n.endswith("weight") and p.shape[0] != rows
    ]
    if not scales:
        raise UserError(f"{type(model).__name__}: no LayerNorm in the masked-LM head to zero")
    with torch.no_grad():
        for scale in scales:
            scale.zero_()
    set_output_bias(model, log_prior_values)


def set_output_bias(model, values: np.ndarray) -> None:
    import torch

    bias = output_bias(model)
    if bias is None:
        raise UserError(f"{type(model).__name__}: no output bias found to initialise")
    if bias.shape[0] != len(values):
        raise UserError(f"{type(model).__name__}: output bias has {bias.shape[0]} rows, the prior {len(values)}")
    with torch.no_grad():
        bias.copy_(torch.from_numpy(values))
