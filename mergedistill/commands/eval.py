"""`mergedistill eval`: evaluate the student against its teachers per language (and the MLM-only baseline)."""

from mergedistill.commands._stage import add_stage_arguments, run_until

HELP = "evaluate the student against its teachers per language (and the MLM-only baseline)"


def add_arguments(parser):
    add_stage_arguments(parser)


def main(args):
    return run_until(args, "eval")
