"""Recovery after a crash: close the run of a loop whose process died (DESIGN.md §3, reconcile)."""

from __future__ import annotations

from car.config import RepoConfig
from car.layout import RepoLayout
from car.lock import inspect_lock
from car.state import load_state, save_state, utc_now
from car.status import LockStatus, RunStatus, StopReason


def reconcile(config: RepoConfig) -> bool:
    """Close a run that state.json says is running but whose owner is gone (DESIGN.md §3)."""
    layout = RepoLayout(config.root)
    state = load_state(layout.state)
    if state.status != RunStatus.RUNNING.value:
        return False
    if inspect_lock(layout.lock).status is LockStatus.LOCKED_ALIVE:
        return False
    from car.logs import has_end_marker, open_run_log  # only here: `car status` need not load logging

    run_id = state.last_run_id
    if run_id and not has_end_marker(config.log_path, config.log.backup_count, run_id):
        log = open_run_log(config, name=f"car.reconcile.{config.root}")
        log.end_run(run_id, "interrupted")
        log.close()
    state.status, state.stop_reason, state.runner_pid = RunStatus.ERROR.value, StopReason.INTERRUPTED.value, None
    state.last_run_finished_at = state.last_run_finished_at or utc_now()
    save_state(layout.state, state)
    return True
