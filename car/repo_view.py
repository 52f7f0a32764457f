"""A repo's status as one record: state.json + lock + TODO counts (CLI status, API state)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from car.config import RepoConfig
from car.docs import DocKind, parse_todos
from car.files import read_text
from car.layout import RepoLayout
from car.lock import inspect_lock
from car.state import load_state
from car.status import RepoFacts, derive_status


@dataclass(frozen=True)
class RepoView:
    status: str
    lock_status: str
    lock_pid: Optional[int]
    running: bool
    state_status: str
    last_run_id: Optional[int]
    last_exit_code: Optional[int]
    last_run_started_at: Optional[str]
    last_run_finished_at: Optional[str]
    runner_pid: Optional[int]
    stop_reason: Optional[str]
    outstanding_todos: int
    done_todos: int
    current_run_id: Optional[int] = None
    current_run_started_at: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def view_repo(config: RepoConfig, runner_active: bool = False, current_run_id: Optional[int] = None,
              current_run_started_at: Optional[str] = None) -> RepoView:
    """Read the repo's files; `runner_active` says this process runs the repo's loop."""
    layout = RepoLayout(config.root)
    state = load_state(layout.state)
    lock = inspect_lock(layout.lock)
    todos = parse_todos(read_text(config.doc_path(DocKind.TODO.value)))
    facts = RepoFacts(exists=True, initialized=True, runner_active=runner_active,
                      lock=lock.status, last_state=state.status)
    running_elsewhere = not runner_active and state.status == "running" and lock.status.value == "locked_alive"
    # the other process's loop is in a run (not between runs): its state.json says which and since when,
    # as the hub reads it (hub_state.build_entry's in_run)
    in_run_elsewhere = running_elsewhere and not state.last_run_finished_at
    return RepoView(
        status=derive_status(facts).value, lock_status=lock.status.value, lock_pid=lock.pid,
        running=runner_active or running_elsewhere, state_status=state.status,
        last_run_id=state.last_run_id, last_exit_code=state.last_exit_code,
        last_run_started_at=state.last_run_started_at, last_run_finished_at=state.last_run_finished_at,
        runner_pid=state.runner_pid, stop_reason=state.stop_reason,
        outstanding_todos=todos.outstanding, done_todos=todos.done,
        current_run_id=current_run_id if runner_active else state.last_run_id if in_run_elsewhere else None,
        current_run_started_at=current_run_started_at if runner_active else
        state.last_run_started_at if in_run_elsewhere else None,
    )
