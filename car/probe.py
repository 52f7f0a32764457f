"""Cheap reads of a repo's own files for the hub's list: stat first, re-read only what changed."""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set

from car.config import HubConfig, default_text, load_config
from car.docs import parse_todos
from car.errors import CarError
from car.layout import CAR_DIR, CONFIG_NAME
from car.lock import LockInfo, inspect_lock
from car.status import LockStatus

# A file changed this recently may change again within the same mtime tick and keep its size
# (ticking "[ ]" to "[x]" does): such a read is not trusted, so it is redone next time.
RACY_NS = 1_000_000_000
STATE_KEYS = ("status", "last_run_id", "last_exit_code", "last_run_started_at", "last_run_finished_at",
              "stop_reason")
CONFIG_REL, STATE_REL, LOCK_REL = f"{CAR_DIR}/{CONFIG_NAME}", f"{CAR_DIR}/state.json", f"{CAR_DIR}/lock"
TODO_REL = f"{CAR_DIR}/TODO.md"
# a stamp is [inode (atomic writes replace it), size, mtime_ns]
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)
_UNLOCKED = LockInfo(LockStatus.UNLOCKED)


@dataclass(frozen=True)
class RepoFiles:
    """What a repo's .codex-autorunner/ says right now."""

    initialized: bool
    lock_status: LockStatus = LockStatus.UNLOCKED
    lock_pid: Optional[int] = None
    run_status: Optional[str] = None  # state.json's status
    last_run_id: Optional[int] = None
    last_exit_code: Optional[int] = None
    last_run_started_at: Optional[str] = None
    last_run_finished_at: Optional[str] = None
    stop_reason: Optional[str] = None
    todo_done: int = 0
    todo_total: int = 0
    error: Optional[str] = None  # an unreadable config or state.json


NOT_INITIALIZED = RepoFiles(initialized=False)


class RepoProbe:
    """One repo's files, each re-read only when its stat changes; callers serialize access.

    A read is cached as [path relative to the repo, stamp, JSON-ready value]; export() hands the
    trusted ones to hub_state.json and the next process starts with them (seed), warm.
    """

    def __init__(self, root: str, seed: Optional[Dict[str, Any]] = None) -> None:
        self._prefix = root + "/"
        self._reads: Dict[str, List[Any]] = {}
        self._untrusted: Set[str] = set()
        self._parts: Any = None
        self._last: RepoFiles = NOT_INITIALIZED
        self.rereads = 0  # files actually read: a caller's hint that an export would differ
        if isinstance(seed, dict):  # from hub_state.json: anything odd in it is ignored
            self._reads = {k: v for k, v in seed.items() if _good_seed(k, v)}

    def read(self) -> RepoFiles:
        """The current facts; the very same object as last time when nothing changed."""
        now = time.time_ns()
        todo_path, error = self._cached("config", CONFIG_REL, now, _parse_config)
        if todo_path is None and error is None:
            self._parts, self._last = None, NOT_INITIALIZED
            return NOT_INITIALIZED
        state = self._cached("state", STATE_REL, now, _parse_state)
        lock = self._lock()
        todo = self._cached("todo", todo_path, now, _parse_todo) if todo_path else [0, 0]
        parts = (error, state, lock, todo)
        last = self._parts
        if last is not None and parts[0] is last[0] and parts[1] is last[1] and parts[2] is last[2] \
                and parts[3] is last[3]:
            return self._last
        values, state_error = state
        self._parts, self._last = parts, RepoFiles(True, lock.status, lock.pid, *values, todo[0], todo[1],
                                                   error or state_error)
        return self._last

    def export(self) -> Optional[Dict[str, Any]]:
        """The trusted reads, for hub_state.json (None if there are none)."""
        out = {k: v for k, v in self._reads.items() if k not in self._untrusted and v[1] is not None}
        return out or None

    def forget(self) -> None:
        """Drop the cache (after an init rewrote the files)."""
        self._reads.clear()

    def _lock(self) -> LockInfo:
        path = self._prefix + LOCK_REL
        try:
            os.stat(path)
        except _MISSING:
            return _UNLOCKED
        except OSError:
            return LockInfo(LockStatus.LOCKED_STALE)
        try:  # a lock is re-read every time: its owner may have died since
            return inspect_lock(Path(path))
        except OSError:  # there, but unreadable: nobody can prove they own it
            return LockInfo(LockStatus.LOCKED_STALE)

    def _cached(self, key: str, rel: str, now: int, parse: Callable[[str, Any], Any]) -> Any:
        path = rel if rel[:1] == "/" else self._prefix + rel
        read = self._reads.get(key)
        if read is not None and read[0] == rel and key not in self._untrusted:
            try:
                st = os.stat(path)
                stamp: Optional[List[int]] = [st.st_ino, st.st_size, st.st_mtime_ns]
            except OSError:
                stamp = None
            if stamp == read[1]:
                return read[2]
        self.rereads += 1
        try:
            fd = os.open(path, os.O_RDONLY)
        except _MISSING:
            stamp, data = None, None
        except OSError as exc:  # unreadable: reported, and tried again next time
            self._untrusted.add(key)
            return parse(path, exc)
        else:
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode):
                    stamp, data = [st.st_ino, st.st_size, st.st_mtime_ns], _read_all(fd, st.st_size)
                else:  # a directory in a file's place: no such file
                    stamp, data = None, None
            except OSError as exc:
                self._untrusted.add(key)
                return parse(path, exc)
            finally:
                os.close(fd)
        value = parse(path, data)
        self._reads[key] = [rel, stamp, value]
        if stamp is not None and stamp[2] >= now - RACY_NS and key != "config":
            self._untrusted.add(key)
        else:
            self._untrusted.discard(key)
        return value


def _parse_config(path: str, data: Any) -> List[Optional[str]]:
    """[TODO path (relative to the repo when inside it), error]; [None, None] without a config."""
    if isinstance(data, OSError):
        return [None, f"{path}: cannot read ({data.strerror})"]
    if data is None:
        return [None, None]
    if data.decode("utf-8", "replace") == default_text("repo"):
        return [TODO_REL, None]
    try:
        config = load_config(Path(path))
    except CarError as exc:
        return [None, str(exc)]
    if isinstance(config, HubConfig):
        return [None, f"{path} is a hub config (mode: hub), not a repo's"]
    todo = config.doc_path("todo")
    try:
        return [todo.relative_to(config.root).as_posix(), None]
    except ValueError:
        return [str(todo), None]


def _good_seed(key: str, read: Any) -> bool:
    """[path, [inode, size, mtime_ns], value] with the value's shape for `key`."""
    if key not in ("config", "state", "todo") or type(read) is not list or len(read) != 3:
        return False
    path, stamp, value = read
    if not (type(path) is str and type(stamp) is list and len(stamp) == 3 and type(value) is list
            and len(value) == 2):
        return False
    return key != "state" or (type(value[0]) is list and len(value[0]) == len(STATE_KEYS))


def _read_all(fd: int, size: int) -> bytes:
    """The whole file; asking for one byte more than its size ends a regular file in one read."""
    data = os.read(fd, size + 1)
    if len(data) <= size:
        return data
    chunks = [data]  # it grew since the fstat: read on to the end
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _parse_state(path: str, data: Any) -> List[Any]:
    """[[status, last_run_id, ...], error]."""
    if isinstance(data, OSError):
        return [[None] * len(STATE_KEYS), f"{path}: cannot read ({data.strerror})"]
    if data is None:
        return [[None] * len(STATE_KEYS), None]
    try:
        state = json.loads(data)
    except ValueError:
        state = None
    if not isinstance(state, dict):
        return [[None] * len(STATE_KEYS), f"{path}: not a JSON object; fix or delete it"]
    return [[state.get(k) for k in STATE_KEYS], None]


def _parse_todo(path: str, data: Any) -> List[int]:
    if not isinstance(data, bytes):
        return [0, 0]
    counts = parse_todos(data.decode("utf-8", "replace"))
    return [counts.done, counts.total]
