"""The demo teacher zoo: small real teachers pretrained on the embedded corpus.

The HuggingFace hub is out of reach here, so the demo trains its own teachers from cards with a
``build:`` recipe::

    build:
      tokenizer: {family: wordpiece|bytelevel|unigram, vocab_size: 8000, lowercase: false}
      model: {arch: bert|roberta|xlm-roberta|deberta-v2|electra|distilbert, hidden: 128, layers: 2, heads: 2,
              intermediate: 512, dropout: 0.1}
      train: {steps: 600, batch_size: 32, max_length: 128, lr: 1.0e-3, warmup: 50, sampling_alpha: 0.7,
              max_paragraphs: 8000, checkpoint_every: 100, weight_decay: 0.01, beta2: 0.999,
              tlm_fraction: 0.0, align_fraction: 0.0, align_temperature: 0.05, pivot: en}

Both parallel objectives use the corpus's aligned paragraphs of ``pivot`` with each other language of
the card (training split only, so no task test paragraph is seen). ``tlm_fraction`` > 0 makes that share
of the steps translation-LM steps (XLM, Lample & Conneau 2019): each row is one paragraph and its
translation, ``[CLS] pivot [SEP] other [SEP]``, masked like MLM. ``align_fraction`` > 0 makes that share
sentence-alignment steps (as in Pan et al. 2021, "Multilingual BERT Post-Pretraining Alignment"): a batch
of paragraphs and their translations, encoded separately, with a symmetric InfoNCE loss that pulls each
paragraph's last-layer [CLS] vector (what a sequence classifier reads) to its translation's and away from the batch's other translations.
A teacher this small and this briefly trained aligns its languages through shared pieces only; the
parallel steps give it the cross-lingual transfer that real multilingual teachers get from scale and
that a BiStil student can inherit.

Training is plain PyTorch (the student, not the zoo, is what DeepSpeed trains). The batch of step ``s``
is a pure function of (seed, s), and model, optimizer, scheduler and RNG state are checkpointed every
``checkpoint_every`` steps into ``<source>.partial/``, so a killed build resumes where it stopped and ends
with the same weights as an uninterrupted one. The finished teacher is written atomically with a
manifest; a build whose manifest matches the card, the corpus and the seed is skipped.

Tokenizer training in the ``tokenizers`` library is not reproducible from run to run for WordPiece and
Unigram (hash-map iteration breaks ties between equal counts), so the tokenizer is trained once per
build, kept in the partial directory and reused on resume; everything after it is deterministic. A card
whose ``build.tokenizer.file`` names a shipped ``tokenizer.json`` skips training, so its builds are the
same on every machine.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mergedistill import io
from mergedistill.device import device_of, to_device
from mergedistill.errors import UserError
from mergedistill.heads import masked_lm_loss
from mergedistill.masking import example_rng, mask_sequence, pack, pad_batch

ARCH_FAMILY = {
    "bert": "wordpiece",
    "roberta": "bytelevel",
    "xlm-roberta": "unigram",
    "deberta-v2": "unigram",
    "electra": "wordpiece",
    "distilbert": "wordpiece",
}  # arch -> default tokenizer family
DEFAULT_TRAIN = {
    "steps": 600,
    "batch_size": 32,
    "max_length": 128,
    "lr": 1e-3,
    "warmup": 50,
    "sampling_alpha": 0.7,
    "max_paragraphs": 8000,
    "checkpoint_every": 100,
    "weight_decay": 0.01,
    "beta2": 0.999,
    "tlm_fraction": 0.0,
    "align_fraction": 0.0,
    "align_temperature": 0.05,
    "pivot": "en",
}
PARALLEL_KEYS = (
    "tlm_fraction",
    "align_fraction",
    "align_temperature",
    "pivot",
)  # fingerprinted only when used: older builds stay current


def recipe(card) -> dict[str, Any]:
    if not card.build:
        raise UserError(
            f"teacher card {card.name}: no `build:` recipe; only demo cards can be built (real teachers load from the hub)"
        )
    build = dict(card.build)
    for section in ("tokenizer", "model"):
        if section not in build:
            raise UserError(f"teacher card {card.name}: build.{section} is missing")
    train = {**DEFAULT_TRAIN, **build.get("train", {})}
    unknown = set(train) - set(DEFAULT_TRAIN)
    if unknown:
        raise UserError(
            f"teacher card {card.name}: unknown key build.train.{sorted(unknown)[0]}; known: {', '.join(DEFAULT_TRAIN)}"
        )
    for key in ("tlm_fraction", "align_fraction"):
        if not 0.0 <= float(train[key]) <= 1.0:
            raise UserError(f"teacher card {card.name}: build.train.{key} must be in [0, 1], got {train[key]}")
    if float(train["tlm_fraction"]) + float(train["align_fraction"]) > 1.0:
        raise UserError(
            f"teacher card {card.name}: build.train.tlm_fraction + align_fraction must be <= 1 (the rest are MLM steps)"
        )
    if float(train["align_temperature"]) <= 0:
        raise UserError(
            f"teacher card {card.name}: build.train.align_temperature must be > 0, got {train['align_temperature']}"
        )
    if uses_parallel(train) and (train["pivot"] not in card.languages or len(card.languages) < 2):
        raise UserError(
            f"teacher card {card.name}: build.train.pivot {train['pivot']!r} must be one of the card's languages "
            f"({', '.join(card.languages)}), beside at least one other"
        )
    if build["model"].get("arch") not in ARCH_FAMILY:
        raise UserError(f"teacher card {card.name}: build.model.arch must be one of {', '.join(ARCH_FAMILY)}")
    return {"tokenizer": dict(build["tokenizer"]), "model": dict(build["model"]), "train": train}


def uses_parallel(train: dict) -> bool:
    return float(train["tlm_fraction"]) > 0 or float(train["align_fraction"]) > 0


def corpus_fingerprint(corpus_dir=None) -> str:
    from mergedistill.corpus import corpus_dir as resolve

    return io.file_fingerprint(resolve(corpus_dir) / "manifest.json")


def build_fingerprint(card, seed: int, corpus_dir=None) -> str:
    fields = {k: v for k, v in asdict(card).items() if k not in ("notes", "source")}
    spec = recipe(card)
    if not uses_parallel(spec["train"]):
        spec["train"] = {k: v for k, v in spec["train"].items() if k not in PARALLEL_KEYS}
        if "train" in fields.get("build", {}):
            fields["build"] = {
                **fields["build"],
                "train": {k: v for k, v in fields["build"]["train"].items() if k not in PARALLEL_KEYS},
            }
    tokenizer_file = spec["tokenizer"].get("file")
    if tokenizer_file:  # the shipped tokenizer's content, not just its path
        spec["tokenizer"]["file_sha"] = io.file_fingerprint(tokenizer_file) if Path(tokenizer_file).is_file() else None
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


def parallel_pairs(
    ids_by_lang: dict[str, list[str]], tokens_by_lang: dict[str, list[list[int]]], pivot: str
) -> dict[str, list[tuple]]:
    """``pivot-other`` -> (pivot tokens, other tokens) for every paragraph id both languages hold, in the
    pivot's order; empty paragraphs are left out. Pure: ids and token ids in, pairs out."""
    pivot_tokens = dict(zip(ids_by_lang[pivot], tokens_by_lang[pivot]))
    out = {}
    for lang in ids_by_lang:
        if lang == pivot:
            continue
        other = dict(zip(ids_by_lang[lang], tokens_by_lang[lang]))
        pairs = [
            (pivot_tokens[pid], other[pid])
            for pid in ids_by_lang[pivot]
            if pid in other and pivot_tokens[pid] and other[pid]
        ]
        if pairs:
            out[f"{pivot}-{lang}"] = pairs
    return out


def tlm_rows(
    parallel: dict[str, list[tuple]], max_length: int, cls_id: int, sep_id: int
) -> dict[str, list[np.ndarray]]:
    """``pivot-other`` -> TLM rows ``[CLS] pivot [SEP] other [SEP]``, each side cut to half of ``max_length``."""
    half = (max_length - 3) // 2
    return {
        name: [np.asarray([cls_id, *a[:half], sep_id, *b[:half], sep_id], dtype=np.int32) for a, b in pairs]
        for name, pairs in parallel.items()
    }


def _mlm_step(model, rows, rng, batch_size: int, special_ids, tokenizer, pool):
    """Masked-LM loss on ``batch_size`` rows drawn from ``rows`` (15 % masked, BERT's 80/10/10)."""
    import torch

    picks = rng.choice(len(rows), size=min(batch_size, len(rows)), replace=False)
    inputs, labels = [], []
    for index in picks:
        seq = rows[index].astype(np.int64)
        masked_ids, masked = mask_sequence(seq, np.isin(seq, special_ids), rng, 0.15, tokenizer.mask_token_id, pool)
        inputs.append(masked_ids)
        labels.append(np.where(masked, seq, -100))
    ids, attention = pad_batch(inputs, tokenizer.pad_token_id)
    return masked_lm_loss(
        model, torch.from_numpy(ids), torch.from_numpy(attention), torch.from_numpy(pad_batch(labels, -100)[0]).long()
    )


def _alignment_step(model, pairs, rng, train: dict, cls_id: int, sep_id: int, pad_id: int):
    """InfoNCE between ``batch_size`` paragraphs and their translations, each side encoded unmasked on its own."""
    import torch

    from mergedistill.losses import alignment_loss

    picks = rng.choice(len(pairs), size=min(train["batch_size"], len(pairs)), replace=False)
    keep = train["max_length"] - 2
    sides = []
    for side in (0, 1):
        rows = [np.asarray([cls_id, *pairs[i][side][:keep], sep_id], dtype=np.int64) for i in picks]
        ids, attention = pad_batch(rows, pad_id)
        ids, attention = to_device((torch.from_numpy(ids), torch.from_numpy(attention)), device_of(model))
        sides.append(model.base_model(input_ids=ids, attention_mask=attention).last_hidden_state[:, 0])
    return alignment_loss(sides[0], sides[1], train["align_temperature"])


def save_train_state(path: Path, model, optimizer, scheduler, step: int) -> None:
    """A resumable training state (weights, optimizer, schedule, RNG, step), written atomically."""
    import torch

    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "step": step,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_train_state(path: Path, model, optimizer, scheduler) -> int:
    """Restore what ``save_train_state`` wrote; the step to resume at (0 when there is no state)."""
    import torch

    if not path.exists():
        return 0
    state = torch.load(path, weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"]


def build_teacher(
    card,
    seed: int = 0,
    corpus_dir=None,
    progress: bool = True,
    stop_at_step: int | None = None,
    log: Callable[[str], None] = print,
    device="cpu",
) -> Path:
    """Build ``card`` into ``card.source``; skip when current. ``stop_at_step`` simulates a kill (tests).

    ``device`` is where an adapted pretrained encoder (``build.base``) trains; the demo zoo's tiny teachers
    always build on the CPU (a GPU would not speed up 1.5 M-parameter models fed one batch at a time)."""
    from mergedistill.adapt import build_adapted_teacher, is_adapt_card

    if is_adapt_card(card):  # a pretrained encoder given a masked-LM head (build.base), not a model trained here
        return build_adapted_teacher(
            card, seed=seed, corpus_dir=corpus_dir, progress=progress, stop_at_step=stop_at_step, log=log, device=device
        )
    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from mergedistill.tiny_models import save_pretrained_teacher, tiny_mlm
    from mergedistill.tokenizer_train import tokenizer_from_file, train_tokenizer

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
    family = tok_spec.get("family", ARCH_FAMILY[spec["model"]["arch"]])
    if tok_spec.get("file"):
        tokenizer = tokenizer_from_file(
            family, tok_spec["file"], card.max_length, where=f"teacher card {card.name}: build.tokenizer.file"
        )
    elif (work / "tokenizer" / "tokenizer.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    else:
        all_texts = [t for lang in card.languages for t in texts[lang]]
        tokenizer = train_tokenizer(
            family, all_texts, tok_spec.get("vocab_size", 8000), tok_spec.get("lowercase", False), card.max_length
        )
        tokenizer.save_pretrained(work / "tokenizer")

    # tokenize and pack each language once
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    special_ids = np.array(sorted(set(tokenizer.all_special_ids)))
    sequences, tokens = {}, {}
    for lang in card.languages:
        tokens[lang] = tokenizer(texts[lang], add_special_tokens=False)["input_ids"]
        sequences[lang] = pack(tokens[lang], train["max_length"], cls_id, sep_id)
    tlm_fraction, align_fraction = float(train["tlm_fraction"]), float(train["align_fraction"])
    parallel = (
        parallel_pairs({lang: paragraphs[lang][0] for lang in card.languages}, tokens, train["pivot"])
        if uses_parallel(train)
        else {}
    )
    if uses_parallel(train) and not parallel:
        raise UserError(
            f"teacher card {card.name}: build.train.tlm_fraction/align_fraction > 0 but no paragraph of {train['pivot']} has a "
            f"translation among the first {train['max_paragraphs']} of another language; raise max_paragraphs"
        )
    pairs = tlm_rows(parallel, train["max_length"], cls_id, sep_id) if tlm_fraction > 0 else {}
    pair_names = sorted(parallel)
    langs = list(card.languages)
    sizes = np.array([len(sequences[lang]) for lang in langs], dtype=np.float64)
    probs = sizes ** train["sampling_alpha"]
    probs /= probs.sum()
    pool = np.setdiff1d(np.arange(len(tokenizer)), special_ids)

    m = spec["model"]
    torch.manual_seed(seed)
    model = tiny_mlm(
        m["arch"],
        tokenizer,
        hidden=m.get("hidden", 128),
        layers=m.get("layers", 2),
        heads=m.get("heads", 2),
        intermediate=m.get("intermediate", 512),
        max_position=max(card.max_length, train["max_length"]) + 2,
        seed=seed,
        dropout=m.get("dropout", 0.1),
    )
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": train["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=train["lr"],
        betas=(0.9, train["beta2"]),
    )
    steps, warmup = train["steps"], train["warmup"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / max(warmup, 1), max(0.0, (steps - s) / max(steps - warmup, 1)))
    )
    state_path = work / "state.pt"
    start = load_train_state(state_path, model, optimizer, scheduler)
    if start:
        log(f"[zoo] {card.name}: resuming at step {start}")

    model.train()
    bar = tqdm(range(start, steps), desc=f"build {card.name}", disable=not progress, initial=start, total=steps)
    for step in bar:
        rng = example_rng(seed, card.name, "batch", step)
        draw = rng.random() if parallel else 1.0  # no draw without parallel steps: MLM-only builds are unchanged
        if tlm_fraction <= draw < tlm_fraction + align_fraction:
            lang = pair_names[rng.choice(len(pair_names))]
            loss = _alignment_step(model, parallel[lang], rng, train, cls_id, sep_id, tokenizer.pad_token_id)
        else:
            if draw < tlm_fraction:
                lang = pair_names[rng.choice(len(pair_names))]
                rows = pairs[lang]
            else:
                lang = langs[rng.choice(len(langs), p=probs)]
                rows = sequences[lang]
            loss = _mlm_step(model, rows, rng, train["batch_size"], special_ids, tokenizer, pool)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", lang=lang)
        done = step + 1
        if done % train["checkpoint_every"] == 0 or done == steps:
            save_train_state(state_path, model, optimizer, scheduler, done)
        if stop_at_step is not None and done >= stop_at_step and done < steps:
            raise KeyboardInterrupt(f"stopped at step {done} (test hook)")
    bar.close()
    model.eval()
    save_pretrained_teacher(model, tokenizer, out_dir)
    io.write_manifest(
        out_dir,
        fp,
        card=card.name,
        steps=steps,
        seed=seed,
        languages=langs,
        parameters=sum(p.numel() for p in model.parameters()),
        sequences={lang: len(sequences[lang]) for lang in langs},
        parallel_pairs={name: len(rows) for name, rows in parallel.items()},
        tlm_fraction=tlm_fraction,
        align_fraction=align_fraction,
    )
    shutil.rmtree(work, ignore_errors=True)
    return out_dir
