"""The agent as a process: its own session, prompt on stdin from a file, lines out, ended whole."""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Deque, Iterator, List, Optional, Tuple, TypeVar, Union

from car.errors import AgentError

TOKEN_VAR = "CAR_RUN_TOKEN"
# A longer line reaches the reader in pieces. Codex's --json events carry a command's whole output
# (or a whole message) in one line: cut, an event cannot be read, and its exit code or a BLOCKED: is
# lost. Memory follows the line as read, not this bound.
MAX_LINE_BYTES = 8 * 1024 * 1024
READ_BYTES = 8 * 1024  # one read of the agent's output at most; what a reader holds when the outbox is full
PART_SECONDS = 1.0  # how often part of a line, still coming, tells the loop the agent is not idle
SWEEP_GRACE_SECONDS = 1.0  # between the sweep's SIGTERM and its SIGKILL
# Lines read but not yet logged. At the bound the reader waits, the pipe fills, and the agent waits on
# its writes: an agent printing faster than car logs (`yes`) is slowed to car's pace, memory stays
# bounded, and a kill or a timeout never waits behind a backlog. 10,000 lines are logged in ~0.2 s.
MAX_QUEUED_LINES = 10_000
MAX_QUEUED_CHARS = 32 * 1024 * 1024  # a few lines of Codex events can be megabytes each
T = TypeVar("T")


class Event:
    """Non-line items the reader queue carries."""

    EOF = "eof"          # stdout closed
    EXITED = "exited"    # the leader process ended
    INTERRUPT = "interrupt"  # someone asked to end the run (kill, shutdown)
    PART = "part"        # part of a line came (a progress bar redrawn with \r): not idle


def resolve_binary(binary: str, cwd: Path) -> str:
    """The agent's executable as an absolute path, or AgentError naming the config key to change."""
    fix = "set codex.binary in the repo's .codex-autorunner/config.yml to the agent's executable"
    if not binary.strip():
        raise AgentError(f"codex.binary is empty; {fix}")
    if os.sep in binary or (os.altsep and os.altsep in binary):
        path = Path(binary) if Path(binary).is_absolute() else cwd / binary
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
        problem = ("is a directory" if path.is_dir() else "is not executable" if path.is_file()
                   else "does not exist")
        raise AgentError(f"agent binary {path} {problem}; {fix}")
    # a relative PATH entry ("." or an empty one) names the directory the agent runs in, as it would
    # for a shell there; left to shutil.which it means car's own CWD and gives back a relative path
    # that the agent's spawn (cwd=the repo) would look up again somewhere else
    search = os.environ.get("PATH", os.defpath)
    found = shutil.which(binary, path=os.pathsep.join(str(cwd / entry) for entry in search.split(os.pathsep)))
    if found:
        return found
    note = "; codex.binary is the program alone, its arguments go in codex.args" if " " in binary else ""
    raise AgentError(f"agent binary '{binary}' not found on PATH{note}; install it or {fix}")


class Outbox:
    """What the agent's threads tell the loop: its lines in order, bounded (the reader waits while
    the loop is behind), and events (exited, interrupt) that go ahead of any lines still waiting."""

    def __init__(self, max_lines: int = MAX_QUEUED_LINES, max_chars: int = MAX_QUEUED_CHARS) -> None:
        self._cond = threading.Condition()
        self._lines: Deque[Union[str, tuple]] = collections.deque()
        self._events: Deque[tuple] = collections.deque()
        self._chars = 0
        self._max_lines, self._max_chars = max_lines, max_chars

    def put_line(self, item: Union[str, tuple]) -> None:
        """A line (or EOF, after the last one); waits while the loop is behind by the bound."""
        with self._cond:
            while self._lines and (len(self._lines) >= self._max_lines or self._chars >= self._max_chars):
                self._cond.wait()
            self._lines.append(item)
            self._chars += len(item) if isinstance(item, str) else 0
            self._cond.notify_all()

    def put_event(self, item: tuple) -> None:
        """An event, delivered before the lines still waiting; never waits."""
        with self._cond:
            self._events.append(item)
            self._cond.notify_all()

    def get(self, timeout: Optional[float] = None) -> Union[str, tuple]:
        """The next event, else the next line; queue.Empty after `timeout` seconds with neither."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._events or self._lines, timeout):
                raise queue.Empty
            if self._events:
                return self._events.popleft()
            item = self._lines.popleft()
            self._chars -= len(item) if isinstance(item, str) else 0
            self._cond.notify_all()  # the reader may be waiting for room
            return item


class AgentProcess:
    """One run of the agent. Lines, exit and interrupts arrive in one outbox (no polling)."""

    def __init__(self, popen: subprocess.Popen, token: str) -> None:
        self.popen, self.token = popen, token
        self.items = Outbox()
        self._threads = [threading.Thread(target=self._read, daemon=True, name=f"agent-out-{popen.pid}"),
                         threading.Thread(target=self._wait, daemon=True, name=f"agent-wait-{popen.pid}")]
        for t in self._threads:
            t.start()

    @classmethod
    def spawn(cls, argv: List[str], cwd: Path, prompt_path: Path, token: Optional[str] = None) -> AgentProcess:
        token = token or new_token()
        env = dict(os.environ, **{TOKEN_VAR: token})
        with prompt_path.open("rb") as stdin:  # a file: no argv limit, and EOF so exec never waits
            try:
                popen = subprocess.Popen(argv, cwd=cwd, stdin=stdin, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, start_new_session=True, env=env)
            except OSError as exc:
                raise AgentError(f"cannot start agent {argv[0]}: {exc.strerror}; check codex.binary "
                                 f"in the repo's .codex-autorunner/config.yml") from exc
        return cls(popen, token)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        """Lines as they come, and PART, at most once a second, while only part of one comes: an agent
        that redraws a progress bar with \r alone is working, and its line may take an hour to end."""
        stdout = self.popen.stdout
        assert stdout is not None
        part: List[bytes] = []  # the line so far, in the pieces read
        size, told = 0, 0.0
        for chunk in iter(lambda: stdout.read1(READ_BYTES), b""):
            pieces = chunk.split(b"\n")
            if len(pieces) > 1:
                self._put(b"".join([*part, pieces[0]]))
                for raw in pieces[1:-1]:
                    self._put(raw)
                part, size = [], 0
            elif time.monotonic() - told >= PART_SECONDS:
                self.items.put_event((Event.PART,))
                told = time.monotonic()
            if pieces[-1]:
                part.append(pieces[-1])
                size += len(pieces[-1])
                if size >= MAX_LINE_BYTES:  # a line this long reaches the loop in pieces
                    line = b"".join(part)
                    self._put(line[:MAX_LINE_BYTES])
                    rest = line[MAX_LINE_BYTES:]
                    part, size = ([rest] if rest else []), len(rest)
        if part:
            self._put(b"".join(part))
        stdout.close()
        self.items.put_line((Event.EOF,))

    def _put(self, raw: bytes) -> None:
        """One line (a longer one in pieces of MAX_LINE_BYTES), without its line end."""
        for at in range(0, max(len(raw), 1), MAX_LINE_BYTES):
            self.items.put_line(raw[at:at + MAX_LINE_BYTES].decode("utf-8", errors="replace").rstrip("\r"))

    def _wait(self) -> None:
        self.popen.wait()
        self.items.put_event((Event.EXITED,))

    def interrupt(self) -> None:
        """Ask whoever reads the outbox to end the run; safe from any thread."""
        self.items.put_event((Event.INTERRUPT,))

    def exit_code(self) -> Optional[int]:
        code = self.popen.poll()
        if code is not None and code < 0:
            return 128 - code  # killed by a signal: report it as a shell would
        return code

    def signal(self, sig: int) -> None:
        """Send `sig` to the agent's group while its leader runs (ending_steps says which, when)."""
        if self.popen.poll() is None:
            signal_group(self.popen.pid, sig)

    def clean_up(self) -> None:
        """End whatever of the run is left (the leader has exited or is being killed)."""
        sweep_token(self.token)  # SIGTERM first: see sweep_token
        signal_group(self.popen.pid, signal.SIGKILL)  # members that dropped the marker
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        sweep_token(self.token, grace_seconds=0)


def ending_steps(now: float, grace_seconds: float) -> List[Tuple[float, Optional[int]]]:
    """How a run is ended, as (when, signal) from `now`: SIGINT (Codex ends its turn and tools
    cleanly), SIGTERM half the grace later, then (None) clean_up: SIGKILL and the sweep by marker.
    The loop takes the steps as their times come and logs the agent's lines in between."""
    return [(now, signal.SIGINT), (now + grace_seconds / 2, signal.SIGTERM), (now + grace_seconds, None)]


def new_token() -> str:
    """A run's marker, put in its agent's environment (what secrets.token_hex does, without its imports)."""
    return os.urandom(12).hex()


def signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def pids_with_token(token: str) -> List[int]:
    """Processes whose environment carries the run's marker (Linux /proc; elsewhere none)."""
    if not token or not sys.platform.startswith("linux"):
        return []
    needle, me = f"{TOKEN_VAR}={token}".encode(), os.getpid()
    return [pid for pid, env in _proc_files("environ") if pid != me and needle in env.split(b"\0")]


def _proc_files(name: str) -> Iterator[Tuple[int, bytes]]:
    """(pid, the bytes of /proc/<pid>/<name>) for every process whose file can be read."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/{name}", "rb") as fh:
                data = fh.read()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        yield int(entry.name), data


def sweep_token(token: str, grace_seconds: float = SWEEP_GRACE_SECONDS, rounds: int = 3) -> None:
    """End every process of the run, including tool commands in sessions of their own:
    SIGTERM, then SIGKILL what is left after `grace_seconds`."""
    # SIGTERM first lets a shell run its EXIT trap. Codex's shell snapshot (`bash -lc` sourcing
    # ~/.bashrc) can outlive a short run; SIGKILLed inside `pyenv rehash`, it left pyenv's lock
    # file behind, and every later login shell on the machine then waited 60 s for it.
    pids = pids_with_token(token)
    if pids and grace_seconds > 0:
        _signal_pids(pids, signal.SIGTERM)
        # a /proc scan costs ~1 ms and most processes go at once; a zombie's environ cannot be read: gone for us
        pids = wait_gone(lambda: pids_with_token(token), grace_seconds, 0.01)
    for _ in range(rounds):
        if not pids:
            return
        _signal_pids(pids, signal.SIGKILL)
        time.sleep(0.05)  # let the kernel reap before looking again
        pids = pids_with_token(token)


def wait_gone(look: Callable[[], T], seconds: float, interval: float = 0.05) -> T:
    """Look every `interval` until `look()` finds nothing alive or `seconds` pass; what it found last.

    For another process's processes: car holds no handle to wait on, so it looks again."""
    deadline = time.monotonic() + seconds
    left = look()
    while left and time.monotonic() < deadline:
        time.sleep(interval)
        left = look()
    return left


def _signal_pids(pids: List[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def end_run_elsewhere(pgid: Optional[int], token: Optional[str], grace_seconds: float) -> None:
    """End a run owned by another process (`car kill`): group signals, then the sweep."""
    if pgid:
        for sig in (signal.SIGINT, signal.SIGTERM):
            if not signal_group(pgid, sig):
                break
            wait_gone(lambda: _group_alive(pgid), grace_seconds / 2)
        signal_group(pgid, signal.SIGKILL)
    if token:
        sweep_token(token)


def group_members(pgid: int) -> List[int]:
    """The live processes of group `pgid`, zombies left out (Linux /proc; elsewhere none)."""
    if not sys.platform.startswith("linux"):
        return []
    found = []
    for pid, raw in _proc_files("stat"):
        fields = raw[raw.rindex(b")") + 2:].split()  # state, ppid, pgrp, ... (the name may hold ')')
        if fields[0] != b"Z" and int(fields[2]) == pgid:
            found.append(pid)
    return found


def _group_alive(pgid: int) -> bool:
    if sys.platform.startswith("linux"):
        # killpg(0) also counts zombies: an orphan's are reaped by init whenever it gets to them,
        # and by none at all under a pid 1 that does not reap; waiting on those waits out the grace
        return bool(group_members(pgid))
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
