"""The hub's one background thread: publish repo changes, notice other processes', flush state."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable, Optional, Set


class HubWorker:
    """Sleeps on a Condition until touch(), schedule_flush(), stop() or the next poll; never spins.

    publish(ids) re-reads those repos and says whether any changed; flush() writes hub_state.json
    (at most once per flush_seconds); every poll_seconds all repos are re-read, which is how
    changes made by other processes (a `car run` in a terminal) reach the events.
    """

    def __init__(self, publish: Callable[[Set[str]], bool], all_ids: Callable[[], Iterable[str]],
                 flush: Callable[[], None], log: logging.Logger, *, poll_seconds: float,
                 flush_seconds: float) -> None:
        self._publish, self._all_ids, self._flush, self._log = publish, all_ids, flush, log
        self.poll_seconds, self.flush_seconds = poll_seconds, flush_seconds
        self._cond = threading.Condition()
        self._pending: Set[str] = set()
        self._flush_due: Optional[float] = None
        self._last_flush = float("-inf")
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="car-hub", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def touch(self, repo_id: str) -> None:
        """Something about the repo changed: re-read and publish it soon (never blocks for long)."""
        with self._cond:
            self._pending.add(repo_id)
            self._cond.notify()

    def schedule_flush(self) -> None:
        with self._cond:
            if self._flush_due is None:
                self._flush_due = max(time.monotonic(), self._last_flush + self.flush_seconds)
            self._cond.notify()

    def stop(self) -> None:
        """Finish the current round and end the thread (the caller does the final flush)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        next_poll = time.monotonic() + self.poll_seconds
        while True:
            with self._cond:
                while not (self._pending or self._stopping):
                    due = min(next_poll, self._flush_due if self._flush_due is not None else next_poll)
                    wait = due - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stopping:
                    return
                pending, self._pending = self._pending, set()
            now = time.monotonic()
            if now >= next_poll:
                pending.update(self._all_ids())
                next_poll = now + self.poll_seconds
            try:
                if pending and self._publish(pending):
                    self.schedule_flush()
                with self._cond:
                    due = self._flush_due is not None and self._flush_due <= time.monotonic()
                    if due:
                        self._flush_due, self._last_flush = None, time.monotonic()
                if due:
                    self._flush()
            except Exception:  # a bad file must not end the thread; the traceback goes to the hub log
                self._log.exception("hub worker: error while publishing or flushing")
