"""Server-Sent Events: stream to one client until it leaves or the server stops.

Sources are in-memory Feeds (each client keeps its own cursor, so a slow one only skips what fell
off the Feed's bounded deque and never blocks a publisher) or, for a log another process writes,
a logs.FileCursor.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, List, Optional

from car.feed import Feed

Chunks = Iterator[Optional[bytes]]  # None = nothing new this tick (time for a heartbeat check)


@dataclass(frozen=True)
class EventStream:
    """A route's answer that is a stream: `produce(streams)` yields encoded SSE chunks."""

    produce: Callable[["Streams"], Chunks]


# SSE ends a line at \r as at \n, so a \r inside a log line (an agent's progress bar) cannot travel as
# itself. It becomes U+240D, the symbol for a carriage return: the line stays one line, the page (which
# splits on \n and shows the text as it is) shows where the agent returned the carriage, and no text is
# lost (dropping it glued '10%' to the next step). A \r that ends a line is part of a \r\n: dropped.
CR, CR_SHOWN_AS = "\r", "\u240d"


def encode_event(name: Optional[str], data: str) -> bytes:
    """One SSE event; every line of `data` (split on \\n) becomes a `data:` line."""
    head = f"event: {name}\n" if name else ""
    body = "".join(f"data: {line.rstrip(CR).replace(CR, CR_SHOWN_AS)}\n" for line in data.split("\n"))
    return (head + body + "\n").encode("utf-8")


def encode_json_event(name: str, data: Any) -> bytes:
    return encode_event(name, json.dumps(data, separators=(",", ":")))


def encode_lines(lines: Iterable[str]) -> Optional[bytes]:
    """Log lines as one event whose data lines are the log lines (the client splits on \\n)."""
    lines = list(lines)
    return encode_event(None, "\n".join(lines)) if lines else None


class Streams:
    """Every open stream of one server: a server-wide stop Event and a count to wait on."""

    def __init__(self, heartbeat_seconds: float = 15.0, tick_seconds: float = 1.0) -> None:
        self.heartbeat_seconds, self.tick_seconds = heartbeat_seconds, tick_seconds
        self.stop = threading.Event()
        self._cond = threading.Condition()
        self._active = 0

    @property
    def active(self) -> int:
        with self._cond:
            return self._active

    def serve(self, stream: EventStream, write: Callable[[bytes], None],
              gone: Callable[[], bool] = lambda: False) -> None:
        """Write the stream's chunks (and heartbeats) until the client leaves or we stop."""
        with self._cond:
            self._active += 1
        chunks = stream.produce(self)
        try:
            write(b"retry: 2000\n\n")
            last_write = time.monotonic()
            for chunk in chunks:
                if self.stop.is_set():
                    break
                now = time.monotonic()
                if chunk:
                    write(chunk)
                    last_write = now
                elif gone():
                    break
                elif now - last_write >= self.heartbeat_seconds:
                    write(b": keep-alive\n\n")
                    last_write = now
        except (OSError, ValueError):  # BrokenPipe, ConnectionReset, a timed-out slow reader
            pass
        finally:
            chunks.close()
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def close(self, timeout: float = 5.0) -> bool:
        """Stop every stream; True when all ended within `timeout`."""
        self.stop.set()
        with self._cond:
            return self._cond.wait_for(lambda: self._active == 0, timeout)


def feed_chunks(feed: Feed, streams: Streams, encode: Callable[[List[Any]], Optional[bytes]],
                seq: Optional[int] = None) -> Chunks:
    """A Feed's items from `seq` on (default: from now), a tick at a time."""
    seq = feed.seq if seq is None else seq
    while not streams.stop.is_set() and not feed.closed:
        seq, items = feed.read_since(seq, streams.tick_seconds)
        yield encode(items) if items else None
