"""A log file car appends lines to and rotates (x.log -> x.log.1 -> ... x.log.N); a write never raises."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional, Tuple

from car.errors import CarError
from car.state import utc_now


def backup_path(path: Path, n: int) -> Path:
    """A log's n-th backup (1: the newest): how rollover names them, and every reader finds them."""
    return Path(f"{path}.{n}")


def log_names(path: Path, backup_count: int) -> List[Path]:
    """The log's backups, oldest first, then the log: every name it may have, there or not."""
    return [backup_path(path, n) for n in range(backup_count, 0, -1)] + [path]


class LogFile:
    """One log file, appended to by this process from any thread.

    A write that fails (a full disk, a log deleted with its directory) must not stop a run that
    may go on for hours, nor print for every line: the first failure is told once on stderr, the
    lines are dropped, and the first write that works again says in the log how many were lost."""

    # How often a write looks whether the path still names the open file. A log moved or deleted (`mv`,
    # `rm`) while car writes would otherwise take every later line with it, out of its readers' sight
    # (and a deleted one out of rotation, which goes by the path's size). Not at every line: an agent
    # may print tens of thousands a second, and a stat each would cost more than the write. So the
    # lines of up to this long after a move still go to the moved file (or the deleted one): a second's
    # lines at most, and RunLog looks at every run's start, so no run is lost from its start on.
    CHECK_SECONDS = 1.0

    def __init__(self, path: Path, backup_count: int, max_bytes: int = 0) -> None:
        """max_bytes=0: rolls over only when told (run logs roll over between runs);
        > 0: before a line would take the file past it. backup_count=0: never rolls over, as logging's
        RotatingFileHandler (DESIGN.md §4): with no backup to keep them, the lines would be deleted."""
        self.path, self.backup_count, self.max_bytes = path, backup_count, max_bytes
        self._lock = threading.Lock()
        self._lost = 0
        self._torn = False  # the file ends in a part of a line (see _write_all)
        self._fd: Optional[int] = None
        self._ident: Optional[Tuple[int, int]] = None  # (st_dev, st_ino) of the file _fd is open on
        self._next_check = 0.0  # monotonic time of the next look at whether the path still names it
        try:  # at the start, a log car cannot write stops the start with one line
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = self._open()
        except OSError as exc:
            raise CarError(f"{path}: cannot write the log ({exc.strerror}); fix its permissions, or set "
                           f"log.path in the config") from exc

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        st = os.fstat(fd)
        self._ident = (st.st_dev, st.st_ino)
        self._next_check = time.monotonic() + self.CHECK_SECONDS
        return fd

    def reopen_if_moved(self) -> None:
        """Open the path again if it no longer names the file being written (moved, deleted, replaced)."""
        with self._lock:
            self._reopen_if_moved()

    def _reopen_if_moved(self) -> None:
        self._next_check = time.monotonic() + self.CHECK_SECONDS
        if self._fd is None:
            return  # the next write opens the path anyway
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                return
        except OSError:
            pass  # gone: made again
        try:
            fd = self._open()
        except OSError:
            # its directory went too (the repo moved or deleted): the lines follow the open file, and no
            # directory is made again where a repo was (car.files.write_atomic)
            return
        self._close()
        self._fd = fd
        self._torn = False  # that part of a line is the old file's last; the new file starts clean

    def write(self, line: str) -> None:
        """Append `line` (or lines joined by \\n: one write keeps them together)."""
        data = (line + "\n").encode("utf-8", errors="replace")
        with self._lock:
            try:
                if self._fd is None:
                    self._fd = self._open()
                elif time.monotonic() >= self._next_check:
                    self._reopen_if_moved()
                if self.max_bytes and self.backup_count > 0:
                    size = os.fstat(self._fd).st_size
                    if size and size + len(data) > self.max_bytes:
                        self._rotate()
                        self._fd = self._open()
                if self._torn:  # a line cut short by a full disk: ended here, so the next starts a line
                    self._write_all(b"\n")
                    self._torn = False
                if self._lost:
                    note = f"{utc_now()} car: {self._lost} lines of this log were lost: it could not be written\n"
                    self._write_all(note.encode())
                    self._lost = 0
                self._write_all(data)  # O_APPEND: never interleaved with another writer's line
            except OSError as exc:
                self._failed(exc, lines=data.count(b"\n"))  # the note counts lines, not writes

    def _write_all(self, data: bytes) -> None:
        """One write of `data`, as a rule; a short one (a disk that fills up) goes on with the rest, and
        one that fails after a part of it leaves the file mid-line: _torn, for the next write to end."""
        assert self._fd is not None
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except OSError:
                self._torn = self._torn or len(view) < len(data)
                raise
            view = view[written:]

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except OSError:
            return 0

    def rollover(self) -> None:
        """x.log becomes x.log.1 (the older backups move up one, the oldest goes); readers following
        the file see a new inode. With no backups kept, nothing happens."""
        if self.backup_count <= 0:
            return
        with self._lock:
            try:
                self._rotate()
                self._fd = self._open()
            except OSError as exc:
                self._failed(exc)

    def _rotate(self) -> None:
        self._close()
        for i in range(self.backup_count - 1, 0, -1):
            older = backup_path(self.path, i)
            if older.exists():
                os.replace(older, backup_path(self.path, i + 1))
        if self.path.exists():
            os.replace(self.path, backup_path(self.path, 1))
        self._torn = False  # that part of a line is the backup's last; the new file starts clean

    def _failed(self, exc: OSError, lines: int = 1) -> None:
        if not self._lost:
            try:
                sys.stderr.write(f"car: cannot write {self.path} ({exc.strerror}); its lines are dropped "
                                 f"until it can be written again\n")
                sys.stderr.flush()
            except (OSError, ValueError):  # no terminal left to tell
                pass
        self._lost += lines
        self._close()  # the next write opens it again: the file may have been made anew

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            self._close()
