"""The per-repo and per-hub PID lock: O_EXCL create, owner pid + start time, stale detection."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Set, Tuple

from car.errors import LockError
from car.files import write_atomic, write_json
from car.state import utc_now
from car.status import LockStatus

MAX_PID = 2 ** 22  # Linux's pid_max ceiling: a larger "pid" was never written by car
# the owner_tokens of the locks this process holds: a hub's loops share its pid, so a lock with this
# pid is alive only while one of them holds it (one its loop lost, when its directory moved away and
# back, would otherwise read as alive for as long as the hub lives)
_held: Set[str] = set()
_held_guard = threading.Lock()
LOCK_LOST = "the lock {path} was {how} while this loop ran; stopping so that two loops never run at once"


@dataclass(frozen=True)
class LockInfo:
    status: LockStatus
    pid: Optional[int] = None
    pid_started: Optional[str] = None
    started_at: Optional[str] = None
    agent_pgid: Optional[int] = None
    run_token: Optional[str] = None
    agent_started: Optional[str] = None  # the group leader's start time: see recovery.find_orphan
    owner_token: Optional[str] = None  # random per acquire_lock: tells this loop's lock from a later one
    made_in: Optional[str] = None  # set only when the lock was made in another directory (see _carried)
    copied: bool = False  # made_in still holds this very lock: this one is a copy, its run is made_in's


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
        raw: Optional[bytes] = path.read_bytes()
    except FileNotFoundError:
        return LockInfo(LockStatus.UNLOCKED)
    except OSError:
        raw = None
    return _judge(raw, path)


def _judge(raw: Optional[bytes], path: Path) -> LockInfo:
    """What the bytes of the lock file at `path` say (None: it could not be read)."""
    if raw is None:  # unreadable (a directory in its place): nobody can own it, so it reads as stale
        return LockInfo(LockStatus.LOCKED_STALE)
    try:
        data = json.loads(raw)
        pid = data["pid"]
    except (ValueError, KeyError, TypeError):  # not car's JSON (hand-edited): stale too
        return LockInfo(LockStatus.LOCKED_STALE)
    if type(pid) is not int or not 0 < pid <= MAX_PID:
        return LockInfo(LockStatus.LOCKED_STALE)
    alive = is_alive(pid, data.get("pid_started"))
    if alive and pid == os.getpid():
        with _held_guard:
            alive = data.get("owner_token") in _held
    pgid = data.get("agent_pgid")
    info = LockInfo(
        LockStatus.LOCKED_ALIVE if alive else LockStatus.LOCKED_STALE,
        pid=pid,
        pid_started=_text(data.get("pid_started")),
        started_at=_text(data.get("started_at")),
        # a group or marker car cannot have written is no group to signal or marker to sweep
        agent_pgid=pgid if type(pgid) is int and 1 < pgid <= MAX_PID else None,
        run_token=_text(data.get("run_token")),
        agent_started=_text(data.get("agent_started")),
        owner_token=_text(data.get("owner_token")),
    )
    made_in = _text(data.get("dir"))
    return _carried(info, made_in, path) if made_in is not None and os.path.isabs(made_in) else info


def _carried(info: LockInfo, made_in: str, path: Path) -> LockInfo:
    """`info` judged again if the lock was carried here from `made_in` (the repo was moved or copied).

    The owner of a carried lock may live on (a hub runs many repos in one process), so a live pid
    proves nothing here. The lock is alive only while its agent still runs, which means the repo was
    moved during a run (the agent moved with it). A copy of a lock that `made_in` still holds is
    that repo's: stale here, and its run is never ended from here."""
    try:
        if os.path.samestat(os.stat(made_in), os.stat(path.parent)):
            return info  # the same directory under another name (a symlink, a bind mount)
    except OSError:
        pass  # made_in is gone (the repo was moved)
    copied = info.owner_token is not None and _owner_token(Path(made_in) / path.name) == info.owner_token
    agent_runs = info.agent_pgid is not None and is_alive(info.agent_pgid, info.agent_started)
    alive = info.status is LockStatus.LOCKED_ALIVE and agent_runs and not copied
    return replace(info, status=LockStatus.LOCKED_ALIVE if alive else LockStatus.LOCKED_STALE,
                   made_in=made_in, copied=copied)


def _owner_token(path: Path) -> Optional[str]:
    """The owner_token of the lock file at `path`, None if there is none (read only: no judging)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return _text(data.get("owner_token")) if isinstance(data, dict) else None


def _text(value: object) -> Optional[str]:
    return value if isinstance(value, str) else None


def lock_held_message(path: Path, info: LockInfo) -> str:
    if info.status is LockStatus.LOCKED_STALE:
        if info.made_in is not None:
            who = f"was carried here from {info.made_in} (moved or copied), and no run of it is going here"
        else:
            who = f"is a stale lock left by {f'dead pid {info.pid}' if info.pid else 'an unreadable owner'}"
        return f"{path} {who}; run `car resume` (under a hub: Resume on its page) to clear it and continue"
    return (f"{path} is held by pid {info.pid} (running since {info.started_at}); "
            f"stop it with `car stop` or wait for it")


def lock_lost_message(path: Path, found: LockInfo) -> str:
    """What a loop says when the lock it held is no longer its own (`found` is the lock as it is now)."""
    if found.status is LockStatus.UNLOCKED:
        how = "removed" if path.parent.is_dir() else "taken away with its directory (moved or deleted)"
    else:
        how = f"taken over by pid {found.pid}" if found.pid else "replaced by a file car did not write"
    return LOCK_LOST.format(path=path, how=how)


def is_own_lock(info: LockInfo, owner_token: Optional[str] = None) -> bool:
    """The lock is held by this process and, given `owner_token`, is the one that acquire_lock made."""
    return (info.status is LockStatus.LOCKED_ALIVE and info.pid == os.getpid()
            and (owner_token is None or info.owner_token == owner_token))


def acquire_lock(path: Path) -> LockInfo:
    """Create the lock for this process or raise LockError naming the holder."""
    pid = os.getpid()
    body = {"pid": pid, "pid_started": process_start_time(pid), "started_at": utc_now(),
            "host": os.uname().nodename, "agent_pgid": None, "run_token": None, "agent_started": None,
            "owner_token": os.urandom(8).hex(), "dir": os.path.abspath(path.parent)}
    try:
        # whole or not at all: a lock seen empty, between its creation and its first write, would read
        # as stale, and a `car resume` at that moment would remove it
        write_atomic(path, json.dumps(body), durable=False, exclusive=True)
    except FileExistsError:
        info = inspect_lock(path)
        if info.status is LockStatus.UNLOCKED:  # vanished between the two calls
            return acquire_lock(path)
        raise LockError(lock_held_message(path, info)) from None
    except OSError as exc:  # a read-only .codex-autorunner/, or none (car never makes it here)
        raise LockError(f"{path}: cannot create the lock ({exc.strerror}); fix the permissions of "
                        f"{path.parent}, or run `car init` if it is missing") from exc
    with _held_guard:
        _held.add(body["owner_token"])
    return LockInfo(LockStatus.LOCKED_ALIVE, pid=pid, pid_started=body["pid_started"],
                    started_at=body["started_at"], owner_token=body["owner_token"])


def update_lock(path: Path, agent_pgid: Optional[int], run_token: Optional[str],
                owner_token: Optional[str] = None) -> bool:
    """Record the current agent's group and run marker, so `car kill` elsewhere can reach it; False,
    with nothing written, if the lock is gone or not this process's (`owner_token`: see is_own_lock).

    The leader's start time goes with them: if this process dies, the group id alone cannot
    prove, later, that a group of that id is still this run's (recovery.find_orphan)."""
    try:
        raw = path.read_bytes()
    except OSError:  # gone (removed by hand): made again here, it would hide that from a second loop
        return False
    if not is_own_lock(_judge(raw, path), owner_token):
        return False
    data = json.loads(raw)
    started = process_start_time(agent_pgid) if agent_pgid else None
    data.update(agent_pgid=agent_pgid, run_token=run_token,
                agent_started=started if started != "zombie" else None)
    # no car process removes a live lock, so only a hand-made change can slip in between the read and
    # this replace; the loop whose lock it overwrote then finds it at its next check and stops (Engine)
    write_json(path, data, durable=False)  # no fsync: a crash ends its owner, so the lock is stale anyway
    return True


def release_lock(path: Path, owner_token: Optional[str] = None) -> bool:
    """Remove the lock if it is this process's (see is_own_lock); a lock that is gone or another's
    is left as it is. True if it was removed. Either way this process holds that lock no more."""
    try:
        removed = _remove_if(path, lambda info: is_own_lock(info, owner_token))[1]
    except OSError as exc:  # a read-only .codex-autorunner/: the lock stays behind, stale; say so in one line
        raise LockError(f"{path}: cannot remove this process's lock ({exc.strerror}); fix the permissions of "
                        f"{path.parent}, then run `car resume` to clear it") from exc
    finally:
        with _held_guard:
            _held.discard(owner_token)  # type: ignore[arg-type]
    return removed


def clear_stale_lock(path: Path) -> bool:
    """Remove a stale lock (resume); a live one raises LockError and is left alone."""
    try:
        info, removed = _remove_if(path, lambda info: info.status is LockStatus.LOCKED_STALE)
    except OSError as exc:  # a directory in its place, or a read-only .codex-autorunner/
        raise LockError(f"{path}: cannot remove the stale lock ({exc.strerror}); remove it by hand") from exc
    if info.status is LockStatus.LOCKED_ALIVE:
        raise LockError(lock_held_message(path, info))
    return removed


def _remove_if(path: Path, wanted: Callable[[LockInfo], bool]) -> Tuple[LockInfo, bool]:
    """Unlink the lock file if `wanted` holds for what it says: (what it says, whether it was removed).

    Two removers may judge one file at once (two `car resume` on one stale lock): unlinking by name
    after the judgement could remove the lock the other has just made in its place. So the file
    judged is held open, which keeps its inode number from going to a new file; the name is unlinked
    only while it still names that inode; and removers flock the file in turn, so none unlinks it
    between another's check and unlink. Creators never wait: a new lock appears only where none is.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return LockInfo(LockStatus.UNLOCKED), False
    try:
        _flock(fd)
        info = _judge(_read_all(fd), path)
        if not wanted(info):
            return info, False
        try:
            same = os.path.samestat(os.stat(path), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if not same:  # another remover was first: judge what is there now
            return _remove_if(path, wanted)
        os.unlink(path)
        return info, True
    finally:
        os.close(fd)  # ends the flock


def _flock(fd: int) -> None:
    """Wait for our turn on this file among removers (each holds it for a few system calls)."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: the inode check alone
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:  # a filesystem without flock (some network mounts): the inode check alone
        pass


def _read_all(fd: int) -> Optional[bytes]:
    """The whole file, or None if it cannot be read (a directory in the lock's place)."""
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    except OSError:
        return None
