"""state.json: the facts of the last run, always written atomically."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from car.errors import StateError
from car.files import read_json, write_error, write_json
from car.status import RunStatus


def utc_now() -> str:
    """ISO-8601 UTC with milliseconds, the one time format in state and logs."""
    ms = time.time_ns() // 1_000_000  # time, not datetime: one import less at every start
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(ms // 1000))}.{ms % 1000:03d}Z"


@dataclass
class RepoState:
    status: str = RunStatus.IDLE.value
    last_run_id: Optional[int] = None
    last_exit_code: Optional[int] = None
    last_run_started_at: Optional[str] = None
    last_run_finished_at: Optional[str] = None
    runner_pid: Optional[int] = None
    stop_reason: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name for f in dataclasses.fields(RepoState)}
_COUNTS = ("last_run_id", "last_exit_code", "runner_pid")  # whole numbers (JSON's 1.5 or 1e400 are not)
_TEXTS = ("status", "last_run_started_at", "last_run_finished_at", "stop_reason")


def load_state(path: Path) -> RepoState:
    """A missing state.json is a fresh repo; a broken one is a StateError (left untouched)."""
    if not path.exists():
        return RepoState()
    try:
        data = read_json(path)
    except Exception as exc:
        raise StateError(str(exc)) from exc
    problem = state_problem(data)
    if problem:
        raise StateError(f"{path}: {problem}; fix or delete the file")
    return RepoState(**{k: v for k, v in data.items() if k in _FIELDS})


def state_problem(data: Any) -> Optional[str]:
    """What makes parsed state.json data unusable, or None."""
    if not isinstance(data, dict):
        return "expected a JSON object"
    for key in _COUNTS:
        value = data.get(key)
        if value is not None and (type(value) is not int or (key == "last_run_id" and value < 0)):
            return f"{key}: expected a whole number or null, got {value!r}"
    bad = next((key for key in _TEXTS if data.get(key) is not None and not isinstance(data[key], str)), None)
    return f"{bad}: expected a string or null, got {data[bad]!r}" if bad else None


def save_state(path: Path, state: RepoState) -> None:
    try:
        write_json(path, state.to_json())
    except OSError as exc:  # a read-only or full disk: the loop stops on one line, not a traceback
        raise write_error(path, exc) from exc
