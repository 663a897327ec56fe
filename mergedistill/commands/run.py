"""`mergedistill run`: the whole MergeDistill pipeline, skipping stages whose outputs are current."""

from mergedistill.cli import add_config_arguments

HELP = "run the whole pipeline (teachers -> select -> vocab -> cache -> train -> eval -> export -> report)"


def add_arguments(parser):
    add_config_arguments(parser)
    parser.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages (their inputs must exist)")
    parser.add_argument("--force", nargs="+", metavar="STAGE", default=[], help="re-run these stages even if current")


def main(args):
    from mergedistill.config import load_config

    cfg = load_config(args.config, args.overrides)
    from mergedistill.stages import run_experiment

    run_experiment(cfg, config_path=args.config, overrides=args.overrides, only=args.only, force=args.force)
    return 0
