"""One repo's loop: render the prompt, run the agent, log it, decide whether to go on."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from car import git
from car.agent import AgentProcess, Event, ending_steps, new_token, resolve_binary
from car.codex_events import OutputReader, TokenUsage, make_reader
from car.config import RepoConfig
from car.docs import DocKind, TodoCounts, parse_todos
from car.errors import CarError, LockError
from car.files import read_text, write_atomic, write_error
from car.layout import RepoLayout
from car.lock import LockInfo, acquire_lock, inspect_lock, is_own_lock, lock_lost_message, release_lock, update_lock
from car.logfile import log_names
from car.logs import RunLog, last_run_output, list_runs, open_run_log, recent_runs, record_run
from car.prompt import DEFAULT_TEMPLATE, clip_tail, render_prompt
from car.recovery import reconcile
from car.state import RepoState, load_state, save_state, utc_now
from car.status import LockStatus, RunStatus, StopReason

ERROR_REASONS = {StopReason.AGENT_FAILED, StopReason.RUN_TIMEOUT, StopReason.IDLE_TIMEOUT,
                 StopReason.INTERRUPTED}
STOP_POLL_SECONDS = 0.25  # between runs, how often the loop looks for a stop file from another process
DRAIN_SECONDS = 1.0  # after the agent exits, how long an orphan may hold its stdout open
# agents' context windows hold a few hundred thousand tokens (~4 chars each): a prompt past this is
# cut or refused by the model, and every run would fail the same way
PROMPT_WARN_CHARS = 1_000_000


@dataclass(frozen=True)
class RunResult:
    run_id: int
    exit_code: Optional[int]
    end_reason: Optional[StopReason]  # set when this run ends the loop
    progressed: bool  # TODO or files changed (files only when the loop counts progress: see _loop)
    todo: TodoCounts
    usage: Optional[TokenUsage] = None


class Engine:
    """One loop over one repo. Thread-safe controls: request_stop() and kill()."""

    def __init__(self, config: RepoConfig, *, log: Optional[RunLog] = None,
                 spawn: Callable[..., AgentProcess] = AgentProcess.spawn,
                 reader_factory: Callable[[], OutputReader] = make_reader,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.config, self.layout = config, RepoLayout(config.root)
        self._own_log = log is None
        self.log = log or open_run_log(config)
        self._spawn, self._reader_factory, self._clock, self._on_change = spawn, reader_factory, clock, on_change
        self._guard = threading.Lock()
        self._agent: Optional[AgentProcess] = None
        self._kill_reason: Optional[StopReason] = None
        self._ran = False  # a run of this loop started: its end goes into state.json
        self._stop = threading.Event()
        self.current_run_id: Optional[int] = None
        self.current_run_started_at: Optional[str] = None
        self._fingerprint: Optional[str] = None
        self._count_progress = True  # _loop() decides
        self._lock_token: Optional[str] = None  # from this loop's acquire_lock: tells our lock from a later one
        self._lock_lost: Optional[LockInfo] = None  # the lock as found once it was no longer ours
        # why the last auto-commit left the changes uncommitted ("auto-commit failed in run N (...)"); None
        # once one commits: a user relying on git.auto_commit hears of it at the loop's end (car run)
        self.commit_problem: Optional[str] = None
        self._commit_said: Optional[str] = None  # a per-loop auto-commit note (no work tree) already logged

    # controls (any thread) -------------------------------------------------------------
    def request_stop(self) -> None:
        """Finish the current run, then end the loop."""
        self._stop.set()

    def kill(self, reason: StopReason = StopReason.KILLED) -> None:
        """End the current run now and the loop after it."""
        with self._guard:
            self._kill_reason = self._kill_reason or reason
            agent = self._agent
        self._stop.set()
        if agent is not None:
            agent.interrupt()

    # the loop ---------------------------------------------------------------------------
    def take_lock(self) -> None:
        """What a loop needs before it may start: the agent binary, a crashed run closed, the lock.
        run_loop does it if nobody did; a caller that starts the loop on another thread does it first,
        so that a loop that cannot start is refused there and then (RepoRunner.start)."""
        if self._lock_token is None:
            resolve_binary(self.config.codex.binary, self.config.root)
            reconcile(self.config)
            self._lock_token = acquire_lock(self.layout.lock).owner_token

    def give_back_lock(self) -> None:
        """Release a lock taken by take_lock for a loop that will not run after all."""
        release_lock(self.layout.lock, self._lock_token)

    def run_loop(self, once: bool = False) -> StopReason:
        self.take_lock()
        reason: Optional[StopReason] = None
        closed = False
        try:
            self.layout.stop.unlink(missing_ok=True)  # we own the lock: an old stop was for an old loop
            self._check_runs_file()
            reason = self._loop(once)
            return reason
        finally:
            try:
                if reason is not None:
                    closed = self._finish(reason)
                elif self._ran:  # an error before any run leaves state.json as it was
                    # the loop's own error is the one to say, even if closing its state fails too
                    # (a broken state.json, the same read-only directory)
                    with contextlib.suppress(Exception):
                        closed = self._finish(StopReason.INTERRUPTED)
            finally:  # whatever failed: a lock left behind would block every later start as stale
                if not closed and (reason or self._ran) and self.layout.dir.is_dir():
                    # the repo was away when the state was to be closed and is back: the lock is
                    # released here, so the state must not stay "running" beside it
                    with contextlib.suppress(Exception):
                        self._finish(reason or StopReason.INTERRUPTED)
                release_lock(self.layout.lock, self._lock_token)  # a lock not ours any more is left alone
                if self._own_log:
                    self.log.close()

    def _check_runs_file(self) -> None:
        """runs.jsonl, appended at each run's end, must take the append now: found only then (another
        user's file, an immutable one), the agent's work would be done and its run left unrecorded."""
        path = self.layout.runs
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        except FileNotFoundError:
            pass  # made at the first run's end, in the directory the lock was just made in
        except OSError as exc:
            raise write_error(path, exc) from exc

    def _loop(self, once: bool) -> StopReason:
        runner = self.config.runner
        # only no_progress_runs needs the files' progress: without it a run makes no git calls
        self._count_progress = bool(runner.no_progress_runs) and not once
        started = self._clock()
        wall_deadline = started + runner.max_wallclock_seconds if runner.max_wallclock_seconds else None
        runs = stale = 0
        while True:
            if self._todo_counts().outstanding == 0:
                return StopReason.TODO_DONE
            requested = self._requested_stop()
            if requested:
                return requested
            if wall_deadline is not None and self._clock() >= wall_deadline:  # no run starts past it
                return StopReason.WALLCLOCK
            if self._check_lock() is not None:  # lost between runs (removed by hand, taken over)
                raise self._lock_lost_error(log=True)
            result = self.run_once(wall_deadline)
            if self._lock_lost is not None:  # noticed in the run (said in its log): no further run
                raise self._lock_lost_error(log=False)
            runs += 1
            stale = 0 if result.progressed else stale + 1
            checks = [
                (result.end_reason is not None, result.end_reason),
                (self._kill_reason is not None, self._kill_reason),
                (result.todo.outstanding == 0, StopReason.TODO_DONE),
                (self._requested_stop() is not None, self._requested_stop()),
                (once or (runner.stop_after_runs is not None and runs >= runner.stop_after_runs),
                 StopReason.STOP_AFTER_RUNS),
                (bool(runner.no_progress_runs) and stale >= (runner.no_progress_runs or 0),
                 StopReason.NO_PROGRESS),
                (wall_deadline is not None and self._clock() >= wall_deadline, StopReason.WALLCLOCK),
            ]
            hit = next((reason for cond, reason in checks if cond), None)
            if hit is not None:
                return hit
            self._sleep(runner.sleep_seconds, wall_deadline)

    def _sleep(self, seconds: float, until: Optional[float]) -> None:
        """Wait between runs, never past `until` (the wallclock deadline), and only until a stop is asked.

        request_stop() and kill() set the Event, but `car stop`/`car kill` in another process can only
        write the stop file: it is looked at every STOP_POLL_SECONDS."""
        end = self._clock() + seconds if until is None else min(self._clock() + seconds, until)
        while self._requested_stop() is None:
            left = end - self._clock()
            if left <= 0:
                return
            self._stop.wait(min(left, STOP_POLL_SECONDS))

    def _check_lock(self) -> Optional[LockInfo]:
        """The lock as it is now if it is no longer this loop's (removed, or another's); None while it is.

        Read before each run and at its end: without the lock a second loop may start (a lock removed by
        hand reads as unlocked), and two agents must never work on one repo at once."""
        info = inspect_lock(self.layout.lock)
        if is_own_lock(info, self._lock_token):
            return None
        self._lock_lost = info
        return info

    def _lock_lost_error(self, log: bool) -> LockError:
        assert self._lock_lost is not None
        message = lock_lost_message(self.layout.lock, self._lock_lost)
        if log:
            self.log.write(f"car: {message}")
        return LockError(message)

    def _may_write_state(self) -> bool:
        """state.json is the lock holder's: a loop that lost its lock still closes its run there, unless
        another process holds the lock now (then the state is that loop's, not ours to overwrite)."""
        if not self.layout.dir.is_dir():  # the repo is gone: nothing is made again where it was
            return False
        lost = self._check_lock()
        return lost is None or lost.status is LockStatus.UNLOCKED

    def _update_lock(self, agent_pgid: Optional[int], run_token: Optional[str]) -> bool:
        """Record the agent in the lock; False (the loss noted) if the lock is no longer this loop's."""
        if update_lock(self.layout.lock, agent_pgid, run_token, self._lock_token):
            return True
        self._check_lock()
        return False

    def _requested_stop(self) -> Optional[StopReason]:
        if self._kill_reason is not None:
            return self._kill_reason
        text = self._stop_file()
        if text == "kill":
            return StopReason.KILLED
        if self._stop.is_set() or text is not None:
            return StopReason.STOPPED
        return None

    def _stop_file(self) -> Optional[str]:
        """'stop' or 'kill' when another process (car stop / car kill) asked; None otherwise."""
        try:
            return self.layout.stop.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None

    def _todo_counts(self) -> TodoCounts:
        path = self.config.doc_path(DocKind.TODO.value)
        if not self.config.root.is_dir():
            raise CarError(f"{self.config.root} is gone (moved or deleted) while its loop ran; the loop stops "
                           f"(run `car status` where it is now)")
        if not path.exists():  # read as empty, it would end the loop as done
            raise CarError(f"{path}: the TODO file is missing; run `car init` to make it again, or fix "
                           f"docs.todo in .codex-autorunner/config.yml")
        return parse_todos(read_text(path))

    def _finish(self, reason: StopReason) -> bool:
        """Close the loop in state.json; False if it was not this loop's to write (see _may_write_state)."""
        try:
            if not self._may_write_state():
                return False
            state = load_state(self.layout.state)
            state.status = (RunStatus.ERROR if reason in ERROR_REASONS else RunStatus.IDLE).value
            state.stop_reason, state.runner_pid = reason.value, None
            save_state(self.layout.state, state)
            return True
        finally:  # the loop is over even when its state cannot be written: views must not show a run
            self.current_run_id = self.current_run_started_at = None
            self._on_change()

    # one run ----------------------------------------------------------------------------
    def run_once(self, wall_deadline: Optional[float] = None) -> RunResult:
        """One agent run; the caller holds the lock."""
        cfg, layout = self.config, self.layout
        state = load_state(layout.state)
        recent = recent_runs(layout.runs)
        # a deleted state.json (its error message advises that) must not number runs from 1 again:
        # runs.jsonl outlives it, and the log's rotation, and knows the ids used
        last_id = max([state.last_run_id or 0] + [r["id"] for r in recent if type(r.get("id")) is int])
        if not last_id:  # both gone too (or a first run): the log's markers know the ids used, if any
            last_id = max((r.id for r in list_runs(cfg.log_path, cfg.log.backup_count)), default=0)
        run_id = last_id + 1
        docs = {k.value: read_text(cfg.doc_path(k.value)) for k in DocKind}
        # the last run's "after" serves as this run's "before": one git call per run, not two
        before = (parse_todos(docs[DocKind.TODO.value]), self._fingerprint or self._files_fingerprint())
        prompt = render_prompt(self._template(), docs, self._previous_output(last_id, recent),
                               cfg.prompt.prev_run_max_chars)
        try:
            write_atomic(layout.rendered_prompt, prompt, durable=False)  # made again for every run
        except OSError as exc:  # before the run starts: nothing of it to record
            raise write_error(layout.rendered_prompt, exc) from exc

        started_at = utc_now()
        state = RepoState(status=RunStatus.RUNNING.value, last_run_id=run_id, last_exit_code=None,
                          last_run_started_at=started_at, last_run_finished_at=None,
                          runner_pid=os.getpid(), stop_reason=None)
        save_state(layout.state, state)
        self._ran = True
        self.current_run_id, self.current_run_started_at = run_id, started_at
        self.log.start_run(run_id)
        if len(prompt) > PROMPT_WARN_CHARS:
            kind, text = max(docs.items(), key=lambda item: len(item[1]))
            self.log.write(f"car: warning: the prompt is {len(prompt):,} characters, more than an agent reads "
                           f"at once; the largest part is {cfg.doc_path(kind)} ({len(text):,}): trim it", run_id)
        self._on_change()

        reader = self._reader_factory()
        exit_code: Optional[int] = None
        try:
            end_reason, exit_code = self._run_agent(run_id, reader, wall_deadline)
            end_reason, after_todo, progressed = self._judge(run_id, reader, end_reason, exit_code, before)
        except BaseException as exc:
            # whatever failed (an unreadable TODO, a full disk), the run's end goes on record; the
            # error then ends the loop
            with contextlib.suppress(Exception):
                self.log.write(f"car: error: {exc or type(exc).__name__}", run_id)
                self._record_end(run_id, state, exit_code, StopReason.INTERRUPTED, reader)
            raise
        self._record_end(run_id, state, exit_code, end_reason, reader)
        return RunResult(run_id, exit_code, end_reason, progressed, after_todo, reader.usage)

    def _judge(self, run_id: int, reader: OutputReader, end_reason: Optional[StopReason],
               exit_code: Optional[int], before: tuple) -> tuple:
        """(why the run ends the loop or None, TODO counts after it, whether it made progress)."""
        cfg = self.config
        if end_reason is None and self._stop_file() == "kill":
            end_reason = StopReason.KILLED  # `car kill` in another process ended the agent
        if end_reason is None and (exit_code != 0 or reader.failure):
            why = reader.failure or f"exit code {exit_code}"
            self.log.write(f"car: the agent failed: {why}", run_id)
            end_reason = StopReason.AGENT_FAILED
        if end_reason is None and reader.blocked:
            end_reason = StopReason.BLOCKED
        after_todo = self._todo_counts()
        self._fingerprint = self._files_fingerprint()
        progressed = after_todo != before[0] or self._fingerprint != before[1]
        if cfg.git.auto_commit and exit_code == 0 and not reader.failure:
            self._auto_commit(run_id)
        return end_reason, after_todo, progressed

    def _auto_commit(self, run_id: int) -> None:
        """Commit the run's changes; one that did not happen is logged and kept in commit_problem."""
        cfg = self.config
        # a kill (here, or `car kill` elsewhere) ends a long git call (a slow pre-commit hook) within the grace
        note = git.auto_commit(cfg.root, cfg.git.commit_message_template.replace("{run_id}", str(run_id)),
                               grace_seconds=cfg.runner.kill_grace_seconds,
                               cancel=lambda: self._kill_reason is not None or self._stop_file() == "kill")
        self.commit_problem = None
        if note is None:
            return
        if note.verdict is not None:
            self.commit_problem = (f"auto-commit {note.verdict} in run {run_id} ({note.reason}); its changes are "
                                   f"left uncommitted")
        if not (note.per_loop and note.text == self._commit_said):
            self.log.write("\n".join(f"car: {line}" for line in note.text.splitlines()), run_id)
        if note.per_loop:
            self._commit_said = note.text
        self._fingerprint = None  # HEAD may have moved

    def _record_end(self, run_id: int, state: RepoState, exit_code: Optional[int],
                    end_reason: Optional[StopReason], reader: OutputReader) -> None:
        """The run's end marker, its runs.jsonl record, and state.json."""
        cfg, layout = self.config, self.layout
        writable = self._may_write_state()  # the run-end check of the lock
        if self._lock_lost is not None:
            self.log.write(f"car: {lock_lost_message(layout.lock, self._lock_lost)}", run_id)
        self.log.end_run(run_id, f"code {exit_code}")
        state.last_exit_code, state.last_run_finished_at = exit_code, utc_now()
        record_run(layout.runs, state, end_reason.value if end_reason else None,
                   usage=reader.usage.to_json() if reader.usage else None,
                   output=clip_tail(reader.final_message, cfg.prompt.prev_run_max_chars)
                   if reader.final_message is not None else None)
        if writable:
            save_state(layout.state, state)
        self._on_change()

    def _files_fingerprint(self) -> Optional[str]:
        if not self._count_progress:
            return None
        return git.fingerprint(self.config.root, log_names(self.config.log_path, self.config.log.backup_count))

    def _template(self) -> str:
        return read_text(self.config.template_path, missing=DEFAULT_TEMPLATE)

    def _previous_output(self, run_id: int, recent: list) -> str:
        if not run_id:
            return ""
        # the newest run is at the end of both files: read from there, whatever their size
        record = next((r for r in recent if r.get("id") == run_id), None)
        if record is not None and record.get("output") is not None:
            return str(record["output"])
        return last_run_output(self.config.log_path, self.config.log.backup_count, run_id)

    def _run_agent(self, run_id: int, reader: OutputReader,
                   wall_deadline: Optional[float]) -> tuple:
        cfg = self.config
        argv = [resolve_binary(cfg.codex.binary, cfg.root), *cfg.codex.args]
        token = new_token()
        # the marker goes into the lock before the agent exists: should car die right after the
        # spawn, a later kill, resume or status still finds the run's processes by it
        if not self._update_lock(None, token):  # no agent without the lock: the loop stops (_loop)
            return StopReason.INTERRUPTED, None
        try:
            agent = self._spawn(argv, cfg.root, self.layout.rendered_prompt, token)
        except Exception as exc:  # reported in the run, and the loop stops on it
            self._update_lock(None, None)
            self.log.write(f"car: {exc}", run_id)
            return StopReason.AGENT_FAILED, 127
        with self._guard:
            self._agent = agent
            if self._kill_reason is not None:
                agent.interrupt()
        if not self._update_lock(agent.pid, agent.token):
            self.kill(StopReason.INTERRUPTED)  # lost as it started: another loop's agent may be on its way
        try:
            end_reason = self._pump(agent, run_id, reader, wall_deadline)
        finally:
            agent.clean_up()
            with self._guard:
                self._agent = None
            self._update_lock(None, None)
        return end_reason, agent.exit_code()

    def _pump(self, agent: AgentProcess, run_id: int, reader: OutputReader,
              wall_deadline: Optional[float]) -> Optional[StopReason]:
        """Log the agent's lines until it has exited and its output is read, enforcing the watchdogs.

        The watchdogs are checked before every item, not only when the agent is quiet: one that prints
        without pause is still ended on time. Ending it takes steps (ending_steps) as their times come,
        logging its lines in between, as they arrive."""
        start = last_output = self._clock()
        end_reason: Optional[StopReason] = None
        exited = eof = cleaned = False
        drain_until: Optional[float] = None
        ending: List[Tuple[float, Optional[int]]] = []  # the steps still to take
        # an agent may close its stdout and work on (a wrapper that sends its output to a file): the
        # run lasts until it exits, under the same watchdogs (no output counts as idle)
        while not (eof and exited):
            now = self._clock()
            watchdog = self._soonest_watchdog(start, last_output, wall_deadline) if end_reason is None else None
            if watchdog is not None and watchdog[0] <= now:
                end_reason, watchdog = watchdog[1], None
                ending = self._begin_end(agent, end_reason.value.replace("_", " "), run_id, exited)
            while ending and ending[0][0] <= now:
                step = ending.pop(0)[1]
                if step is None:
                    agent.clean_up()
                else:
                    agent.signal(step)
            wakes = [t for t in (watchdog[0] if watchdog else None, ending[0][0] if ending else None, drain_until)
                     if t is not None]
            try:
                item = agent.items.get(timeout=max(0.0, min(wakes) - now) if wakes else None)
            except queue.Empty:
                if drain_until is not None and self._clock() >= drain_until:  # exited; an orphan holds stdout
                    if cleaned:
                        break
                    agent.clean_up()
                    cleaned, drain_until = True, self._clock() + 5
                continue
            if isinstance(item, str):
                last_output = self._clock()
                for line in reader.feed(item):
                    self.log.write(line, run_id)
            elif item[0] == Event.PART:
                last_output = self._clock()
            elif item[0] == Event.EOF:
                eof = True
            elif item[0] == Event.EXITED:
                exited = True
                drain_until = self._clock() + DRAIN_SECONDS
                if ending:  # being ended: what it left behind goes now, not after the drain
                    ending = []
                    agent.clean_up()
            elif item[0] == Event.INTERRUPT and end_reason is None:
                end_reason = self._kill_reason or StopReason.KILLED
                ending = self._begin_end(agent, end_reason.value, run_id, exited)
        return end_reason

    def _begin_end(self, agent: AgentProcess, why: str, run_id: int, exited: bool) -> List[Tuple[float, Optional[int]]]:
        """Say why the agent is being ended and take the first step; the steps left to take."""
        self.log.write(f"car: {why}: ending the agent", run_id)
        if exited:
            return []
        steps = ending_steps(self._clock(), self.config.runner.kill_grace_seconds)
        agent.signal(steps.pop(0)[1])  # SIGINT, at once
        return steps

    def _soonest_watchdog(self, start: float, last_output: float,
                          wall_deadline: Optional[float]) -> Optional[Tuple[float, StopReason]]:
        """The watchdog that comes first: (its deadline, the reason it ends the run), or None."""
        runner = self.config.runner
        deadlines = []
        if runner.run_timeout_seconds:
            deadlines.append((start + runner.run_timeout_seconds, StopReason.RUN_TIMEOUT))
        if runner.idle_timeout_seconds:
            deadlines.append((last_output + runner.idle_timeout_seconds, StopReason.IDLE_TIMEOUT))
        if wall_deadline is not None:
            deadlines.append((wall_deadline, StopReason.WALLCLOCK))
        return min(deadlines, key=lambda d: d[0]) if deadlines else None
