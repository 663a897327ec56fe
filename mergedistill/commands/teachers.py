"""`mergedistill teachers`: not implemented yet."""

from mergedistill.errors import UserError

HELP = "(not implemented yet)"


def add_arguments(parser):
    parser.add_argument("rest", nargs="*")


def main(args):
    raise UserError("'teachers' is not implemented yet; see the open issues")
