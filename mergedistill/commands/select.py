"""`mergedistill select`: score candidate teachers per language and apply the selection strategy (runs teachers first if needed)."""

from mergedistill.commands._stage import add_stage_arguments, run_until

HELP = "score candidate teachers per language and apply the selection strategy (runs teachers first if needed)"


def add_arguments(parser):
    add_stage_arguments(parser)


def main(args):
    return run_until(args, "select")
