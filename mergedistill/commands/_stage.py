"""The per-stage verbs (``mergedistill select CONFIG`` ...): one table, one shell. Each runs the pipeline up to
its stage; current stages are skipped, ``--force`` re-runs that stage."""

from mergedistill.cli import add_config_arguments


class StageVerb:
    """A verb that runs the pipeline until ``stage``; the same ``HELP`` / ``add_arguments`` / ``main`` as a
    command module."""

    def __init__(self, stage: str, help: str):
        self.stage, self.HELP = stage, help

    def add_arguments(self, parser):
        add_config_arguments(parser)
        parser.add_argument("--force", action="store_true", help="re-run this stage even if its output is current")

    def main(self, args) -> int:
        from mergedistill.config import load_config

        cfg = load_config(args.config, args.overrides)
        from mergedistill.stages import run_experiment

        run_experiment(
            cfg,
            config_path=args.config,
            overrides=args.overrides,
            until=self.stage,
            force=[self.stage] if args.force else [],
        )
        return 0


STAGE_VERBS = {
    verb.stage: verb
    for verb in (
        StageVerb(
            "select",
            "score candidate teachers per language and apply the selection strategy (runs teachers first if needed)",
        ),
        StageVerb("cache", "build the offline teacher top-k cache (runs teachers, select, vocab first if needed)"),
        StageVerb(
            "train",
            "distil the student under DeepSpeed (runs the earlier stages first if needed; resumes automatically)",
        ),
        StageVerb("eval", "evaluate the student against its teachers per language (and the MLM-only baseline)"),
        StageVerb("export", "export the student as a plain HuggingFace checkpoint with a model card"),
    )
}
