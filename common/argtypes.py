"""argparse value types shared by every phonesim command: range errors are usage errors."""

from __future__ import annotations

import argparse
import ipaddress
import math
import numbers
import os
import re
import sys
from collections.abc import Callable

from common.machine import available_cores


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


THREADS_FLOOR = 16  # the cap of max_threads on a machine of few cores
WORKERS_FLOOR = 8  # and of max_workers


def max_threads() -> int:
    """The most model threads a command takes: 4 per core this process may run on (at least
    16). More only slow the model down, and ONNX Runtime asked for 100,000 never finished
    starting (its memory grew by 60 MB/s, and Ctrl-C could not stop it)."""
    return max(THREADS_FLOOR, 4 * available_cores())


def max_workers() -> int:
    """The most server worker processes: 4 per core this process may run on (at least 8).
    Each holds its own model; `serve --workers 1000` forked until the machine ran out of
    memory (23 GB in a minute) and the master, busy forking, did not stop on SIGTERM."""
    return max(WORKERS_FLOOR, 4 * available_cores())


def worker_count(text: str) -> int:
    """A number of server worker processes: 1 to :func:`max_workers`."""
    value = int(text)
    if not 1 <= value <= max_workers():
        raise argparse.ArgumentTypeError(
            f"must be 1 to {max_workers()} (4 per core this process may use, and never a limit "
            f"below {WORKERS_FLOOR}), got {value}"
        )
    return value


MAX_BATCH = 1024  # images per forward pass: 100,000 had held 16 GB in one pass


def batch_size(text: str) -> int:
    """Images per forward pass or training step: 1 to :data:`MAX_BATCH`."""
    value = int(text)
    if not 1 <= value <= MAX_BATCH:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_BATCH}, got {value}")
    return value


def decode_workers(text: str) -> int:
    """Image decoding (or data loading) workers: 0 (in the main process) to
    :func:`max_workers`. Each runs batches ahead, so 1000 held every decoded image at once."""
    value = int(text)
    if not 0 <= value <= max_workers():
        raise argparse.ArgumentTypeError(
            f"must be 0 to {max_workers()} (4 per core here, at least {WORKERS_FLOOR}), got {value}"
        )
    return value


def threads_problem(value: int) -> str | None:
    """Why ``value`` is no model thread count (1 to :func:`max_threads`), or None; for the
    flag and for the library's own check (``embedder.engine.check_threads``)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        return f"must be a whole number of threads, got {value!r}"
    if 1 <= value <= max_threads():
        return None
    return f"must be 1 to {max_threads()} (4 per core here, at least {THREADS_FLOOR}), got {value}"


def thread_count(text: str) -> int:
    """A model thread count: 1 to :func:`max_threads`."""
    value = int(text)
    problem = threads_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return value


def unit_interval(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def host(text: str) -> str:
    """An address to listen on: an IPv4/IPv6 address or a host name."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not _HOSTNAME.match(text):
            raise argparse.ArgumentTypeError(
                f"must be an IP address or a host name, got {text!r}"
            ) from None
    return text


def port(text: str) -> int:
    """A port to listen on. Not 0: the system would pick one that no client could know."""
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 1-65535, got {value}")
    return value


_DEVICE = re.compile(r"^(cpu|mps|cuda(:[0-9]+)?)$")


def device(text: str) -> str:
    """A device to run the model on: cpu, cuda, cuda:N or mps (checked against the machine
    when the model loads)."""
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda, cuda:N or mps, got {text!r}")
    return text


_STORE_URL = re.compile(r"^postgres(ql)?://[^\s]*$")
_PASSWORD_PAIR = re.compile(r"(?i)(password\s*=\s*)('[^']*'|[^\s&]+)")


STORE_ENV = "PHONESIM_STORE"


class _FromEnvironment(str):
    """A default read from the environment: its errors name the variable, not the flag."""


def _redacted(text: str) -> str:
    """``text`` with no password left in it, whatever its shape (a URL, ``+driver`` schemes,
    quotes, ``password=`` pairs, libpq keywords): everything from ``://`` (or the start) up to
    the last ``@`` becomes ``***``. For error messages, which go to logs and terminals."""
    shown = _PASSWORD_PAIR.sub(r"\1***", text)
    if "@" in shown:
        head, _, tail = shown.rpartition("@")
        scheme, sep, _ = head.partition("://")
        shown = f"{scheme}{sep}***@{tail}" if sep else f"***@{tail}"
    return shown


def store_url(text: str) -> str | None:
    """A catalog store URL: ``postgresql://[user[:password]@]host[:port]/dbname[?...]``; outer
    whitespace (a secret file's newline) is dropped. An empty ``--store ''`` is no store: the
    way to run without the one ``$PHONESIM_STORE`` names (a folder search of `duplicates
    find` became one against it, with no way back but to unset the variable)."""
    url = text.strip()
    if not url:
        return None
    if not _STORE_URL.match(url):
        where = f"(from ${STORE_ENV}) " if isinstance(text, _FromEnvironment) else ""
        shown = _redacted(url)[:60]
        raise argparse.ArgumentTypeError(
            f"{where}must be a postgresql://user@host:port/dbname URL, got {shown!r}"
        )
    return url


def refuse_file_as_folder(parser: argparse.ArgumentParser, flag: str, value: str | None) -> None:
    """A usage error when the folder option ``flag`` names a file (it had been "File exists"
    from a later ``mkdir``, exit 1)."""
    if value and os.path.exists(value) and not os.path.isdir(value):
        parser.error(f"{flag} {value}: is a file, not a folder")


def store_from_environment(store: str | None) -> bool:
    """Whether a parsed ``--store`` is the one ``$PHONESIM_STORE`` names (its default)."""
    env = os.environ.get(STORE_ENV, "").strip()
    return store is not None and bool(env) and store == env


# argparse names the type in "invalid ... value" messages.
positive_int.__name__ = "positive integer"
non_negative_int.__name__ = "non-negative integer"
positive_float.__name__ = "positive number"
port.__name__ = "port"
host.__name__ = "host"
unit_interval.__name__ = "number in (0, 1]"
non_negative_float.__name__ = "non-negative number"
fraction.__name__ = "number in [0, 1)"
probability.__name__ = "number in [0, 1]"
device.__name__ = "device"
batch_size.__name__ = "batch size"
decode_workers.__name__ = "worker count"
store_url.__name__ = "store URL"


def add_data_option(
    parser: argparse.ArgumentParser, help: str, *, required: bool = True, default: str | None = None
) -> None:
    """``--data``: the input images, a folder or a CSV manifest, as on every phonesim command.

    ``--images DIR`` and ``--manifest CSV`` stay as older spellings that also say which of the
    two the path is; :func:`data_source` reads whichever was given.
    """
    group = parser.add_mutually_exclusive_group(required=required and default is None)
    group.add_argument("--data", default=default, help=help)
    group.add_argument("--images", metavar="DIR", help="same as --data, for a folder of images")
    group.add_argument("--manifest", metavar="CSV", help="same as --data, for a CSV manifest")


def data_source(args: argparse.Namespace) -> tuple[str, str | None]:
    """The input path and its kind: ``"images"``, ``"manifest"``, or None for ``--data``
    (a folder or a CSV, told apart by what the path is)."""
    if getattr(args, "images", None):
        return args.images, "images"
    if getattr(args, "manifest", None):
        return args.manifest, "manifest"
    return args.data, None


def add_index_option(parser: argparse.ArgumentParser, help: str) -> None:
    """The index folder as ``--index DIR``, like every phonesim command; a bare ``DIR`` (the
    older spelling) still works. :func:`index_folder` reads whichever was given."""
    parser.add_argument("--index", dest="index_option", metavar="INDEX_DIR", help=help)
    parser.add_argument("index_positional", nargs="?", metavar="INDEX_DIR", help=argparse.SUPPRESS)


def add_store_option(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--store URL``: the catalog store when it is not the index folder's own SQLite file
    (a PostgreSQL database shared by several machines); read as ``args.store``."""
    env = os.environ.get(STORE_ENV)
    base = help or (
        "catalog store: a postgresql://user@host:port/dbname URL (without one: the SQLite "
        "file in the index folder)"
    )
    # The variable changes what the command does (a search within a folder becomes one
    # against the store): the help says so, and whether it is set now.
    note = f"default: ${STORE_ENV}, " + ("which is set now" if env else "when set")
    note += "; --store '' for none"
    parser.add_argument(
        "--store",
        type=store_url,
        metavar="URL",
        default=_FromEnvironment(env) if env else None,  # keeps passwords out of `ps`
        help=f"{base} ({note})",
    )


def index_folder(args: argparse.Namespace) -> str:
    """The folder of :func:`add_index_option`; a usage error when none or two were given."""
    given = [p for p in (args.index_option, args.index_positional) if p]
    if len(given) != 1:
        raise argparse.ArgumentTypeError("give the index folder once, as --index INDEX_DIR")
    return given[0]


def int_between(low: int, high: int) -> Callable[[str], int]:
    """An argparse type for a whole number within [low, high]."""

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}-{high}, got {value}")
        return value

    parse.__name__ = f"whole number in [{low}, {high}]"
    return parse


def seconds_between(low: float, high: float) -> Callable[[str], float]:
    """An argparse type for a duration in seconds within [low, high]."""
    return number_between(low, high, "seconds")


def number_between(low: float, high: float, unit: str) -> Callable[[str], float]:
    """An argparse type for a number of ``unit`` within [low, high]."""

    def parse(text: str) -> float:
        value = float(text)
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be {low:g}-{high:g} {unit}, got {value}")
        return value

    parse.__name__ = f"{unit} in [{low:g}, {high:g}]"
    return parse


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``, read by :func:`show_progress`."""
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def show_progress(args: argparse.Namespace) -> bool:
    """Whether to draw progress bars: for a person watching a terminal, not under
    ``--no-progress`` or ``-q``, nor into a log file."""
    hidden = getattr(args, "no_progress", False) or getattr(args, "quiet", False)
    return not hidden and sys.stderr.isatty()
