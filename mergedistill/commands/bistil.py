"""`mergedistill bistil`: BiStil, the bilingual special case (one multilingual teacher, source -> target)."""

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
        p.add_argument(
            "--force",
            nargs="*",
            default=None,
            metavar="STAGE",
            help="re-run these stages even if current (trim phase1 phase1-scratch phase1-random-init phase2 report); no names = this action's stage",
        )


def main(args):
    from mergedistill.bistil.config import BistilConfig
    from mergedistill.config import load_config

    cfg = load_config(args.config, args.overrides, schema=BistilConfig)
    import torch

    from mergedistill.bistil.stages import Run, log

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    force = () if args.force is None else (args.force or [args.action if args.action != "run" else "report"])
    run = Run(cfg, force=tuple(force))
    if args.action == "trim":
        run.trim()
    elif args.action == "phase1":
        from mergedistill.bistil.stages import phase1_kind

        for kind in dict.fromkeys(["bistil", *map(phase1_kind, cfg.phase2.variants)]):
            run.phase1(kind)
    elif args.action == "phase2":
        for task in cfg.phase2.tasks:
            for variant in cfg.phase2.variants:
                run.phase2(task, variant)
    else:
        path = run.report()
        print(path.read_text(encoding="utf-8"))
        log(f"report: {path}")
    return 0
