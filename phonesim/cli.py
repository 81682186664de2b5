"""The ``phonesim`` command: one subcommand per user task.

Each stage package contributes its subcommands through a ``register(subparsers)`` function in its
own ``cli`` module, so this file only wires them together and turns expected errors into one-line
messages with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import logging

from common.errors import run_reporting_errors

log = logging.getLogger("phonesim")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phonesim",
        description=(
            "Visual similarity search for phone product images: train a timm classifier on "
            "catalog photos, embed images, index them in FAISS and serve lookups."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from demo import pipeline as demo
    from duplicates import cli as duplicates_cli
    from embedder import cli as embedder_cli
    from export import cli as export_cli
    from index import cli as index_cli
    from server import cli as server_cli

    embedder_cli.register(sub)
    duplicates_cli.register(sub)
    index_cli.register(sub)
    export_cli.register(sub)
    demo.register(sub)
    server_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_reporting_errors("phonesim", args.func, args, verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
