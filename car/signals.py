"""SIGINT/SIGTERM/SIGHUP for the foreground commands (car run, serve, hub serve)."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Tuple

# SIGHUP is a closed terminal or a dropped SSH session. Left at its default it ends car at once
# (rc 129) with no cleanup, and the agent, in a session of its own, runs on: so it stops car as
# SIGTERM does.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_DONE = 0  # no signal has number 0: the byte that ends the relay


@contextmanager
def on_stop_signals(callback: Callable[[], None]) -> Iterator[None]:
    """Call `callback`, from a thread of this context, on SIGINT/SIGTERM/SIGHUP while inside; the
    old handlers come back after. Outside the main thread no handler can be set: a no-op.

    Nothing of car runs in the handler. A Python handler runs in the main thread between two
    bytecodes, maybe while the main thread holds the very lock the callback needs (an Event's,
    inside its wait()): it would wait on itself for ever. And it runs late or never when the signal
    went to another thread while the main thread sleeps in a lock's acquire(). So the signal's
    number goes, at the C level, from whichever thread got it to a pipe (signal.set_wakeup_fd), and
    a thread reading that pipe calls `callback`.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # as set_wakeup_fd requires: a full pipe drops a byte, never blocks

    def relay() -> None:
        while True:
            for number in os.read(read_end, 64):
                if number == _DONE:
                    return
                if number in STOP_SIGNALS:
                    callback()

    thread = threading.Thread(target=relay, name="car-signals", daemon=True)
    thread.start()
    try:
        previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        try:
            # a Python handler, so that the C one writes the number to the pipe; the work is the relay's
            previous = {sig: signal.signal(sig, _noted) for sig in _signals_to_catch()}
            try:
                yield
            finally:
                for sig, old in previous.items():
                    signal.signal(sig, old)
        finally:
            signal.set_wakeup_fd(previous_fd)
    finally:
        os.set_blocking(write_end, True)
        os.write(write_end, bytes([_DONE]))
        thread.join()
        os.close(read_end)
        os.close(write_end)


def _signals_to_catch() -> Tuple[int, ...]:
    """STOP_SIGNALS, but a SIGHUP that came ignored stays ignored: that is what `nohup car hub
    serve &` asks for, so that the hub outlives the terminal it was started from."""
    return tuple(sig for sig in STOP_SIGNALS
                 if not (sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN))


def _noted(_signum: int, _frame: object) -> None:
    """The Python half of the handler: nothing left to do (the relay got the number)."""
