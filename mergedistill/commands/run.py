"""`mergedistill run`: the whole MergeDistill pipeline, skipping stages whose outputs are current."""

from mergedistill.cli import add_config_arguments

HELP = "run the whole pipeline (teachers -> select -> vocab [-> split] -> cache -> train -> eval -> export -> report)"


def add_arguments(parser):
    add_config_arguments(parser)
    parser.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages (their inputs must exist)")
    parser.add_argument("--force", nargs="+", metavar="STAGE", default=[], help="re-run these stages even if current")


def reproduce_command(config: str, overrides=()) -> str:
    """The line the report gives to reproduce this run; experiments/demo.yaml is what the Makefile's ``demo``
    target runs, so the report names ``make demo`` too."""
    command = " ".join(["mergedistill run", str(config or ""), *overrides]).strip()
    return "make demo   # = " + command if str(config).endswith("experiments/demo.yaml") else command


def main(args):
    from mergedistill.config import load_config

    cfg = load_config(args.config, args.overrides)
    from mergedistill.stages import run_experiment

    run_experiment(
        cfg,
        config_path=args.config,
        overrides=args.overrides,
        only=args.only,
        force=args.force,
        command=reproduce_command(args.config, args.overrides),
    )
    return 0
