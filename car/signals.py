"""SIGINT/SIGTERM for the foreground commands (car run, serve, hub serve)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def on_stop_signals(callback: Callable[[], None]) -> Iterator[None]:
    """Call `callback` on SIGINT/SIGTERM while inside; the old handlers come back after.

    `callback` runs in the main thread between bytecodes, so it must only set flags (an Event,
    a queued interrupt): STYLE §3.12. Outside the main thread no handler can be set; a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda _signum, _frame: callback())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
