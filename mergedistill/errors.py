"""Errors that the CLI reports on one line (exit code 2) instead of a traceback."""


class UserError(Exception):
    """A problem with the user's input; the CLI prints it on one line and exits 2."""
