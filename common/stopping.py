"""Stopping a long command cleanly on Ctrl-C or SIGTERM, with a stop that cannot be lost.

SIGTERM (``kill``, a supervisor stopping the job) ends a Python process at once by default:
no ``finally`` runs, so temporary folders and half-written files stay. Within
:func:`signals_stop`, it raises :class:`Terminated` (a ``KeyboardInterrupt``) instead, where
Ctrl-C raises ``KeyboardInterrupt``, so both stop the work the same way.

Python runs a signal handler between the bytecodes of the main thread. When that happens inside
a weakref callback or a ``__del__`` (h5py closes its objects there), what the handler raises is
printed as "Exception ignored in ..." and dropped: the export's Ctrl-C or SIGTERM during its
assembly was lost, and the job went on to write its file and exit 0. So the handlers also
record the stop, and long work calls :func:`check` at points where raising is safe.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

_requested: type[BaseException] | None = None


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt (exit 130 either way)."""


def check() -> None:
    """Raise the stop a signal asked for, if any: call where the work can stop cleanly."""
    if _requested is not None:
        raise _requested


@contextmanager
def signals_stop(on_terminate: Callable[[], None] | None = None) -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (``on_terminate`` is called
    first) and Ctrl-C ``KeyboardInterrupt``; both are recorded for :func:`check`. A second
    SIGTERM ends the process at once."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def terminate(signum: int, frame: object) -> None:
        global _requested
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if on_terminate is not None:
            on_terminate()
        _requested = Terminated
        raise Terminated

    def interrupt(signum: int, frame: object) -> None:
        global _requested
        _requested = KeyboardInterrupt
        raise KeyboardInterrupt

    def unraisable(info: sys.UnraisableHookArgs) -> None:
        # A stop is recorded, and the clean-up of what it drops (a DataLoader whose workers the
        # same SIGTERM ended) is no news to whoever stopped it: neither gets a traceback.
        if isinstance(info.exc_value, KeyboardInterrupt) or _requested is not None:
            log.debug("while stopping: %s", info.exc_value)
        else:
            hook(info)

    # A signal the parent set to be ignored stays ignored (a shell's background job ignores
    # SIGINT: the script's Ctrl-C is not meant for it), as Python itself keeps it.
    handlers = {signal.SIGTERM: terminate, signal.SIGINT: interrupt}
    previous = {
        signum: signal.signal(signum, handler)
        for signum, handler in handlers.items()
        if signal.getsignal(signum) is not signal.SIG_IGN
    }
    hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = hook
        _requested = None
