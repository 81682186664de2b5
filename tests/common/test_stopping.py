"""Ctrl-C and SIGTERM within ``signals_stop``: raised, recorded where Python drops them, and
left alone where the parent ignores them."""

from __future__ import annotations

import os
import signal
import time
import weakref

import pytest

from common import stopping


def _signal_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    for _ in range(100):  # the handler runs between bytecodes of the main thread
        time.sleep(0.001)


def test_sigterm_raises_terminated_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    said = []
    with pytest.raises(stopping.Terminated), stopping.signals_stop(lambda: said.append(1)):
        _signal_self(signal.SIGTERM)
    assert said == [1]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    stopping.check()  # nothing recorded once the block is left


def test_a_stop_python_drops_is_raised_at_the_next_check(capsys):
    """Raised inside a weakref callback, it is printed as "Exception ignored" and lost."""

    class Dropped:
        pass

    with pytest.raises(KeyboardInterrupt), stopping.signals_stop():
        obj = Dropped()
        weakref.finalize(obj, _signal_self, signal.SIGINT)
        del obj  # the callback runs now, and the KeyboardInterrupt raised in it is dropped
        assert "Exception ignored" not in capsys.readouterr().err
        stopping.check()


def test_a_signal_the_parent_ignores_stays_ignored():
    """A shell's background job ignores SIGINT: the script's Ctrl-C was not meant for it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stopping.signals_stop():
            _signal_self(signal.SIGINT)
            stopping.check()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
