"""Status vocabularies and the one rule that derives a repo's status (DESIGN.md §4)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional


class RepoStatus(str, Enum):
    UNINITIALIZED = "uninitialized"
    INITIALIZING = "initializing"
    IDLE = "idle"
    RUNNING = "running"
    ERROR = "error"
    LOCKED = "locked"
    MISSING = "missing"
    INIT_ERROR = "init_error"


class LockStatus(str, Enum):
    UNLOCKED = "unlocked"
    LOCKED_ALIVE = "locked_alive"
    LOCKED_STALE = "locked_stale"


class RunStatus(str, Enum):
    """What state.json says about the engine itself."""

    IDLE = "idle"
    RUNNING = "running"
    ERROR = "error"


class StopReason(str, Enum):
    """Why the last loop ended."""

    TODO_DONE = "todo_done"
    STOP_AFTER_RUNS = "stop_after_runs"
    WALLCLOCK = "wallclock"
    NO_PROGRESS = "no_progress"
    BLOCKED = "blocked"
    AGENT_FAILED = "agent_failed"
    STOPPED = "stopped"
    KILLED = "killed"
    RUN_TIMEOUT = "run_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class RepoFacts:
    """Everything derive_status() needs, gathered by whoever asks."""

    exists: bool
    initialized: bool
    initializing: bool = False
    init_error: Optional[str] = None
    runner_active: bool = False
    lock: LockStatus = LockStatus.UNLOCKED
    last_state: Optional[str] = None


def derive_status(f: RepoFacts) -> RepoStatus:
    """First match wins; the order is DESIGN.md §4."""
    rules = [
        (not f.exists, RepoStatus.MISSING),
        (bool(f.init_error), RepoStatus.INIT_ERROR),
        (f.initializing, RepoStatus.INITIALIZING),
        (not f.initialized, RepoStatus.UNINITIALIZED),
        (f.runner_active, RepoStatus.RUNNING),
        (f.lock is not LockStatus.UNLOCKED, RepoStatus.LOCKED),
        (f.last_state == RunStatus.ERROR.value, RepoStatus.ERROR),
    ]
    return next((status for hit, status in rules if hit), RepoStatus.IDLE)
