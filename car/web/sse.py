"""Server-Sent Events: stream to one client until it leaves or the server stops.

Sources are in-memory Feeds (each client keeps its own cursor, so a slow one only skips what fell
off the Feed's bounded deque and never blocks a publisher) or, for a log another process writes,
a FileCursor.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple

from car.feed import Feed

Chunks = Iterator[Optional[bytes]]  # None = nothing new this tick (time for a heartbeat check)


@dataclass(frozen=True)
class EventStream:
    """A route's answer that is a stream: `produce(streams)` yields encoded SSE chunks."""

    produce: Callable[["Streams"], Chunks]


def encode_event(name: Optional[str], data: str) -> bytes:
    """One SSE event; every line of `data` becomes a `data:` line (\r would split a line)."""
    head = f"event: {name}\n" if name else ""
    body = "".join(f"data: {line}\n" for line in data.replace("\r", "").split("\n"))
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


class FileCursor:
    """A position in a log file (inode + offset): the lines appended since, across rotation."""

    TAIL_BYTES = 256 * 1024

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None
        self._ino: Optional[int] = None
        self._pos = 0
        self._buf = b""

    def position(self) -> Tuple[Optional[int], int]:
        """Where the file ends now, as (inode, size); (None, 0) when it does not exist."""
        try:
            st = os.stat(self.path)
            return st.st_ino, st.st_size
        except FileNotFoundError:
            return None, 0

    def mark(self, position: Tuple[Optional[int], int]) -> None:
        """What the file held at `position` counts as delivered (another source carried it)."""
        self.close()
        self._buf = b""
        self._ino, self._pos = position

    def tail(self, n: int) -> List[str]:
        """The last `n` complete lines before the marked position."""
        if n <= 0 or not self._pos:
            return []
        try:
            with open(self.path, "rb") as fh:
                if os.fstat(fh.fileno()).st_ino != self._ino:
                    return []
                start = max(0, self._pos - self.TAIL_BYTES)
                fh.seek(start)
                data = fh.read(self._pos - start)
        except FileNotFoundError:
            return []
        lines = data.decode("utf-8", errors="replace").split("\n")
        if start > 0:
            lines = lines[1:]  # the first one is cut
        return [line for line in lines if line][-n:]

    def read_new(self) -> List[str]:
        """Complete lines appended since the last call (or the mark)."""
        out: List[str] = []
        while True:
            if self._fh is None and not self._open(out):
                return out
            data = self._fh.read()
            if data:
                self._pos += len(data)
                self._take(data, out)
            try:
                rotated = os.stat(self.path).st_ino != self._ino
            except FileNotFoundError:
                rotated = False  # mid-rotation: the new file appears in a moment
            if not rotated:
                return out
            self.close()  # the old file is read to its end; go on with the new one from 0
            self._flush(out)
            self._ino, self._pos = None, 0

    def _open(self, out: List[str]) -> bool:
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return False
        ino = os.fstat(fh.fileno()).st_ino
        if self._ino is not None and ino != self._ino:
            self._finish_rotated(out)  # rotated since the mark: read the rest of the backup
            self._flush(out)
            self._ino, self._pos = None, 0
        if self._ino is None:
            self._ino, self._pos = ino, 0
        if os.fstat(fh.fileno()).st_size < self._pos:
            self._pos = 0  # truncated
        fh.seek(self._pos)
        self._fh = fh
        return True

    def _finish_rotated(self, out: List[str]) -> None:
        backup = Path(f"{self.path}.1")
        try:
            with open(backup, "rb") as fh:
                if os.fstat(fh.fileno()).st_ino == self._ino:
                    fh.seek(self._pos)
                    self._take(fh.read(), out)
        except FileNotFoundError:
            pass

    def _flush(self, out: List[str]) -> None:
        """A file that ended without a newline: its last line is complete all the same."""
        if self._buf:
            out.append(self._buf.decode("utf-8", errors="replace"))
        self._buf = b""

    def _take(self, data: bytes, out: List[str]) -> None:
        self._buf += data
        *done, self._buf = self._buf.split(b"\n")
        out.extend(line.decode("utf-8", errors="replace") for line in done)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
