"""Errors that the CLI reports as one line instead of a traceback."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input from the user: a missing path, a malformed manifest, an incompatible index."""


def run_reporting_errors(
    prog: str,
    run: Callable[[argparse.Namespace], int | None],
    args: argparse.Namespace,
    *,
    verbose: bool = False,
    interrupted: str = "interrupted",
) -> int:
    """Run a command with logging set up; bad input and Ctrl-C become one line and an exit code."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(run(args) or 0)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
