"""`mergedistill cache`: build the offline teacher top-k cache (runs teachers, select, vocab first if needed)."""

from mergedistill.commands._stage import add_stage_arguments, run_until

HELP = "build the offline teacher top-k cache (runs teachers, select, vocab first if needed)"


def add_arguments(parser):
    add_stage_arguments(parser)


def main(args):
    return run_until(args, "cache")
