"""The demo teacher zoo: small real teachers pretrained on the embedded corpus.

The HuggingFace hub is out of reach here, so the demo trains its own teachers from cards with a
``build:`` recipe::

    build:
      tokenizer: {family: wordpiece|bytelevel|unigram, vocab_size: 8000, lowercase: false}
      model: {arch: bert|roberta|xlm-roberta|deberta-v2|electra|distilbert, hidden: 128, layers: 2, heads: 2,
              intermediate: 512, dropout: 0.1}
      train: {steps: 600, batch_size: 32, max_length: 128, lr: 1.0e-3, warmup: 50, sampling_alpha: 0.7,
              max_paragraphs: 8000, checkpoint_every: 100, weight_decay: 0.01, beta2: 0.999,
              tlm_fraction: 0.0, tlm_pivot: en}

``tlm_fraction`` > 0 makes that share of the steps translation-LM steps (XLM, Lample & Conneau 2019): each
row is one corpus paragraph and its translation, ``[CLS] pivot [SEP] other [SEP]``, masked like MLM, for
the aligned pairs of ``tlm_pivot`` with each other language of the card. A teacher this small and this
briefly trained aligns its languages through shared pieces only; the parallel rows give it the
cross-lingual transfer that a BiStil student can inherit.

Training is plain PyTorch (the student, not the zoo, is what DeepSpeed trains). The batch of step ``s``
is a pure function of (seed, s), and model, optimizer, scheduler and RNG state are checkpointed every
``checkpoint_every`` steps into ``<source>.partial/``, so a killed build resumes where it stopped and ends
with the same weights as an uninterrupted one. The finished teacher is written atomically with a
manifest; a build whose manifest matches the card, the corpus and the seed is skipped.

Tokenizer training in the ``tokenizers`` library is not reproducible from run to run for WordPiece and
Unigram (hash-map iteration breaks ties between equal counts), so the tokenizer is trained once per
build, kept in the partial directory and reused on resume; everything after it is deterministic.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mergedistill import io
from mergedistill.errors import UserError
from mergedistill.heads import masked_lm_logits
from mergedistill.masking import example_rng, mask_sequence, pack, pad_batch

ARCH_FAMILY = {"bert": "wordpiece", "roberta": "bytelevel", "xlm-roberta": "unigram", "deberta-v2": "unigram", "electra": "wordpiece",
               "distilbert": "wordpiece"}  # arch -> default tokenizer family
DEFAULT_TRAIN = {"steps": 600, "batch_size": 32, "max_length": 128, "lr": 1e-3, "warmup": 50, "sampling_alpha": 0.7,
                 "max_paragraphs": 8000, "checkpoint_every": 100, "weight_decay": 0.01,
                 "beta2": 0.999, "tlm_fraction": 0.0, "tlm_pivot": "en"}
TLM_KEYS = ("tlm_fraction", "tlm_pivot")  # fingerprinted only when TLM is on: older builds stay current


def recipe(card) -> dict[str, Any]:
    if not card.build:
        raise UserError(f"teacher card {card.name}: no `build:` recipe; only demo cards can be built (real teachers load from the hub)")
    build = dict(card.build)
    for section in ("tokenizer", "model"):
        if section not in build:
            raise UserError(f"teacher card {card.name}: build.{section} is missing")
    train = {**DEFAULT_TRAIN, **build.get("train", {})}
    unknown = set(train) - set(DEFAULT_TRAIN)
    if unknown:
        raise UserError(f"teacher card {card.name}: unknown key build.train.{sorted(unknown)[0]}; known: {', '.join(DEFAULT_TRAIN)}")
    if not 0.0 <= float(train["tlm_fraction"]) <= 1.0:
        raise UserError(f"teacher card {card.name}: build.train.tlm_fraction must be in [0, 1], got {train['tlm_fraction']}")
    if train["tlm_fraction"] > 0 and (train["tlm_pivot"] not in card.languages or len(card.languages) < 2):
        raise UserError(f"teacher card {card.name}: build.train.tlm_pivot {train['tlm_pivot']!r} must be one of the card's languages "
                        f"({', '.join(card.languages)}), beside at least one other")
    if build["model"].get("arch") not in ARCH_FAMILY:
        raise UserError(f"teacher card {card.name}: build.model.arch must be one of {', '.join(ARCH_FAMILY)}")
    return {"tokenizer": dict(build["tokenizer"]), "model": dict(build["model"]), "train": train}


def corpus_fingerprint(corpus_dir=None) -> str:
    from mergedistill.corpus import corpus_dir as resolve

    return io.file_fingerprint(resolve(corpus_dir) / "manifest.json")


def build_fingerprint(card, seed: int, corpus_dir=None) -> str:
    fields = {k: v for k, v in asdict(card).items() if k not in ("notes", "source")}
    spec = recipe(card)
    if not spec["train"]["tlm_fraction"]:
        spec["train"] = {k: v for k, v in spec["train"].items() if k not in TLM_KEYS}
        if "train" in fields.get("build", {}):
            fields["build"] = {**fields["build"], "train": {k: v for k, v in fields["build"]["train"].items() if k not in TLM_KEYS}}
    return io.fingerprint("zoo-teacher", fields, spec, seed, corpus_fingerprint(corpus_dir))


def _paragraphs(card, limit: int, corpus_dir=None) -> dict[str, tuple[list[str], list[str]]]:
    """language -> (paragraph ids, texts) of the first ``limit`` training paragraphs."""
    from mergedistill.corpus import load_split

    out = {}
    for lang in card.languages:
        dataset = load_split(lang, "train", corpus_dir)
        head = dataset.select(range(min(limit, len(dataset))))
        out[lang] = (list(head["id"]), list(head["text"]))
    return out


def tlm_pairs(ids_by_lang: dict[str, list[str]], tokens_by_lang: dict[str, list[list[int]]], pivot: str, max_length: int,
              cls_id: int, sep_id: int) -> dict[str, list[np.ndarray]]:
    """``pivot-other`` -> rows ``[CLS] pivot [SEP] other [SEP]`` for every paragraph id both languages hold
    (in the pivot's order), each side cut to half of ``max_length``. Pure: ids and token ids in, arrays out."""
    half = (max_length - 3) // 2
    pivot_tokens = dict(zip(ids_by_lang[pivot], tokens_by_lang[pivot]))
    out = {}
    for lang in ids_by_lang:
        if lang == pivot:
            continue
        other = dict(zip(ids_by_lang[lang], tokens_by_lang[lang]))
        rows = [np.asarray([cls_id, *pivot_tokens[pid][:half], sep_id, *other[pid][:half], sep_id], dtype=np.int32)
                for pid in ids_by_lang[pivot] if pid in other and pivot_tokens[pid] and other[pid]]
        if rows:
            out[f"{pivot}-{lang}"] = rows
    return out


def _save_state(path: Path, state: dict) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def build_teacher(card, seed: int = 0, corpus_dir=None, progress: bool = True, stop_at_step: int | None = None,
                  log: Callable[[str], None] = print) -> Path:
    """Build ``card`` into ``card.source``; skip when current. ``stop_at_step`` simulates a kill (tests)."""
    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from mergedistill.tokenizer_train import save_pretrained_teacher, tiny_mlm, train_tokenizer

    spec = recipe(card)
    out_dir = Path(card.source)
    fp = build_fingerprint(card, seed, corpus_dir)
    if io.is_current(out_dir, fp):
        log(f"[zoo] {card.name}: up to date ({out_dir})")
        return out_dir
    work = out_dir.with_name(out_dir.name + ".partial")
    if io.read_manifest(work) is None or io.read_manifest(work).get("fingerprint") != fp:
        shutil.rmtree(work, ignore_errors=True)  # leftovers of another recipe
    work.mkdir(parents=True, exist_ok=True)
    io.write_manifest(work, fp, partial=True)
    train = spec["train"]
    paragraphs = _paragraphs(card, train["max_paragraphs"], corpus_dir)
    texts = {lang: paragraphs[lang][1] for lang in card.languages}

    tok_spec = spec["tokenizer"]
    if (work / "tokenizer" / "tokenizer.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    else:
        family = tok_spec.get("family", ARCH_FAMILY[spec["model"]["arch"]])
        all_texts = [t for lang in card.languages for t in texts[lang]]
        tokenizer = train_tokenizer(family, all_texts, tok_spec.get("vocab_size", 8000), tok_spec.get("lowercase", False), card.max_length)
        tokenizer.save_pretrained(work / "tokenizer")

    # tokenize and pack each language once
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    special_ids = np.array(sorted(set(tokenizer.all_special_ids)))
    sequences, tokens = {}, {}
    for lang in card.languages:
        tokens[lang] = tokenizer(texts[lang], add_special_tokens=False)["input_ids"]
        sequences[lang] = pack(tokens[lang], train["max_length"], cls_id, sep_id)
    tlm_fraction = float(train["tlm_fraction"])
    pairs = tlm_pairs({lang: paragraphs[lang][0] for lang in card.languages}, tokens, train["tlm_pivot"], train["max_length"],
                      cls_id, sep_id) if tlm_fraction > 0 else {}
    if tlm_fraction > 0 and not pairs:
        raise UserError(f"teacher card {card.name}: build.train.tlm_fraction > 0 but no paragraph of {train['tlm_pivot']} has a "
                        f"translation among the first {train['max_paragraphs']} of another language; raise max_paragraphs")
    pair_names = sorted(pairs)
    langs = list(card.languages)
    sizes = np.array([len(sequences[lang]) for lang in langs], dtype=np.float64)
    probs = sizes ** train["sampling_alpha"]
    probs /= probs.sum()
    pool = np.setdiff1d(np.arange(len(tokenizer)), special_ids)

    m = spec["model"]
    torch.manual_seed(seed)
    model = tiny_mlm(m["arch"], tokenizer, hidden=m.get("hidden", 128), layers=m.get("layers", 2), heads=m.get("heads", 2),
                     intermediate=m.get("intermediate", 512), max_position=max(card.max_length, train["max_length"]) + 2, seed=seed, dropout=m.get("dropout", 0.1))
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": train["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}], lr=train["lr"], betas=(0.9, train["beta2"]))
    steps, warmup = train["steps"], train["warmup"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / max(warmup, 1), max(0.0, (steps - s) / max(steps - warmup, 1))))
    start = 0
    state_path = work / "state.pt"
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
        log(f"[zoo] {card.name}: resuming at step {start}")

    model.train()
    bar = tqdm(range(start, steps), desc=f"build {card.name}", disable=not progress, initial=start, total=steps)
    for step in bar:
        rng = example_rng(seed, card.name, "batch", step)
        if tlm_fraction > 0 and rng.random() < tlm_fraction:  # no draw without TLM: MLM-only builds are unchanged
            lang = pair_names[rng.choice(len(pair_names))]
            rows = pairs[lang]
        else:
            lang = langs[rng.choice(len(langs), p=probs)]
            rows = sequences[lang]
        picks = rng.choice(len(rows), size=min(train["batch_size"], len(rows)), replace=False)
        inputs, labels = [], []
        for index in picks:
            seq = rows[index].astype(np.int64)
            masked_ids, masked = mask_sequence(seq, np.isin(seq, special_ids), rng, 0.15, tokenizer.mask_token_id, pool)
            inputs.append(masked_ids)
            labels.append(np.where(masked, seq, -100))
        ids, attention = pad_batch(inputs, tokenizer.pad_token_id)
        label_ids = torch.from_numpy(pad_batch(labels, -100)[0])
        masked = label_ids != -100
        logits, _ = masked_lm_logits(model, torch.from_numpy(ids), torch.from_numpy(attention), masked)
        loss = torch.nn.functional.cross_entropy(logits.float(), label_ids[masked])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", lang=lang)
        done = step + 1
        if done % train["checkpoint_every"] == 0 or done == steps:
            _save_state(state_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                     "torch_rng": torch.get_rng_state(), "step": done})
        if stop_at_step is not None and done >= stop_at_step and done < steps:
            raise KeyboardInterrupt(f"stopped at step {done} (test hook)")
    bar.close()
    model.eval()
    save_pretrained_teacher(model, tokenizer, out_dir)
    io.write_manifest(out_dir, fp, card=card.name, steps=steps, seed=seed, languages=langs,
                      parameters=sum(p.numel() for p in model.parameters()), sequences={lang: len(sequences[lang]) for lang in langs},
                      tlm_rows={name: len(rows) for name, rows in pairs.items()})
    shutil.rmtree(work, ignore_errors=True)
    return out_dir
