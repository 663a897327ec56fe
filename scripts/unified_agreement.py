"""The vocab report's agreement table for an experiment, from its teachers' tokenizers alone (no model trained).

    python scripts/unified_agreement.py [experiments/demo.yaml] [--work runs/unified-agreement]
        [--assign de=demo-de ja=demo-ja] [--default demo-multi] [--held-out 100] [--masked 40]

Trains each zoo card's tokenizer as `mergedistill teachers build` does (same recipe, same text; cached in
WORK/tokenizers; a card with build.tokenizer.file uses that file), builds the unified vocabulary on the
experiment's training text with the language -> teacher assignment given here (what `score` selection picks
for the demo; selection itself needs the trained teachers), and prints the vocab stage's agreement table on
the first HELD_OUT valid paragraphs per language. About 2-3 CPU-minutes for the demo on 2 cores.
``--masked N``: also the share of masked student pieces whose teacher target is the student's gold piece, as
training batches see them (N batches of the experiment's batch size, length and masking per language, on 300
paragraphs of the valid and the train split; about 2 more CPU-minutes for N = 40).
"""

import argparse
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", nargs="?", default="experiments/demo.yaml")
    parser.add_argument("--work", default="runs/unified-agreement")
    parser.add_argument("--assign", nargs="*", default=["de=demo-de", "ja=demo-ja"])
    parser.add_argument("--default", default="demo-multi", help="the teacher of every other language")
    parser.add_argument("--held-out", type=int, default=100)
    parser.add_argument("--masked", type=int, default=0, help="batches per language for masked-piece coverage")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from mergedistill.config import load_config
    from mergedistill.corpus import load_texts
    from mergedistill.teachers import Teacher, load_card
    from mergedistill.tokenizer_train import tokenizer_from_file, train_tokenizer
    from mergedistill.vocab.build import build_vocab
    from mergedistill.vocab.diagnostics import agreement_rows, agreement_table
    from mergedistill.vocab.tokenize import build_unified_tokenizer
    from mergedistill.zoo import _paragraphs, recipe

    cfg = load_config(args.experiment)
    work = Path(args.work)
    teachers = {}
    for path in cfg.teachers.cards:
        card = load_card(path)
        spec, directory = recipe(card), work / "tokenizers" / card.name
        tok_spec = spec["tokenizer"]
        if tok_spec.get("file"):
            tokenizer = tokenizer_from_file(tok_spec["family"], tok_spec["file"], card.max_length)
        elif (directory / "tokenizer.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(directory)
        else:
            started = time.time()
            paragraphs = _paragraphs(card, spec["train"]["max_paragraphs"])
            texts = [t for lang in card.languages for t in paragraphs[lang][1]]
            tokenizer = train_tokenizer(
                tok_spec["family"], texts, tok_spec.get("vocab_size", 8000), tok_spec.get("lowercase", False)
            )
            tokenizer.save_pretrained(directory)
            print(f"[agreement] {card.name}: tokenizer trained in {time.time() - started:.0f} s", file=sys.stderr)
        card.source = str(directory)  # only the tokenizer is loaded: no model
        teachers[card.name] = Teacher(card, None, tokenizer)
    assignment = {lang: [args.default] for lang in cfg.corpus.languages}
    for item in args.assign:
        lang, name = item.split("=")
        assignment[lang] = [name]
    texts = {lang: load_texts(lang, "train", cfg, limit=cfg.corpus.max_train_paragraphs) for lang in assignment}
    used = {names[0] for names in assignment.values()}
    merged = build_vocab(
        {n: t for n, t in teachers.items() if n in used},
        assignment,
        texts,
        cfg.vocab.min_freq,
        cfg.vocab.max_size,
        True,
        log=lambda line: print(line, file=sys.stderr),
        min_freq_by_teacher=dict(cfg.vocab.min_freq_by_teacher),
    )
    unified = build_unified_tokenizer(merged)
    held_out = {lang: load_texts(lang, "valid", cfg, limit=args.held_out) for lang in assignment}
    routed = {lang: (names[0], teachers[names[0]]) for lang, names in assignment.items()}
    print(agreement_table(agreement_rows(held_out, routed, unified, merged)))
    if args.masked:
        print(masked_table(cfg, routed, unified, merged, args.masked))
    return 0


def masked_table(cfg, routed, unified, merged, n_batches: int) -> str:
    """Per language and split: masked student pieces, and the share whose teacher target (the teacher's gold piece
    mapped as ``cache.to_student`` maps targets) is the student's gold piece."""
    import torch

    from mergedistill.cache import to_student
    from mergedistill.corpus import load_texts
    from mergedistill.data import DataPlan, make_stream, teacher_view

    lines = [
        "",
        "| language | split | masked student pieces | with the teacher's gold as target |",
        "|---|---|---:|---:|",
    ]
    for lang, (name, teacher) in sorted(routed.items()):
        for split in ("valid", "train"):
            texts = load_texts(lang, split, cfg, limit=300)
            stream = make_stream(
                lang, teacher, texts, merged.id_maps[name], cfg.data.max_length, student_tokenizer=unified
            )
            plan = DataPlan(
                [stream],
                cfg.train.batch_size,
                n_batches,
                cfg.seed,
                mlm_probability=cfg.data.mlm_probability,
                mask_seed=cfg.data.mask_seed,
            )
            right = masked = 0
            for index in range(n_batches):
                batch = plan.batch(index)
                gold = batch["teacher_labels"][teacher_view(batch)[2]][:, None]
                maps = (merged.glued_maps.get(name), merged.spaced_maps.get(name))
                mapped, _ = to_student(gold, torch.zeros(gold.shape), merged.id_maps[name], batch, *maps)
                right += int((mapped[:, 0] == batch["labels"][batch["kd_positions"]]).sum())
                masked += int((batch["labels"] != -100).sum())
            lines.append(f"| {lang} | {split} | {masked} | {right / max(masked, 1):.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
