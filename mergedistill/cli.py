"""The `mergedistill` command line: one verb per pipeline stage.

Each verb has ``HELP``, ``add_arguments(parser)`` and ``main(args) -> int``: a module
``mergedistill/commands/<verb>.py``, or for the verbs that only run the pipeline up to their stage an entry of
the table ``commands/_stage.py:STAGE_VERBS`` (see ``verb_command``). Commands import heavy libraries (torch,
transformers) inside ``main`` so that ``--help`` stays fast. A ``UserError`` becomes one line on stderr and exit code 2 (a traceback
only with ``--debug``).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

# Offline by default, and no per-call transformers chatter ("sequence longer than ..." when we truncate).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mergedistill import __version__
from mergedistill.errors import UserError

VERBS = (
    "corpus",
    "teachers",
    "select",
    "vocab",
    "cache",
    "train",
    "eval",
    "export",
    "run",
    "ablate",
    "bistil",
)  # modules in commands/, or entries of commands/_stage.py:STAGE_VERBS


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line too (exit 2), like every other mergedistill error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The experiment config argument shared by most verbs: a YAML path and key=value overrides."""
    parser.add_argument("config", help="experiment YAML (see experiments/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=100")


def verb_command(verb: str):
    """What runs ``verb``: its entry in the per-stage table, else its module in ``mergedistill/commands/``."""
    from mergedistill.commands._stage import STAGE_VERBS

    return STAGE_VERBS.get(verb) or importlib.import_module(f"mergedistill.commands.{verb}")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="mergedistill",
        description="Merge several teacher masked-LMs into one compact multilingual student by distillation.",
    )
    parser.add_argument("--version", action="version", version=f"mergedistill {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    for verb in VERBS:
        module = verb_command(verb)
        verb_parser = sub.add_parser(verb, help=module.HELP, description=module.HELP)
        verb_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        module.add_arguments(verb_parser)
        verb_parser.set_defaults(_module=module)
    return parser


LOCAL_RANK_FLAGS = ("--local_rank", "--local-rank")


def strip_local_rank(argv: list[str]) -> tuple[list[str], str | None]:
    """Remove a launcher's ``--local_rank=N`` / ``--local_rank N`` (either spelling) from anywhere in argv.

    The deepspeed launcher puts it before the verb (``mergedistill --local_rank=0 run CONFIG``), other
    launchers after it; the rank itself is read from the environment, so the flag only fills LOCAL_RANK.
    Returns the remaining arguments and the rank given (None when absent).
    """
    rest, rank, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":  # everything after a bare -- is positional
            rest.extend(argv[i:])
            break
        name, eq, value = arg.partition("=")
        if name in LOCAL_RANK_FLAGS:
            if not eq:
                if i + 1 >= len(argv):
                    raise UserError(f"{name} needs a value, e.g. {name}=0")
                value, i = argv[i + 1], i + 1
            if not value.isdigit():
                raise UserError(f"{name}={value}: the local rank must be a non-negative integer, e.g. {name}=0")
            rank = value
        else:
            rest.append(arg)
        i += 1
    return rest, rank


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        argv, local_rank = strip_local_rank(sys.argv[1:] if argv is None else list(argv))
    except UserError as err:
        parser.exit(2, f"mergedistill: error: {err}\n")
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", local_rank)
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.main(args) or 0)
    except UserError as err:
        if args.debug:
            raise
        print(f"mergedistill {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk is the user's to fix too: one line, exit 2 (finished stages are kept)
        if err.errno not in (errno.ENOSPC, errno.EDQUOT) or args.debug:
            raise
        print(
            f"mergedistill {args.verb}: error: {err.filename or 'output'}: no space left on device; "
            "free some disk space and re-run the same command",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"mergedistill {args.verb}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
