"""`mergedistill bistil`: BiStil, the bilingual special case (one multilingual teacher, source -> target)."""

from pathlib import Path

HELP = "BiStil: trim the teacher's vocabulary, distil bilingually (phase1), distil a task with LT-SFT (phase2), evaluate zero-shot (run)"

ACTIONS = {
    "trim": "trim the teacher's vocabulary to the source and target languages",
    "phase1": "general bilingual distillation into the layer-reduced student (runs trim if needed)",
    "phase2": "task teachers and task distillation with LT-SFT for every task and variant (runs earlier stages if needed)",
    "run": "every stage, then the zero-shot evaluation and report (output_dir/report/report.md)",
}


def add_arguments(parser):
    from mergedistill.cli import add_config_arguments

    sub = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    for action, help_text in ACTIONS.items():
        p = sub.add_parser(action, help=help_text, description=help_text)
        add_config_arguments(p)
        if action == "run":  # the flags of `mergedistill run`
            p.add_argument(
                "--only",
                nargs="+",
                metavar="STAGE",
                help="run only these stages (their inputs must exist); phase2 = every phase2/<task>/<variant>",
            )
            p.add_argument(
                "--force", nargs="+", metavar="STAGE", default=[], help="re-run these stages even if current"
            )
        else:  # the flag of the per-stage verbs (`mergedistill train --force`)
            p.add_argument("--force", action="store_true", help="re-run this action's stages even if current")


def action_stages(action: str, names: list[str]) -> list[str]:
    """The stages an action adds to the ones before it: trim; phase1 and its baselines; every phase2/..."""
    if action == "run":
        return ["report"]
    return [n for n in names if n == action or n.startswith(action + "-") or n.startswith(action + "/")]


def main(args):
    from mergedistill.bistil.schema import BistilConfig
    from mergedistill.config import load_config

    cfg = load_config(args.config, args.overrides, schema=BistilConfig)
    import torch

    from mergedistill.bistil.recipe import bistil_stages, log
    from mergedistill.pipeline import run_stages

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    stages = bistil_stages(cfg, log=log)
    if args.action == "run":
        only, force = set(args.only) if args.only else None, set(args.force)
    else:
        mine = action_stages(args.action, [s.name for s in stages])
        stages = stages[: [s.name for s in stages].index(mine[-1]) + 1]
        only, force = None, set(mine) if args.force else set()
    run_stages(cfg, stages, cfg.output_dir, only=only, force=force, log=log)
    report = Path(cfg.output_dir) / "report" / "report.md"
    if args.action == "run" and report.exists():
        print(report.read_text(encoding="utf-8"))
        log(f"report: {report}")
    return 0
