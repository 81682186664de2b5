"""The ``phonesim`` command: one subcommand per user task.

Each stage package contributes its subcommands through a ``register(subparsers)`` function in its
own ``cli`` module, so this file only wires them together and turns expected errors into one-line
messages with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys

from phonesim.errors import UserError

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

    from embedder import cli as embedder_cli
    from export import cli as export_cli
    from index import cli as index_cli
    from phonesim import demo
    from server import cli as server_cli

    embedder_cli.register(sub)
    index_cli.register(sub)
    export_cli.register(sub)
    demo.register(sub)
    server_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"phonesim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("phonesim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
