"""The vocab report's agreement table for an experiment, from its teachers' tokenizers alone (no model trained).

    python scripts/unified_agreement.py [experiments/demo-unified.yaml] [--work runs/unified-agreement]
        [--assign de=demo-de ja=demo-ja] [--default demo-multi] [--held-out 100]

Trains each zoo card's tokenizer as `mergedistill teachers build` does (same recipe, same text; cached in
WORK/tokenizers; a card with build.tokenizer.file uses that file), builds the unified vocabulary on the
experiment's training text with the language -> teacher assignment given here (what `score` selection picks
for the demo; selection itself needs the trained teachers), and prints the vocab stage's agreement table on
the first HELD_OUT valid paragraphs per language. About 2-3 CPU-minutes for the demo on 2 cores.
"""

import argparse
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", nargs="?", default="experiments/demo-unified.yaml")
    parser.add_argument("--work", default="runs/unified-agreement")
    parser.add_argument("--assign", nargs="*", default=["de=demo-de", "ja=demo-ja"])
    parser.add_argument("--default", default="demo-multi", help="the teacher of every other language")
    parser.add_argument("--held-out", type=int, default=100)
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
    )
    unified = build_unified_tokenizer(merged)
    held_out = {lang: load_texts(lang, "valid", cfg, limit=args.held_out) for lang in assignment}
    routed = {lang: (names[0], teachers[names[0]]) for lang, names in assignment.items()}
    print(agreement_table(agreement_rows(held_out, routed, unified, merged)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
