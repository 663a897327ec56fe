"""The training plan: the streams a selection asks for, and the deterministic batch plan over them.

The selection strategy (``mergedistill.selection``) decides what a language's training text becomes
(``Strategy.streams``); this module measures and stores what it needs and builds the streams:

- ``write_split`` (the ``split`` stage, run once per fingerprint, only for strategies that split a language per
  paragraph: min-ce) scores every training paragraph with every candidate teacher and stores, per language,
  the index of the teacher serving each paragraph as ``<lang>.npy`` (int16, memory-mappable; written inside the
  stage's temporary output directory, which is renamed into place, so never half-written). ``split.json``
  records, per language, the teachers the indices refer to, the paragraph count and the file's sha256.
- ``make_plan`` (cache, train and baseline stages) reads that split back instead of scoring again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mergedistill import io
from mergedistill.errors import UserError
from mergedistill.ranks import world_from_env
from mergedistill.selection import Assignment, Strategy, StreamSpec, make_strategy

SPLIT_INDEX = "split.json"


def read_selection(cfg, select_dir: Path) -> tuple[Strategy, Assignment]:
    """The strategy (``select.strategy``) and the assignment the select stage wrote under it."""
    from mergedistill.io import read_json

    chosen = read_json(Path(select_dir) / "assignment.json")
    strategy = make_strategy(cfg.select)
    if chosen.get("strategy", strategy.name) != strategy.name:
        raise UserError(
            f"{select_dir}/assignment.json was made under select.strategy={chosen['strategy']}, the config says "
            f"{strategy.name}; re-run the select stage (`mergedistill run CONFIG --force select`)"
        )
    return strategy, chosen["assignment"]


def example_ce(cfg, teachers, lang: str, names, texts, log=print) -> np.ndarray:
    """[paragraph, teacher] masked cross-entropy per character of the text (NaN: nothing masked)."""
    import torch

    from mergedistill.heldout_eval import teacher_eval_set
    from mergedistill.mlm_metrics import eval_positions, masked_logits

    ce = np.zeros((len(texts), len(names)))
    for j, name in enumerate(names):
        log(f"[split] min-ce: scoring {len(texts)} {lang} paragraphs with {name}")
        teacher = teachers[name]
        eval_set = teacher_eval_set(teacher, texts)
        masked = eval_positions(eval_set, cfg.data.mask_seed, cfg.data.mlm_probability)
        tok = teacher.tokenizer
        for rows, log_probs in masked_logits(
            teacher.model, eval_set.sequences, masked, tok.mask_token_id, tok.pad_token_id, 64
        ):
            offset = 0
            for i in rows:
                n = int(masked[i].sum())
                gold = torch.from_numpy(eval_set.sequences[i][masked[i]])
                nll = -float(log_probs[offset : offset + n].gather(1, gold[:, None]).sum())
                ce[i, j] = nll / max(eval_set.chars[i], 1) if n else np.nan  # per character of the text it scored
                offset += n
    return ce


def write_split(cfg, select_dir: Path, out: Path, log=print) -> dict:
    """The split stage: per language the strategy splits, the serving teacher's index per training paragraph."""
    from mergedistill.corpus import train_texts
    from mergedistill.teachers import load_teachers

    strategy, assignment = read_selection(cfg, select_dir)
    split_langs = [lang for lang in sorted(assignment) if strategy.splits(assignment[lang])]
    teachers = load_teachers(cfg, {n for lang in split_langs for n in assignment[lang]}) if split_langs else {}
    index = {}
    for lang in split_langs:
        names = assignment[lang]
        texts = train_texts(cfg, lang)
        choice = strategy.choose(example_ce(cfg, teachers, lang, names, texts, log)).astype(np.int16)
        np.save(out / f"{lang}.npy", choice)
        served = {name: int((choice == j).sum()) for j, name in enumerate(names)}
        log(f"[split] {lang}: " + ", ".join(f"{name} {n}" for name, n in served.items()) + " paragraphs")
        index[lang] = {
            "teachers": list(names),
            "paragraphs": len(texts),
            "served": served,
            "sha256": io.file_fingerprint(out / f"{lang}.npy"),
        }
    io.write_json_atomic(out / SPLIT_INDEX, index)
    return {"languages": sorted(index)}


def read_split(split_dir: Path, lang: str, names, paragraphs: int) -> np.ndarray:
    """The stored teacher index per ``lang`` training paragraph (memory-mapped), checked against ``split.json``."""
    from mergedistill.io import read_json

    split_dir = Path(split_dir)
    path = split_dir / f"{lang}.npy"
    entry = read_json(split_dir / SPLIT_INDEX).get(lang) if (split_dir / SPLIT_INDEX).is_file() else None
    redo = "re-run the split stage (`mergedistill run CONFIG --force split`)"
    if entry is None or not path.is_file():
        raise UserError(f"{path}: no stored min-ce split for {lang!r}; {redo}")
    if entry["teachers"] != list(names) or entry["paragraphs"] != paragraphs:
        raise UserError(
            f"{path}: made for teachers {entry['teachers']} over {entry['paragraphs']} paragraphs, the plan has "
            f"{list(names)} over {paragraphs}; {redo}"
        )
    if io.file_fingerprint(path) != entry["sha256"]:
        raise UserError(f"{path}: changed since the split stage wrote it (sha256 differs); {redo}")
    return np.load(path, mmap_mode="r")


def plan_streams(cfg, strategy: Strategy, assignment: Assignment, split_dir: Path | None) -> list[StreamSpec]:
    """Every language's streams, in language order, as the strategy decides from the stored split."""
    from mergedistill.corpus import train_texts

    specs = []
    for lang in sorted(assignment):
        names, texts = assignment[lang], train_texts(cfg, lang, dataset=True)  # memory-mapped Arrow
        choice = None
        if strategy.splits(names):
            if split_dir is None:
                raise UserError(f"select.strategy={strategy.name} needs the split stage's output; run the pipeline")
            choice = read_split(split_dir, lang, names, len(texts))
        specs += strategy.streams(lang, names, texts, choice)
    return specs


def make_plan(
    cfg, vocab_dir: Path, select_dir: Path, split_dir: Path | None = None, world: int | None = None, log=print
):
    """Streams and the deterministic batch plan shared by the cache, train and baseline stages; ``world``: the
    number of ranks (each takes one micro-batch per step; default: the launcher's). Streams keep their packed (unified
    mode: aligned) sequences in memory-mapped Arrow files under ``data_dir(cfg)``, built once
    (``mergedistill.data_store``)."""
    from mergedistill.data import DataPlan, make_stream
    from mergedistill.data_store import data_dir
    from mergedistill.teachers import load_teachers
    from mergedistill.vocab import load_vocab
    from mergedistill.vocab.build import add_missing_spaced_maps
    from mergedistill.vocab.store import unified_tokenizer

    strategy, assignment = read_selection(cfg, select_dir)
    merged = load_vocab(vocab_dir)
    teachers = load_teachers(cfg, {n for names in assignment.values() for n in names})
    unified = unified_tokenizer(vocab_dir) if cfg.data.tokenization == "unified" else None
    if unified is not None:
        add_missing_spaced_maps(merged, teachers)
    streams = [
        make_stream(
            spec.lang,
            teachers[spec.teacher],
            spec.texts,
            merged.id_maps[spec.teacher],
            cfg.data.max_length,
            cfg.data.whole_word,
            mixture=spec.mixture,
            student_tokenizer=unified,
            data_dir=data_dir(cfg),
            workers=cfg.workers,
            log=log,
        )
        for spec in plan_streams(cfg, strategy, assignment, split_dir)
    ]
    world = world_from_env()[1] if world is None else world
    plan = DataPlan(
        streams,
        cfg.train.batch_size,
        cfg.train.steps * cfg.train.grad_accum * world,
        cfg.seed,
        cfg.data.sampling_alpha,
        cfg.data.mlm_probability,
        cfg.data.mask_seed,
        dict(cfg.data.language_weights),
    )
    return plan, teachers, merged
