"""on_stop_signals: a storm of signals cannot deadlock the main thread, and the context leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from car.signals import on_stop_signals

from support import PROJECT

# A Python handler runs in the main thread between two bytecodes, maybe while Event.wait() holds the
# Event's lock. A handler that called Event.set() itself would then wait on that lock for ever.
LOCK_HELD = textwrap.dedent("""
    import os, signal, threading
    from car.signals import on_stop_signals

    stop = threading.Event()
    with on_stop_signals(stop.set):
        with stop._cond:  # held, as inside Event.wait()
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10000):  # the handler runs in here
                pass
        assert stop.wait(10), "the signal never reached the callback"
    print("ok")
""")


def test_a_signal_landing_while_the_main_thread_holds_the_events_lock_does_not_deadlock():
    done = subprocess.run([sys.executable, "-c", LOCK_HELD], cwd=PROJECT, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr[-2000:]


# The kernel may hand a process's signal to any of its threads. One that lands on a thread other than
# the main one, while the main thread sleeps in a lock's acquire(), never runs a Python handler there.
OTHER_THREAD = textwrap.dedent("""
    import signal, sys, threading, time
    from car.signals import on_stop_signals

    main = threading.get_ident()

    def signal_once_main_sleeps():
        deadline = time.monotonic() + 10
        while sys._current_frames()[main].f_code.co_name != "wait" and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # from Condition.wait's first lines into its acquire()
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # to this thread, not the main one

    stop = threading.Event()
    with on_stop_signals(stop.set):
        other = threading.Thread(target=signal_once_main_sleeps)
        other.start()
        stop.wait()  # no timeout: only the callback can end this
        other.join()
    print("ok")
""")


def test_a_signal_delivered_to_another_thread_still_reaches_the_callback():
    done = subprocess.run([sys.executable, "-c", OTHER_THREAD], cwd=PROJECT, capture_output=True, text=True,
                          timeout=30)
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr[-2000:]


def test_a_signal_reaches_the_callback_and_the_context_leaves_nothing_behind():
    before_handler, before_threads = signal.getsignal(signal.SIGTERM), threading.active_count()
    called = threading.Event()
    with on_stop_signals(called.set):
        os.kill(os.getpid(), signal.SIGTERM)
        assert called.wait(10)
    assert signal.getsignal(signal.SIGTERM) is before_handler
    assert signal.set_wakeup_fd(-1) == -1  # and none was left set
    assert threading.active_count() == before_threads


# SIGHUP is a closed terminal or a dropped SSH session: it stops car as SIGTERM does. Under nohup it
# comes ignored, and stays so: `nohup car hub serve &` is meant to outlive its terminal.
HANGUP = textwrap.dedent("""
    import os, signal, sys, threading
    from car.signals import on_stop_signals

    signal.signal(signal.SIGHUP, signal.SIG_IGN if sys.argv[1] == "nohup" else signal.SIG_DFL)
    calls = []
    called = threading.Event()
    with on_stop_signals(lambda: (calls.append(1), called.set())):
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)  # after the SIGHUP: its byte, if any, is relayed first
        assert called.wait(10), "no signal reached the callback"
    # the relay is joined: every byte it got is handled
    print(len(calls), signal.getsignal(signal.SIGHUP) == signal.SIG_IGN)
""")


@pytest.mark.parametrize("how, expected", [("plain", "2 False\n"), ("nohup", "1 True\n")])
def test_sighup_stops_like_sigterm_unless_it_came_ignored(how: str, expected: str):
    done = subprocess.run([sys.executable, "-c", HANGUP, how], cwd=PROJECT, capture_output=True, text=True,
                          timeout=30)
    assert (done.returncode, done.stdout) == (0, expected), done.stderr[-2000:]
