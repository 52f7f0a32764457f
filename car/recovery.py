"""Recovery after a crash: end what a dead loop left running, close its run (DESIGN.md §3, reconcile)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from car.config import RepoConfig
from car.errors import Conflict
from car.layout import RepoLayout
from car.lock import LockInfo, inspect_lock, process_start_time
from car.state import load_state, save_state, utc_now
from car.status import LockStatus, RunStatus, StopReason

ORPHAN_ENDED = ("the loop's owner (pid {owner}) died and left its run going; "
                "ended {count} process(es) of that run{group}")
ORPHAN_SURVIVED = ("{count} process(es) of the run of dead pid {owner} outlived SIGKILL (pids {pids}); "
                   "end them by hand (`kill -9 {pids}`), then run the command again")
SURVIVOR_WAIT_SECONDS = 2.0  # SIGKILLed processes leave at once, unless stuck in the kernel


@dataclass(frozen=True)
class OrphanedRun:
    """What a loop that died without cleanup (SIGKILL, crash, OOM) left running, now ended."""

    owner_pid: Optional[int]
    pgid: Optional[int]  # the agent's group, only when proved to be the run's (find_orphan)
    pids: Tuple[int, ...]  # the run's processes that were alive

    def describe(self) -> str:
        group = f" (agent group {self.pgid})" if self.pgid else ""
        return ORPHAN_ENDED.format(owner=self.owner_pid, count=len(self.pids), group=group)


def find_orphan(info: LockInfo) -> Tuple[Optional[int], List[int]]:
    """The run's agent group (None unless proved the run's) and the run's live processes.

    A group id is only a number. Once the agent's group is gone (or after a reboot) another group
    may carry it, and signalling that would hit an unrelated program. So, as lock.is_alive does
    for the owner, a recorded id must be proved to be still the same thing: the group counts as
    the run's only if one of its members carries the run's marker (the random token the sweep
    looks for), or its leader is the very process car started (pid == pgid, with the start time
    the lock recorded). Where there is no /proc neither can be shown, and the group is left alone.
    """
    from car.agent import group_members, pids_with_token  # only here: `car status` need not load it

    carriers = set(pids_with_token(info.run_token or ""))
    members = set(group_members(info.agent_pgid)) if info.agent_pgid else set()
    leader_is_ours = (info.agent_pgid in members and info.agent_started is not None
                      and process_start_time(info.agent_pgid) == info.agent_started)
    if members & carriers or leader_is_ours:
        return info.agent_pgid, sorted(carriers | members)
    return None, sorted(carriers)


def end_orphaned_run(config: RepoConfig, info: Optional[LockInfo] = None) -> Optional[OrphanedRun]:
    """End what is left of the run a dead loop's lock records; None if nothing of it is alive.

    Conflict if some of it outlives SIGKILL: nothing may clear that lock or start a second agent.
    """
    info = info or inspect_lock(RepoLayout(config.root).lock)
    # a live owner ends its own run (`car kill` writes the stop file and signals its agent's group);
    # a copied lock's run is the original repo's, which still holds that lock
    if info.status is not LockStatus.LOCKED_STALE or info.copied or not (info.agent_pgid or info.run_token):
        return None
    from car.agent import end_run_elsewhere

    pgid, pids = find_orphan(info)
    if not pids:
        return None
    end_run_elsewhere(pgid, info.run_token, config.runner.kill_grace_seconds)
    survivors = _wait_gone(info, pgid)
    if survivors:
        listed = " ".join(map(str, survivors))
        raise Conflict(ORPHAN_SURVIVED.format(count=len(survivors), owner=info.pid, pids=listed))
    return OrphanedRun(info.pid, pgid, tuple(pids))


def _wait_gone(info: LockInfo, pgid: Optional[int]) -> List[int]:
    """The run's processes still alive after SIGKILL, once they had SURVIVOR_WAIT_SECONDS to go."""
    from car.agent import group_members, pids_with_token, wait_gone

    def alive() -> List[int]:
        return sorted(set(pids_with_token(info.run_token or "")) | set(group_members(pgid) if pgid else ()))

    return wait_gone(alive, SURVIVOR_WAIT_SECONDS)


def reconcile(config: RepoConfig, *,
              on_orphan: Callable[[OrphanedRun], None] = lambda orphan: None) -> bool:
    """End what a dead loop left running (told to `on_orphan`), then close the run state.json
    says is running, if no live process holds the lock (DESIGN.md §3); True if it closed one."""
    layout = RepoLayout(config.root)
    info = inspect_lock(layout.lock)
    if info.status is LockStatus.LOCKED_ALIVE:
        return False
    orphan = end_orphaned_run(config, info)  # first: a run is closed only once nothing of it runs
    if orphan is not None:
        on_orphan(orphan)
    state = load_state(layout.state)
    if state.status != RunStatus.RUNNING.value:
        return False
    from car.logs import open_run_log, recent_runs, record_run, run_ending  # only here: `car status` need not load them

    run_id = state.last_run_id
    ended, last_heard = run_ending(config.log_path, config.log.backup_count, run_id) if run_id else (True, None)
    if not ended:
        log = open_run_log(config)
        if orphan is not None:
            log.write(f"car: {orphan.describe()}", run_id)
        elif last_heard and info.pid is not None:
            log.write(f"car: the loop's owner (pid {info.pid}) died during this run; last heard of it at {last_heard}",
                      run_id)
        elif last_heard:  # no lock: its loop released it, but could not close the run (a full disk)
            log.write(f"car: the loop of this run ended without closing it; last heard of it at {last_heard}", run_id)
        log.end_run(run_id, "interrupted")
        log.close()
    state.status, state.stop_reason, state.runner_pid = RunStatus.ERROR.value, StopReason.INTERRUPTED.value, None
    if run_id and state.last_run_finished_at is None:  # died during a run, which has no record yet
        # its end: now if it was still going and has just been ended, else the last sign of it (the
        # time of noticing would claim it ran until then)
        state.last_run_finished_at = utc_now() if orphan is not None else last_heard or utc_now()
        if not any(r.get("id") == run_id for r in recent_runs(layout.runs)):
            record_run(layout.runs, state, StopReason.INTERRUPTED.value)
    save_state(layout.state, state)
    return True
