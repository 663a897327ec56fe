"""Shared shell of the per-stage verbs: run the pipeline up to one stage (current stages are skipped)."""

from mergedistill.cli import add_config_arguments


def add_stage_arguments(parser):
    add_config_arguments(parser)
    parser.add_argument("--force", action="store_true", help="re-run this stage even if its output is current")


def run_until(args, stage: str) -> int:
    from mergedistill.config import load_config

    cfg = load_config(args.config, args.overrides)
    from mergedistill.stages import run_experiment

    run_experiment(
        cfg, config_path=args.config, overrides=args.overrides, until=stage, force=[stage] if args.force else []
    )
    return 0
