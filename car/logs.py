"""Run logs: one LogFile per repo, every line stamped, runs framed by markers and rolled over
between runs; and the readers of those logs."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple

from car.feed import Feed
from car.files import append_jsonl, parse_jsonl
from car.logfile import LogFile, backup_path, log_names
from car.state import RepoState, utc_now

if TYPE_CHECKING:
    from car.config import RepoConfig

_MARKER = re.compile(r"^(\S+) === run (\d+) (start|end \((.*)\)) ===$")
_RUN_LINE = re.compile(r"^\S+ \[run (\d+)\] ?(.*)$")
_CODE = re.compile(r"^code (-?\d+)$")


@dataclass(frozen=True)
class RunRecord:
    id: int
    started_at: Optional[str]
    finished_at: Optional[str] = None
    exit_code: Optional[int] = None
    end: Optional[str] = None

    def to_json(self) -> dict:
        return {"id": self.id, "started_at": self.started_at, "finished_at": self.finished_at,
                "exit_code": self.exit_code, "end": self.end}


class RunLog:
    """The log of one repo: every line timestamped, runs framed by markers."""

    def __init__(self, path: Path, max_bytes: int, backup_count: int, feed: Optional[Feed] = None) -> None:
        self.path, self.max_bytes = path, max_bytes
        self.feed = feed
        self._file = LogFile(path, backup_count)  # no max_bytes: a run is never split across files

    def write(self, text: str, run_id: Optional[int] = None) -> str:
        """Log `text`, one stamped line per line of it (render_lines); returns the lines, \\n-joined."""
        lines = render_lines(utc_now(), text, run_id)
        written = "\n".join(lines)
        self._file.write(written)  # one write: the lines of a message are never torn apart by another's
        if self.feed is not None:
            for line in lines:  # a Feed item is one log line, as the file's readers see them
                self.feed.publish(line)
        return written

    def start_run(self, run_id: int) -> None:
        # a run is read back from the path (`car log --run`, the next prompt's previous output): moved
        # or deleted since, the whole run would go to a file nobody reads, so look now, not in a second
        self._file.reopen_if_moved()
        self.write(f"=== run {run_id} start ===")

    def end_run(self, run_id: int, end: str) -> None:
        """Close a run (`end` is 'code N' or a word like 'interrupted'), then maybe roll over."""
        # a marker is one line or none: split, its pieces would match no marker and the run stay open
        self.write(f"=== run {run_id} end ({' '.join(end.splitlines())}) ===")
        self.rollover_if_full()

    def rollover_if_full(self) -> None:
        if self.max_bytes and self._file.size() >= self.max_bytes:
            self._file.rollover()

    def close(self) -> None:
        self._file.close()


def open_run_log(config: RepoConfig, feed: Optional[Feed] = None) -> RunLog:
    """The run log of a repo, as its config sets it."""
    return RunLog(config.log_path, config.log.max_bytes, config.log.backup_count, feed)


def log_files(path: Path, backup_count: int) -> List[Path]:
    """The log and its backups that exist as files, oldest first: a log.path that is a device (/dev/null,
    /dev/full) or a pipe holds no runs to read back, and reading it would never end."""
    return [p for p in log_names(path, backup_count) if p.is_file()]


def render_lines(at: str, text: str, run_id: Optional[int] = None) -> List[str]:
    """`text` as log lines stamped `at`, one per line of it; none after the first can pass for a marker."""
    prefix = f"{at} [run {run_id}] " if run_id is not None else f"{at} "
    if "\n" not in text and not text.endswith("\r"):  # nearly every line (an agent's): as it is, at no cost
        return [prefix + text]
    # Lines end at \n alone, as an agent's do (AgentProcess reads them so, the readers split so): an
    # inner \r stays in its line (the stream shows it as U+240D), a \r that ends one is half a \r\n, and
    # line breaks that end the text make no empty lines.
    first, *rest = [piece.rstrip("\r") for piece in text.rstrip("\r\n").split("\n")]
    # in a run each line carries [run N], as an agent's does: run_output() gives the text back. Outside
    # one a continuation is indented (as a folded mail header is): a marker has one space alone after
    # its stamp, so '=== run 3 start ===' on a line of its own cannot read as one
    more = prefix if run_id is not None else f"{at}   "
    return [prefix + first, *(more + line for line in rest)]


def split_lines(text: str) -> List[str]:
    """A log's lines as the writer wrote them, split on \\n alone: str.splitlines() also splits at the \\r,
    \\x0b, \\x85, \\u2028... an agent's line may hold, and what follows could pass for a run's marker."""
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def _lines(path: Path) -> Iterator[str]:
    with path.open("r", encoding="utf-8", errors="replace", newline="\n") as fh:  # not at \r: split_lines
        for line in fh:
            yield line.rstrip("\n")


def read_run(path: Path, backup_count: int, run_id: int) -> List[str]:
    """All lines of one run (markers included), searching the backups too."""
    start = f" === run {run_id} start ==="
    for file in reversed(log_files(path, backup_count)):
        out: List[str] = []
        inside = False
        for line in _lines(file):
            if line.endswith(start) and _MARKER.match(line):
                out, inside = [line], True
                continue
            if inside:
                out.append(line)
                m = _MARKER.match(line)
                if m and int(m.group(2)) == run_id and m.group(4) is not None:
                    inside = False
        if out:
            return out
    return []


def run_output(path: Path, backup_count: int, run_id: int) -> str:
    """The text of a run's output lines, without timestamps and markers."""
    out = []
    for line in read_run(path, backup_count, run_id):
        m = _RUN_LINE.match(line)
        if m and int(m.group(1)) == run_id:
            out.append(m.group(2))
    return "\n".join(out)


def list_runs(path: Path, backup_count: int) -> List[RunRecord]:
    """Run history from the markers of the log and its backups, oldest first."""
    runs: dict = {}
    for file in log_files(path, backup_count):
        for line in _lines(file):
            if " === run " not in line:
                continue
            m = _MARKER.match(line)
            if not m:
                continue
            at, run_id, end = m.group(1), int(m.group(2)), m.group(4)
            if end is None:
                runs[run_id] = RunRecord(run_id, at)
            else:
                code = _CODE.match(end)
                prev = runs.get(run_id, RunRecord(run_id, None))
                runs[run_id] = RunRecord(run_id, prev.started_at, at,
                                         int(code.group(1)) if code else None, end)
    return [runs[k] for k in sorted(runs)]


def run_ending(path: Path, backup_count: int, run_id: int) -> Tuple[bool, Optional[str]]:
    """(whether the log holds the run's end marker, the time of the run's last line or None)."""
    lines = read_run(path, backup_count, run_id)
    if not lines:
        return False, None
    m = _MARKER.match(lines[-1])
    return bool(m and m.group(4) is not None), lines[-1].split(" ", 1)[0]


def _read_back(path: Path, enough: Callable[[bytes], bool]) -> Tuple[bytes, bool]:
    """The end of a file, read backwards in chunks until `enough(data)` or the start; and whether
    it reached the start (else the data's first line may be cut)."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return b"", True
    with fh:
        pos = fh.seek(0, os.SEEK_END)
        data = b""
        while pos > 0 and not enough(data):
            # each step reads as much again as it holds: enough() looks at all of it each time, so a
            # fixed step made finding an early run quadratic in the log's size; doubling keeps the sum
            # of what it looks at under twice what is read. Reading past the point where enough() first
            # held changes no answer: it holds for any longer end too, and the callers read from the end
            step = min(pos, max(65536, len(data)))
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data  # only the new part is read; what follows it is in hand
    return data, pos == 0


def tail(path: Path, n: int) -> List[str]:
    """The last `n` lines of a file (a log, runs.jsonl), read from the end."""
    if n <= 0:
        return []
    data, _ = _read_back(path, lambda d: d.count(b"\n") > n)
    return split_lines(data.decode("utf-8", errors="replace"))[-n:]


def recent_runs(runs: Path) -> List[dict]:
    """The last records of runs.jsonl, newest first: read from its end, whatever its size."""
    return [r for r in reversed(parse_jsonl(tail(runs, 3))) if isinstance(r, dict)]


def record_run(runs: Path, state: RepoState, end_reason: Optional[str], usage: Optional[Dict[str, int]] = None,
               output: Optional[str] = None) -> None:
    """Append to runs.jsonl the record of the run `state` describes, as it ended."""
    append_jsonl(runs, {
        "id": state.last_run_id, "started_at": state.last_run_started_at, "finished_at": state.last_run_finished_at,
        "exit_code": state.last_exit_code, "end_reason": end_reason, "usage": usage, "output": output,
    })


def log_tail(path: Path, backup_count: int, n: int) -> List[str]:
    """The last `n` lines of a log, from its backups too: the log rolls over right after a run's end,
    which leaves the current file empty until the next run starts."""
    return _after_backups(path, backup_count, tail(path, n), n)


def _after_backups(path: Path, backup_count: int, lines: List[str], n: int) -> List[str]:
    """`lines` (the end of the current file) with, before them, as many of the backups' last lines as
    make `n`."""
    for backup in reversed(log_files(path, backup_count)):  # newest first, each read from its end
        if len(lines) >= n:
            break
        if backup != path:
            lines[:0] = tail(backup, n - len(lines))
    return lines


def _run_start(data: bytes, run_id: int, whole: bool) -> Optional[int]:
    """Where the newest start marker of run `run_id` begins in `data` (the end of a log; all of it if
    `whole`). Only a whole line counts: an agent's line may end as one does ('[run 2] === run 2 start ===')."""
    start = f" === run {run_id} start ===\n".encode()
    end = len(data)
    while (at := data.rfind(start, 0, end)) >= 0:
        head = data.rfind(b"\n", 0, at) + 1  # 0: the data's first line, cut unless `whole`
        if (head or whole) and _MARKER.match(data[head:at + len(start) - 1].decode("utf-8", errors="replace")):
            return head
        end = at
    return None


def last_run_output(path: Path, backup_count: int, run_id: int) -> str:
    """run_output() of the newest run, read from the end of the log: its cost does not grow
    with the log (a full read_run scan is the fallback when rotation moved the run)."""
    data, whole = _read_back(path, lambda d: _run_start(d, run_id, False) is not None)
    at = _run_start(data, run_id, whole)
    if at is None:
        return run_output(path, backup_count, run_id)
    lines = split_lines(data[at:].decode("utf-8", errors="replace"))
    out = []
    for line in lines:
        m = _RUN_LINE.match(line)
        if m and int(m.group(1)) == run_id:
            out.append(m.group(2))
    return "\n".join(out)


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

    def tail(self, n: int, backup_count: int = 0) -> List[str]:
        """The last `n` complete lines before the marked position; when the file holds fewer (it
        rolls over right after a run's end), the backups' last lines come first."""
        return _after_backups(self.path, backup_count, self._tail_of_file(n), n)

    def _tail_of_file(self, n: int) -> List[str]:
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
                st = os.stat(self.path)
            except FileNotFoundError:
                return out  # mid-rotation: the new file appears in a moment
            if st.st_ino == self._ino:
                if st.st_size >= self._pos:
                    return out
                self._restart(out)  # truncated in place: what it holds now was written since
                continue
            self.close()  # the old file is read to its end
            self._flush(out)
            self._read_newer_backups(out)
            self._ino, self._pos = None, 0  # go on with the new file from 0

    def _open(self, out: List[str]) -> bool:
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return False
        ino = os.fstat(fh.fileno()).st_ino
        if self._ino is not None and ino != self._ino:  # rotated since the mark
            self._read_newer_backups(out, rest_of_old=True)
            self._ino, self._pos = None, 0
        if self._ino is None:
            self._ino, self._pos = ino, 0
        if os.fstat(fh.fileno()).st_size < self._pos:
            self._pos = 0  # truncated
        fh.seek(self._pos)
        self._fh = fh
        return True

    def _restart(self, out: List[str]) -> None:
        """Read the open file again from 0: it was truncated in place while open (_open sees one truncated before)."""
        # logrotate's copytruncate or `: > x.log` keeps the inode: read on from our offset, the lines
        # written since up to it are lost and the one across it torn. A part of a line read before the
        # truncation is delivered as it is, so that the first line written after starts a line of its own
        self._flush(out)
        self._pos = 0
        self._fh.seek(0)

    def _read_newer_backups(self, out: List[str], rest_of_old: bool = False) -> None:
        """The file we read (self._ino) was rotated away, maybe more than once since: deliver what
        the backups newer than it hold (and, with rest_of_old, its own rest), oldest first."""
        backups: List[Tuple[Path, int]] = []
        while True:  # x.log.1 is the newest backup; however many the writer keeps
            backup = backup_path(self.path, len(backups) + 1)
            try:
                backups.append((backup, os.stat(backup).st_ino))
            except FileNotFoundError:
                break
        at = next((i for i, (_, ino) in enumerate(backups) if ino == self._ino), None)
        reads = [(path, 0) for path, _ in backups[:at]]  # all of them if ours is gone too
        if rest_of_old and at is not None:
            reads.append((backups[at][0], self._pos))
        for path, start in reversed(reads):
            try:
                with open(path, "rb") as fh:
                    fh.seek(start)
                    self._take(fh.read(), out)
            except FileNotFoundError:  # rotated out while we read: gone for everyone
                pass
            self._flush(out)

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


def follow(path: Path, stop: threading.Event, poll_seconds: float = 0.25) -> Iterator[str]:
    """New lines as another process appends them, across rotation, until `stop` is set.

    Polls the file: the writer may be another process, so no in-memory signal reaches us.
    """
    cursor = FileCursor(path)
    cursor.mark(cursor.position())  # from the end: what was there before was printed already
    try:
        while not stop.is_set():
            lines = cursor.read_new()
            yield from lines
            if not lines:
                stop.wait(poll_seconds)
    finally:
        cursor.close()
