"""Masked-only vocabulary projection.

A small masked-LM spends most of its time in the vocabulary projection. Loss terms only need it at the
masked positions (~15 % of tokens), so we run the encoder, gather the hidden states at those positions,
and apply the MLM head to them alone. ``masked_lm_logits`` does this for the architectures whose head
is known (BERT, RoBERTa, XLM-R, CamemBERT, ELECTRA generator, DeBERTa-v2) and falls back to the full
forward + indexing for any other ``*ForMaskedLM``; both give the same numbers (tested).
"""

from __future__ import annotations


def _head(model):
    """(encoder, head callable) for known MLM architectures, else None."""
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind in ("bert", "deberta-v2") and hasattr(model, "cls"):
        return getattr(model, model.base_model_prefix), model.cls
    if kind in ("roberta", "xlm-roberta", "camembert") and hasattr(model, "lm_head"):
        return getattr(model, model.base_model_prefix), model.lm_head
    if kind == "electra" and hasattr(model, "generator_predictions"):
        return model.electra, lambda h: model.generator_lm_head(model.generator_predictions(h))
    if kind == "distilbert" and hasattr(model, "vocab_projector"):
        return model.distilbert, lambda h: model.vocab_projector(
            model.vocab_layer_norm(model.activation(model.vocab_transform(h)))
        )
    return None


def masked_lm_logits(
    model, input_ids, attention_mask, masked, output_hidden_states: bool = False, output_attentions: bool = False
):
    """(logits [n_masked, V] in the row-major order of ``masked`` [B,T] bool, encoder outputs), both on the
    model's device (the inputs are moved there)."""
    from mergedistill.device import device_of, to_device

    input_ids, attention_mask, masked = to_device((input_ids, attention_mask, masked), device_of(model))
    known = _head(model)
    extra = {
        name: True
        for name, wanted in (("output_hidden_states", output_hidden_states), ("output_attentions", output_attentions))
        if wanted
    }
    if known is None:
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return outputs.logits[masked], outputs
    encoder, head = known
    outputs = encoder(input_ids=input_ids, attention_mask=attention_mask, **extra)
    hidden = outputs[0][masked]
    return head(hidden), outputs


def masked_lm_loss(model, input_ids, attention_mask, labels):
    """Masked-LM cross-entropy to ``labels`` (the gold token where masked, -100 elsewhere), projected at
    the masked positions only."""
    from mergedistill.device import device_of, to_device
    from mergedistill.losses import mlm_ce

    labels = to_device(labels, device_of(model))
    masked = labels != -100
    logits, _ = masked_lm_logits(model, input_ids, attention_mask, masked)
    return mlm_ce(logits, labels[masked])
