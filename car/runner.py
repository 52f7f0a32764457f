"""RepoRunner: one repo's engine loop on an executor thread, with thread-safe controls."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Executor, Future
from typing import Callable, List, Optional

from car.agent import end_run_elsewhere
from car.config import RepoConfig, load_config
from car.engine import Engine
from car.errors import CarError, ConfigError, Conflict, error_line
from car.feed import Feed
from car.files import write_atomic
from car.layout import RepoLayout
from car.lock import LockInfo, clear_stale_lock, inspect_lock
from car.logs import open_run_log
from car.recovery import OrphanedRun, reconcile
from car.repo_view import RepoView, view_repo
from car.status import LockStatus, StopReason

ALREADY_RUNNING = "{name} is already running"


def _live_lock(config: RepoConfig, verb: str) -> LockInfo:
    info = inspect_lock(RepoLayout(config.root).lock)
    if info.status is not LockStatus.LOCKED_ALIVE:
        raise Conflict(f"no loop is running in {config.root}; nothing to {verb}")
    return info


def stop_elsewhere(config: RepoConfig) -> LockInfo:
    """Ask the loop another car process runs to stop after its current run (the stop file)."""
    info = _live_lock(config, "stop")
    write_atomic(RepoLayout(config.root).stop, "stop\n")
    return info


def kill_orphan(config: RepoConfig) -> Optional[OrphanedRun]:
    """End what a loop that died without cleanup left of its run, and close that run; None when
    no dead loop left anything running (a live one is kill_elsewhere's)."""
    orphans: List[OrphanedRun] = []
    reconcile(config, on_orphan=orphans.append)  # ends the orphan, then closes its run
    return orphans[0] if orphans else None


def kill_elsewhere(config: RepoConfig) -> LockInfo:
    """End the current run of a loop another car process runs: its agent group, never its pid."""
    info = _live_lock(config, "kill")
    write_atomic(RepoLayout(config.root).stop, "kill\n")  # tells the owning loop why its agent died
    end_run_elsewhere(info.agent_pgid, info.run_token, config.runner.kill_grace_seconds)
    return info


class RepoRunner:
    """Runs one repo's loop on `executor`; start/request_stop/kill/resume/view are thread-safe.

    A loop run by another car process (its lock is alive) is reached through the stop file.
    """

    def __init__(self, config: RepoConfig, executor: Executor, *,
                 on_change: Callable[[], None] = lambda: None,
                 errors: Optional[logging.Logger] = None) -> None:
        self.config, self.layout = config, RepoLayout(config.root)
        self.feed = Feed()  # the repo's log lines as this process writes them (SSE follows it)
        self.log = open_run_log(config, self.feed)
        self._executor, self._on_change = executor, on_change
        self._errors = errors or logging.getLogger("car")
        self._guard = threading.Lock()
        self._engine: Optional[Engine] = None
        self._future: Optional[Future] = None
        self.last_error: Optional[str] = None

    @property
    def active(self) -> bool:
        with self._guard:
            return self._future is not None and not self._future.done()

    def start(self, once: bool = False, name: Optional[str] = None) -> None:
        """Start the loop; Conflict if running here, LockError if another process holds the lock (or
        it cannot be made), AgentError if the agent binary is missing: refused here, never reported
        as started. `name`: what the refusal calls the repo (the hub's id; else its directory's name)."""
        # outside the guard: ending a dead loop's orphan may take the kill grace, and the hub's
        # listing waits on the guard (`active`); a loop running here holds a live lock: a no-op
        reconcile(self.config, on_orphan=self._note_orphan)
        with self._guard:
            if self._future is not None and not self._future.done():
                raise Conflict(ALREADY_RUNNING.format(name=name or self.config.root.name))
            self._reload_config()
            engine = Engine(self.config, log=self.log, on_change=self._on_change)
            engine.take_lock()
            try:
                self._future = self._executor.submit(engine.run_loop, once)
            except BaseException:  # the executor is shut down (the hub is stopping): no loop holds it
                engine.give_back_lock()
                raise
            self._engine, self.last_error = engine, None
            self._future.add_done_callback(self._on_done)
        self._on_change()

    def _reload_config(self) -> None:
        """Each loop runs with the config as it is on disk now: edits apply at the next start."""
        config = load_config(self.layout.config)
        if not isinstance(config, RepoConfig):
            raise ConfigError(f"{self.layout.config} is not a repo config (mode: repo)")
        if config.log != self.config.log:
            self.log.close()
            self.log = open_run_log(config, self.feed)
        self.config = config

    def resume(self, once: bool = False, name: Optional[str] = None) -> None:
        """End what a dead loop left running, close its run, clear its stale lock (never a live
        one), and start."""
        if self.active:  # its live lock is this process's: say so, not "held by pid <ours>"
            raise Conflict(ALREADY_RUNNING.format(name=name or self.config.root.name))
        reconcile(self.config, on_orphan=self._note_orphan)
        clear_stale_lock(self.layout.lock)
        self.start(once=once, name=name)

    def request_stop(self) -> None:
        engine = self._current_engine()
        if engine is not None:
            engine.request_stop()
            return
        stop_elsewhere(self.config)

    def kill(self) -> None:
        """End the current run now: the agent's group and every process of the run."""
        engine = self._current_engine()
        if engine is not None:
            engine.kill(StopReason.KILLED)
            return
        orphan = kill_orphan(self.config)
        if orphan is not None:
            self._note_orphan(orphan)
            self._on_change()
            return
        kill_elsewhere(self.config)

    def view(self) -> RepoView:
        engine = self._current_engine()
        return view_repo(self.config, runner_active=engine is not None,
                         current_run_id=engine.current_run_id if engine else None,
                         current_run_started_at=engine.current_run_started_at if engine else None)

    def wait(self, timeout: Optional[float] = None) -> None:
        """Wait for the current loop to end (tests, shutdown)."""
        with self._guard:
            future = self._future
        if future is not None:
            future.exception(timeout=timeout)

    def close(self) -> None:
        """Kill a running loop, wait for it, and close the log (shutdown)."""
        if self.active:
            self.kill()
            self.wait(timeout=self.config.runner.kill_grace_seconds + 30)
        self.log.close()
        self.feed.close()

    def _current_engine(self) -> Optional[Engine]:
        with self._guard:
            if self._future is not None and not self._future.done():
                return self._engine
            return None

    def _note_orphan(self, orphan: OrphanedRun) -> None:
        self._errors.warning("%s: %s", self.config.root, orphan.describe())

    def _on_done(self, future: Future) -> None:
        exc = None if future.cancelled() else future.exception()
        if exc is not None:
            self.last_error = error_line(exc)
            if isinstance(exc, CarError):  # said for a user (a lost lock, a repo moved away): one line
                self._errors.error("loop of %s stopped: %s", self.config.root, exc)
            elif isinstance(exc, OSError):  # the machine's (a full disk): said as such, traced all the same
                self._errors.error("loop of %s stopped: %s", self.config.root, self.last_error, exc_info=exc)
            else:
                self._errors.error("loop of %s crashed: %s", self.config.root, exc, exc_info=exc)
        self._on_change()
