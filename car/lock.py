"""The per-repo and per-hub PID lock: O_EXCL create, owner pid + start time, stale detection."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from car.errors import LockError
from car.files import write_json
from car.state import utc_now
from car.status import LockStatus

MAX_PID = 2 ** 22  # Linux's pid_max ceiling: a larger "pid" was never written by car


@dataclass(frozen=True)
class LockInfo:
    status: LockStatus
    pid: Optional[int] = None
    pid_started: Optional[str] = None
    started_at: Optional[str] = None
    agent_pgid: Optional[int] = None
    run_token: Optional[str] = None
    agent_started: Optional[str] = None  # the group leader's start time: see recovery.find_orphan


def process_start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux); None where /proc is absent."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: fields start after the last ')'
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[19] if fields[0] != "Z" else "zombie"


def is_alive(pid: int, pid_started: Optional[str] = None) -> bool:
    """True if `pid` runs and is the same process that wrote `pid_started`."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = process_start_time(pid)
    if started == "zombie":
        return False
    return pid_started is None or started is None or started == pid_started


def inspect_lock(path: Path) -> LockInfo:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        pid = data["pid"]
    except FileNotFoundError:
        return LockInfo(LockStatus.UNLOCKED)
    except (OSError, ValueError, KeyError, TypeError):
        # unreadable, half-written or hand-edited: nobody can own it, so it reads as stale
        return LockInfo(LockStatus.LOCKED_STALE)
    if type(pid) is not int or not 0 < pid <= MAX_PID:
        return LockInfo(LockStatus.LOCKED_STALE)
    alive = is_alive(pid, data.get("pid_started"))
    pgid = data.get("agent_pgid")
    return LockInfo(
        LockStatus.LOCKED_ALIVE if alive else LockStatus.LOCKED_STALE,
        pid=pid,
        pid_started=_text(data.get("pid_started")),
        started_at=_text(data.get("started_at")),
        # a group or marker car cannot have written is no group to signal or marker to sweep
        agent_pgid=pgid if type(pgid) is int and 1 < pgid <= MAX_PID else None,
        run_token=_text(data.get("run_token")),
        agent_started=_text(data.get("agent_started")),
    )


def _text(value: object) -> Optional[str]:
    return value if isinstance(value, str) else None


def lock_held_message(path: Path, info: LockInfo) -> str:
    if info.status is LockStatus.LOCKED_STALE:
        who = f"dead pid {info.pid}" if info.pid else "an unreadable owner"
        return (f"{path} is a stale lock left by {who}; "
                f"run `car resume` (under a hub: Resume on its page) to clear it and continue")
    return (f"{path} is held by pid {info.pid} (running since {info.started_at}); "
            f"stop it with `car stop` or wait for it")


def acquire_lock(path: Path) -> LockInfo:
    """Create the lock for this process or raise LockError naming the holder."""
    pid = os.getpid()
    body = {"pid": pid, "pid_started": process_start_time(pid), "started_at": utc_now(),
            "host": os.uname().nodename, "agent_pgid": None, "run_token": None, "agent_started": None}
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        info = inspect_lock(path)
        if info.status is LockStatus.UNLOCKED:  # vanished between the two calls
            return acquire_lock(path)
        raise LockError(lock_held_message(path, info)) from None
    except OSError as exc:  # a read-only .codex-autorunner/, or none (car never makes it here)
        raise LockError(f"{path}: cannot create the lock ({exc.strerror}); fix the permissions of "
                        f"{path.parent}, or run `car init` if it is missing") from exc
    with os.fdopen(fd, "w") as fh:
        json.dump(body, fh)
    return inspect_lock(path)


def update_lock(path: Path, agent_pgid: Optional[int], run_token: Optional[str]) -> None:
    """Record the current agent's group and run marker, so `car kill` elsewhere can reach it.

    The leader's start time goes with them: if this process dies, the group id alone cannot
    prove, later, that a group of that id is still this run's (recovery.find_orphan)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("pid") != os.getpid():
        return
    started = process_start_time(agent_pgid) if agent_pgid else None
    data.update(agent_pgid=agent_pgid, run_token=run_token,
                agent_started=started if started != "zombie" else None)
    write_json(path, data, durable=False)  # no fsync: a crash ends its owner, so the lock is stale anyway


def release_lock(path: Path) -> None:
    """Remove the lock only if this process owns it."""
    info = inspect_lock(path)
    if info.pid == os.getpid():
        path.unlink(missing_ok=True)


def clear_stale_lock(path: Path) -> bool:
    """Remove a stale lock (resume); a live one raises LockError and is left alone."""
    info = inspect_lock(path)
    if info.status is LockStatus.UNLOCKED:
        return False
    if info.status is LockStatus.LOCKED_ALIVE:
        raise LockError(lock_held_message(path, info))
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:  # a directory in its place, or a read-only .codex-autorunner/
        raise LockError(f"{path}: cannot remove the stale lock ({exc.strerror}); remove it by hand") from exc
    return True
