"""A bounded in-memory sequence many readers can wait on (log lines, status events)."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Deque, List, Optional, Tuple


class Feed:
    """Publishers append; each reader keeps its own cursor and waits on one Condition."""

    def __init__(self, maxlen: int = 2000) -> None:
        self._cond = threading.Condition()
        self._items: Deque[Tuple[int, Any]] = deque(maxlen=maxlen)
        self._seq = 0
        self._closed = False

    @property
    def seq(self) -> int:
        with self._cond:
            return self._seq

    @property
    def closed(self) -> bool:
        return self._closed

    def publish(self, item: Any) -> None:
        with self._cond:
            self._seq += 1
            self._items.append((self._seq, item))
            self._cond.notify_all()

    def read_since(self, seq: int, timeout: Optional[float]) -> Tuple[int, List[Any]]:
        """Items after `seq` (waiting up to `timeout` for one); a slow reader skips what fell off."""
        with self._cond:
            if self._seq <= seq and not self._closed:
                self._cond.wait_for(lambda: self._seq > seq or self._closed, timeout)
            items = [item for s, item in self._items if s > seq]
            return self._seq, items

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
