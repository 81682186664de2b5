"""Errors that the CLI reports as one line instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: a missing path, a malformed manifest, an incompatible index."""
