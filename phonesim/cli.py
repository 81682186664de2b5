"""The ``phonesim`` command: one subcommand per user task.

Each stage package contributes its subcommands through a ``register(subparsers)`` function in its
own ``cli`` module, so this file only wires them together and turns expected errors into one-line
messages with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap

from common.errors import run_reporting_errors

log = logging.getLogger("phonesim")


def _add_verbosity(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``-v``/``-q`` on the root and on every subcommand, so they work on either side of it.

    Subcommands default to SUPPRESS so an unset flag after the subcommand does not undo one
    given before it; a subcommand that already has its own flag of that name keeps it.
    """
    default = False if top else argparse.SUPPRESS
    taken = {opt for action in parser._actions for opt in action.option_strings}
    flags = {
        ("-v", "--verbose"): "log debug messages",
        ("-q", "--quiet"): "log warnings and errors only",
    }
    for names, help_text in flags.items():
        free = [name for name in names if name not in taken]
        if len(free) == len(names):
            parser.add_argument(*free, action="store_true", default=default, help=help_text)


class _WholeWordsFormatter(argparse.HelpFormatter):
    """Wraps help text at spaces only: textwrap's default also breaks after hyphens, which split
    flags such as ``--no-progress`` and words such as ``item-item`` across two lines."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        text = self._whitespace_matcher.sub(" ", text).strip()
        return textwrap.wrap(text, width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if isinstance(self, argparse.RawDescriptionHelpFormatter):
            return super()._fill_text(text, width, indent)  # laid out by hand: keep it
        text = self._whitespace_matcher.sub(" ", text).strip()
        wrap = textwrap.TextWrapper(
            width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
        )
        return wrap.fill(text)


def _wrap_whole_words(parser: argparse.ArgumentParser) -> None:
    """Gives ``parser`` the whole-words wrapping on top of the formatter it chose."""
    chosen = parser.formatter_class
    if not issubclass(chosen, _WholeWordsFormatter):
        parser.formatter_class = type(chosen.__name__, (_WholeWordsFormatter, chosen), {})


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser`` (subcommands of subcommands included)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found.append(child)
                found.extend(_subparsers(child))
    return found


def _version() -> str:
    """The installed package's version (a checkout run without installing has none)."""
    from common.stamps import phonesim_version

    return phonesim_version() or "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phonesim",
        description=(
            "Visual similarity search for phone product images: train a timm classifier on "
            "catalog photos, embed images, index them in FAISS and serve lookups."
        ),
    )
    _add_verbosity(parser, top=True)
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from demo import pipeline as demo
    from duplicates import cli as duplicates_cli
    from embedder import cli as embedder_cli
    from export import cli as export_cli
    from index import cli as index_cli
    from phonesim import query
    from server import cli as server_cli

    embedder_cli.register(sub)
    duplicates_cli.register(sub)
    query.register(index_cli.register(sub))
    export_cli.register(sub)
    demo.register(sub)
    server_cli.register(sub)
    _wrap_whole_words(parser)
    for child in _subparsers(parser):
        _add_verbosity(child, top=False)
        _wrap_whole_words(child)
    return parser


# Set once the warning below is said: the processes a command starts or becomes inherit it.
_LOCALE_SAID = "PHONESIM_LOCALE_WARNED"


def _warn_if_not_utf8() -> None:
    """A locale without UTF-8 (``LC_ALL=C`` with ``PYTHONUTF8=0``) decodes non-ASCII file names
    to stand-ins: photos were left out as "not UTF-8 text" and paths refused. Said once per
    command, not again by the processes it starts or becomes (``serve --api-key`` re-executes
    itself to drop the key from its command line, and said it twice)."""
    encoding = sys.getfilesystemencoding()
    if encoding.lower().replace("-", "") == "utf8" or os.environ.get(_LOCALE_SAID):
        return
    os.environ[_LOCALE_SAID] = "1"
    print(
        f"phonesim: warning: this process reads file names as {encoding}, not UTF-8 (a locale "
        "such as LC_ALL=C with PYTHONUTF8=0): non-ASCII names may be left out or refused; set "
        "PYTHONUTF8=1 or LC_ALL=C.UTF-8",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    try:  # the commands' imports take a moment: Ctrl-C then was a traceback
        parser = build_parser()
    except KeyboardInterrupt:
        print("phonesim: interrupted", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    _warn_if_not_utf8()
    if args.verbose and args.quiet:  # -v had won without a word
        parser.error("-v/--verbose and -q/--quiet contradict each other; give one")
    # A command may say what Ctrl-C leaves behind (export: the progress it resumes from).
    hint = getattr(args, "interrupted", None)
    return run_reporting_errors(
        "phonesim",
        args.func,
        args,
        verbose=args.verbose,
        quiet=args.quiet,
        interrupted=(lambda: hint(args)) if callable(hint) else "interrupted",
        own_signals=getattr(args, "own_signals", False),  # serve: its own
    )


if __name__ == "__main__":
    raise SystemExit(main())
