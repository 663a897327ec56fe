"""`mergedistill vocab`: build the merged student vocabulary of an experiment, or inspect one."""

from mergedistill.cli import add_config_arguments

HELP = "build the merged student vocabulary and id maps (build), show sizes/overlap/coverage (inspect)"


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    build = sub.add_parser("build", help="run the pipeline up to the vocab stage (teachers, select, vocab)")
    add_config_arguments(build)
    inspect = sub.add_parser("inspect", help="sizes, overlap between teachers, merged examples of a vocabulary dir")
    inspect.add_argument("dir", help="a vocabulary directory (<output_dir>/vocab)")


def main(args):
    if args.action == "build":
        from mergedistill.config import load_config

        cfg = load_config(args.config, args.overrides)
        from mergedistill.stages import run_experiment

        run_experiment(cfg, config_path=args.config, overrides=args.overrides, until="vocab")
        return 0
    from pathlib import Path

    from mergedistill.vocab import load_vocab
    from mergedistill.vocab.diagnostics import overlap_table, summary

    vocab = load_vocab(args.dir)
    print(summary(vocab))
    print()
    print(overlap_table(vocab))
    report = Path(args.dir) / "report.md"
    if report.exists():
        print()
        print(report.read_text(encoding="utf-8"))
    return 0
