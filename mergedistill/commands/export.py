"""`mergedistill export`: export the student as a plain HuggingFace checkpoint with a model card."""

from mergedistill.commands._stage import add_stage_arguments, run_until

HELP = "export the student as a plain HuggingFace checkpoint with a model card"


def add_arguments(parser):
    add_stage_arguments(parser)


def main(args):
    return run_until(args, "export")
