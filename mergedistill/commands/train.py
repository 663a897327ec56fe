"""`mergedistill train`: distil the student under DeepSpeed (runs the earlier stages first if needed; resumes automatically)."""

from mergedistill.commands._stage import add_stage_arguments, run_until

HELP = "distil the student under DeepSpeed (runs the earlier stages first if needed; resumes automatically)"


def add_arguments(parser):
    add_stage_arguments(parser)


def main(args):
    return run_until(args, "train")
