"""`mergedistill ablate`: train the same student under several teacher selections and compare them."""

from mergedistill.cli import add_config_arguments

HELP = "run selection ablations (experiments/ablations/*.yaml) and write one comparison table (Markdown + CSV)"


def add_arguments(parser):
    add_config_arguments(parser)


def main(args):
    import sys

    from mergedistill.ablate import AblationConfig, run_ablation
    from mergedistill.config import load_config

    ablation = load_config(args.config, None, schema=AblationConfig)
    run_ablation(
        ablation, source=args.config, overrides=args.overrides, log=lambda m: print(m, file=sys.stderr, flush=True)
    )
    return 0
