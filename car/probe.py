"""Cheap reads of a repo's own files for the hub's list: stat first, re-read only what changed."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any, Callable, List, NamedTuple, Optional

from car.config import DocsConfig, HubConfig, default_text, load_config, unreadable_config
from car.docs import parse_todos
from car.errors import CarError
from car.files import decode_doc, read_error
from car.layout import CAR_DIR, CONFIG_NAME, LOCK_NAME, STATE_NAME
from car.lock import LockInfo, inspect_lock
from car.state import state_problem
from car.status import LockStatus

# A file changed this recently may change again within the same mtime tick and keep its size
# (ticking "[ ]" to "[x]" does): such a read is not trusted, so it is redone next time.
RACY_NS = 1_000_000_000
STATE_KEYS = ("status", "last_run_id", "last_exit_code", "last_run_started_at", "last_run_finished_at",
              "stop_reason")
# the repo's files as strings relative to its root: os.path on str is much cheaper than pathlib here
CONFIG_REL, STATE_REL, LOCK_REL = (f"{CAR_DIR}/{name}" for name in (CONFIG_NAME, STATE_NAME, LOCK_NAME))
TODO_REL = DocsConfig().todo  # where an untouched default config puts it
# A cached read is a list, in the very form hub_cache.bin stores it: [inode, size, mtime_ns, *value].
# The inode catches atomic writes (a new file), size and mtime_ns edits in place. A file that is not
# there has inode None; a read not to be trusted has inode UNTRUSTED, which no stat matches.
UNTRUSTED = -1
CONFIG_LEN = 5  # + [TODO path (relative to the repo when inside it) or None, error]
STATE_LEN = 4 + len(STATE_KEYS)  # + [*STATE_KEYS values, error]
TODO_LEN = 7  # + [done, total, error, the TODO path it was read from]
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)
_UNLOCKED = LockInfo(LockStatus.UNLOCKED)
_NO_TODO = (None, 0, 0, 0, 0, None, None)  # no TODO file to read: 0 of 0 done


class RepoFiles(NamedTuple):
    """What a repo's .codex-autorunner/ says right now (a NamedTuple: a scan makes one per repo)."""

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
    error: Optional[str] = None  # an unreadable config, state.json or TODO


NOT_INITIALIZED = RepoFiles(initialized=False)


class RepoProbe:
    """One repo's files, each re-read only when its stat changes; callers serialize access.

    export() hands the trusted reads to hub_cache.bin and the next process starts with them
    (seed), warm: then an unchanged repo costs four stats and no read.
    """

    __slots__ = ("_config", "_config_path", "_last", "_lock_path", "_parts", "_prefix", "_state", "_state_path",
                 "_todo", "rereads")

    def __init__(self, root: str, seed: Any = None) -> None:
        prefix = self._prefix = root + "/"
        self._config_path, self._state_path = prefix + CONFIG_REL, prefix + STATE_REL
        self._lock_path = prefix + LOCK_REL
        self._config: Optional[List[Any]] = None
        self._state: Optional[List[Any]] = None
        self._todo: Optional[List[Any]] = None
        self._parts: Any = None
        self._last: RepoFiles = NOT_INITIALIZED
        self.rereads = 0  # files actually read: a caller's hint that an export would differ
        if type(seed) is list and len(seed) == 3:  # from hub_cache.bin: anything odd in it is ignored
            config, state, todo = seed
            if _good_read(config, CONFIG_LEN) and (config[3] is None or type(config[3]) is str):
                self._config = config
                self._state = state if _good_read(state, STATE_LEN) else None
                self._todo = todo if _good_read(todo, TODO_LEN) else None

    def read(self) -> RepoFiles:
        """The current facts; the very same object as last time when nothing changed."""
        config = self._config
        if config is None or not _unchanged(config, self._config_path):
            config = self._config = self._reread(self._config_path, _parse_config, racy_ok=True)
        todo_rel, error = config[3], config[4]
        if todo_rel is None and error is None:
            self._parts, self._last = None, NOT_INITIALIZED
            return NOT_INITIALIZED
        state = self._state
        if state is None or not _unchanged(state, self._state_path):
            state = self._state = self._reread(self._state_path, _parse_state)
        lock = self._lock()
        if todo_rel is None:
            todo = _NO_TODO
        else:
            todo, path = self._todo, todo_rel if todo_rel[:1] == "/" else self._prefix + todo_rel
            if todo is None or todo[6] != todo_rel or not _unchanged(todo, path):
                todo = self._todo = self._reread(path, _parse_todo, todo_rel)
        last = self._parts
        if last is not None and config is last[0] and state is last[1] and lock is last[2] and todo is last[3]:
            return self._last
        self._parts = (config, state, lock, todo)
        self._last = RepoFiles(True, lock.status, lock.pid, state[3], state[4], state[5], state[6], state[7],
                               state[8], todo[3], todo[4], error or state[9] or todo[5])
        return self._last

    def export(self) -> Optional[List[Any]]:
        """The trusted reads, for hub_cache.bin (None if there are none)."""
        config = self._config
        if config is None or not _trusted(config):
            return None
        state, todo = self._state, self._todo
        return [config, state if state is not None and _trusted(state) else None,
                todo if todo is not None and _trusted(todo) else None]

    def stamp(self) -> Optional[List[int]]:
        """The stats of this repo's files behind the last read() (see stamp_repos), or None when it
        cannot vouch for them: a read not trusted, a lock seen, no TODO."""
        parts = self._parts
        if parts is None or parts[2] is not _UNLOCKED or parts[3] is _NO_TODO:
            return None
        config, state, _, todo = parts
        if not (_trusted(config) and _trusted(state) and _trusted(todo)):
            return None
        return [*config[:3], *state[:3], *todo[:3]]

    @property
    def todo_rel(self) -> Optional[str]:
        """The TODO path as its config names it (relative to the repo when inside it), as last read."""
        return None if self._config is None else self._config[3]

    def forget(self) -> None:
        """Drop the cache (after an init rewrote the files)."""
        self._config = self._state = self._todo = None

    def _lock(self) -> LockInfo:
        path = self._lock_path
        try:
            os.stat(path)
        except _MISSING:
            return _UNLOCKED
        except OSError:  # its directory cannot be searched: no lock can be seen, and the config read
            return _UNLOCKED  # fails the same way, so the repo is listed as the error it is
        try:  # a lock is re-read every time: its owner may have died since
            return inspect_lock(Path(path))
        except OSError:  # there, but unreadable: nobody can prove they own it
            return LockInfo(LockStatus.LOCKED_STALE)

    def _reread(self, path: str, parse: Callable[[str, Any], List[Any]], *extra: Any,
                racy_ok: bool = False) -> List[Any]:
        """Read and parse the file into a read, `extra` at its end; UNTRUSTED if unreadable, or
        changed within RACY_NS (unless racy_ok)."""
        self.rereads += 1
        try:
            fd = os.open(path, os.O_RDONLY)
        except _MISSING:
            return [None, 0, 0, *parse(path, None), *extra]
        except OSError as exc:  # unreadable: reported, and tried again next time
            return [UNTRUSTED, 0, 0, *parse(path, exc), *extra]
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # a directory in a file's place: no such file
                return [None, 0, 0, *parse(path, None), *extra]
            data = _read_all(fd, st.st_size)
        except OSError as exc:
            return [UNTRUSTED, 0, 0, *parse(path, exc), *extra]
        finally:
            os.close(fd)
        racy = not racy_ok and st.st_mtime_ns >= time.time_ns() - RACY_NS
        return [UNTRUSTED if racy else st.st_ino, st.st_size, st.st_mtime_ns, *parse(path, data), *extra]


def stamp_repos(roots: List[str], todo_rels: List[str]) -> Optional[List[int]]:
    """For each repo: inode, size and mtime_ns of its config, state.json and TODO, in one flat
    list, as RepoProbe.stamp() gives them; None if a file is missing or a repo holds a lock.

    The same four stats a probe makes, without a probe: equal to the stamps stored when the listing
    was last built, they prove that listing still holds (hub_cache.bin's memo)."""
    stamps: List[int] = []
    add, stat = stamps.extend, os.stat
    for root, todo_rel in zip(roots, todo_rels):
        prefix = root + "/"
        try:
            config, state = stat(prefix + CONFIG_REL), stat(prefix + STATE_REL)
            todo = stat(todo_rel if todo_rel[:1] == "/" else prefix + todo_rel)
        except OSError:
            return None
        try:
            stat(prefix + LOCK_REL)
        except _MISSING:
            pass
        except OSError:
            return None
        else:  # a lock: a run may change anything, so everything is read
            return None
        add((config.st_ino, config.st_size, config.st_mtime_ns, state.st_ino, state.st_size, state.st_mtime_ns,
             todo.st_ino, todo.st_size, todo.st_mtime_ns))
    return stamps


def _unchanged(read: List[Any], path: str) -> bool:
    """The file is as it was when `read` was made (or is still not there)."""
    try:
        st = os.stat(path)
    except OSError:
        return read[0] is None
    return st.st_mtime_ns == read[2] and st.st_size == read[1] and st.st_ino == read[0]


def _trusted(read: List[Any]) -> bool:
    return read[0] is not None and read[0] != UNTRUSTED


def _good_read(read: Any, length: int) -> bool:
    """A seed's read: a list of the right length that names a file (an odd stamp just never matches)."""
    return type(read) is list and len(read) == length and read[0] is not None


def _parse_config(path: str, data: Any) -> List[Optional[str]]:
    """[TODO path (relative to the repo when inside it), error]; [None, None] without a config."""
    if isinstance(data, OSError):
        return [None, str(unreadable_config(Path(path), data))]
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
    """[*STATE_KEYS values, error]."""
    if isinstance(data, OSError):
        return [*(None for _ in STATE_KEYS), f"{path}: cannot read ({data.strerror}); fix its permissions or delete it"]
    if data is None:
        return [*(None for _ in STATE_KEYS), None]
    try:
        state = json.loads(data)
    except ValueError:
        state = None
    problem = state_problem(state) if state is not None else "not valid JSON"
    if problem:
        return [*(None for _ in STATE_KEYS), f"{path}: {problem}; fix or delete it"]
    return [*(state.get(k) for k in STATE_KEYS), None]


def _parse_todo(path: str, data: Any) -> List[Any]:
    """[done, total, error]: a TODO that a run would refuse (unreadable, UTF-16) is the repo's error."""
    if isinstance(data, OSError):
        return [0, 0, str(read_error(Path(path), data))]
    if data is None:
        return [0, 0, None]  # no TODO yet: nothing to do, which a run says itself
    try:
        counts = parse_todos(decode_doc(data, Path(path)))  # decoded as every doc read decodes it
    except CarError as exc:
        return [0, 0, str(exc)]
    return [counts.done, counts.total, None]
