"""state.json: the facts of the last run, always written atomically."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from car.errors import StateError
from car.files import read_json, write_json
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


def load_state(path: Path) -> RepoState:
    """A missing state.json is a fresh repo; a broken one is a StateError (left untouched)."""
    if not path.exists():
        return RepoState()
    try:
        data = read_json(path)
    except Exception as exc:
        raise StateError(str(exc)) from exc
    if not isinstance(data, dict):
        raise StateError(f"{path}: expected a JSON object; fix or delete the file")
    return RepoState(**{k: v for k, v in data.items() if k in _FIELDS})


def save_state(path: Path, state: RepoState) -> None:
    write_json(path, state.to_json())
