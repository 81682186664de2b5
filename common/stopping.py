"""A stop asked by a signal that cannot be lost.

Python runs a signal handler between the bytecodes of the main thread. When that happens inside
a weakref callback or a ``__del__`` (h5py closes its objects there), what the handler raises is
printed as "Exception ignored in ..." and dropped: the export's Ctrl-C or SIGTERM during its
assembly was lost, and the job went on to write its file and exit 0. So the handler also
records the stop, and long work calls :func:`check` at points where raising is safe.
"""

from __future__ import annotations

_requested: type[BaseException] | None = None


def request(stop: type[BaseException]) -> None:
    """Record a stop (``KeyboardInterrupt`` or a subclass) that :func:`check` raises."""
    global _requested
    _requested = stop


def clear() -> None:
    global _requested
    _requested = None


def check() -> None:
    """Raise the stop a signal asked for, if any: call where the work can stop cleanly."""
    if _requested is not None:
        raise _requested
