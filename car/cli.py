"""The command line: parse, resolve the config, call one module, print. The only printer."""

from __future__ import annotations

# Starting python and importing car is most of what a short command costs (issue 5), so this
# module and the cli_* modules it builds the parser from import only what every command needs:
# each handler imports the modules of its own work (the engine, the runner, bootstrap).
import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple

from car import __version__
from car.cli_serve import add_serve_command, whole_number
from car.cli_usage import add_usage_command
from car.config import AnyConfig, HubConfig, RepoConfig, RunnerConfig, find_config, load_config, says_hub_mode
from car.errors import CarError, ConfigError, Conflict, UsageError, os_error_message
from car.layout import CAR_DIR, CONFIG_NAME, RepoLayout
from car.status import LockStatus, StopReason

if TYPE_CHECKING:  # imported where used: only `log --follow` needs threads
    import threading

    from car.lock import LockInfo

# how long `car stop` waits for a loop between runs to end (it looks for the stop file every 0.25 s)
STOP_WAIT_SECONDS = 2.0
NO_CONFIG = ("no {car}/{cfg} in {where} or any parent directory; run `car init` in the repo's root "
             "(or pass --repo PATH)")
WRONG_MODE_REPO_CMD = ("`car {cmd}` is a repo command, but {path} is a hub config (mode: hub); "
                       "cd into one of the hub's repos (or pass --repo PATH), or use `car hub ...` here")
WRONG_MODE_HUB_CMD = ("`car hub {cmd}` is a hub command, but {path} is a repo config (mode: repo); "
                      "run it from the hub root (the directory above the repos) or pass --hub PATH; "
                      "for this repo use `car status` / `car run` / `car serve`")


def _warn(message: str) -> None:
    print(f"car: warning: {message}", file=sys.stderr)


def _load(path: Path) -> AnyConfig:
    config = load_config(path)
    for warning in config.warnings:
        _warn(warning)
    return config


def repo_config_path(args: argparse.Namespace) -> Path:
    """The config.yml of the repo from --repo or the nearest one upward (not read yet)."""
    if args.repo is not None:
        path = Path(args.repo) / CAR_DIR / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(f"no {CAR_DIR}/{CONFIG_NAME} in {Path(args.repo).resolve()}; "
                              f"run `car init --repo {args.repo}`")
        return path
    found = find_config(Path.cwd())
    if found is None:
        raise ConfigError(NO_CONFIG.format(car=CAR_DIR, cfg=CONFIG_NAME, where=Path.cwd()))
    return found


def repo_config(args: argparse.Namespace, path: Optional[Path] = None) -> RepoConfig:
    """The repo config at `path` (default: repo_config_path); a hub config is a usage error."""
    path = path or repo_config_path(args)
    config = _load(path)
    if isinstance(config, HubConfig):
        raise UsageError(WRONG_MODE_REPO_CMD.format(cmd=args.command, path=path))
    return config


def repo_config_or_defaults(args: argparse.Namespace, goes_on: str) -> Tuple[RepoConfig, bool]:
    """repo_config and False, or the defaults (warned about, with `goes_on`: what they give) and True where
    the file cannot be read: stop and kill need only the root, and a config edited badly during a run must
    not leave them unable to end it. A hub's root (its text says mode: hub) is no repo: there the error stands."""
    path = repo_config_path(args)
    try:
        return repo_config(args, path), False
    except ConfigError as exc:
        if says_hub_mode(path) is not False:
            raise
        _warn(f"{exc}; `car {args.command}` goes on {goes_on}")
        return RepoConfig(root=path.resolve().parent.parent), True


# repo commands -------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    from car.bootstrap import describe_git, init_repo

    root = Path(args.repo or Path.cwd()).resolve()
    above = enclosing_repo(root.parent) if args.repo is None and not (root / CAR_DIR).exists() else None
    if above is not None:  # (a hub's child is set up on its own, of course)
        raise UsageError(f"{root} is inside the repo {above}, which car already set up; run "
                         f"`car init` there, or `car init --repo {root}` to set up this directory on its own")
    report = init_repo(root, force=args.force, git_init=args.git_init)
    for action in report.actions:
        print(action)
    warning = describe_git(root)
    if warning:
        _warn(warning)
    print(f"initialized {root}; edit {CAR_DIR}/TODO.md, then `car run`")
    return 0


def nearest_config(path: Path) -> Optional[AnyConfig]:
    """The config nearest upward from `path`, or None; one that cannot be read counts as none (the
    command that needs it says why)."""
    found = find_config(path)
    try:
        return load_config(found) if found is not None else None
    except CarError:
        return None


def enclosing_repo(path: Path) -> Optional[Path]:
    """The root of the repo car set up that is or holds `path` (the nearest config is mode: repo), or None."""
    config = nearest_config(path)
    return config.root if isinstance(config, RepoConfig) else None


def _run_in_foreground(config: RepoConfig, once: bool) -> int:
    """Run the loop on a thread; SIGINT/SIGTERM end the agent's group, record the run, unlock."""
    import threading

    from car.engine import ERROR_REASONS, Engine
    from car.repo_view import view_repo
    from car.signals import on_stop_signals

    engine = Engine(config)
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["reason"] = engine.run_loop(once=once)
        except BaseException as exc:  # handed to the main thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="car-loop")
    # a signal ends the current run and the loop (on_stop_signals calls this from its own thread)
    with on_stop_signals(lambda: engine.kill(StopReason.KILLED)):
        thread.start()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    reason: StopReason = outcome["reason"]
    state = view_repo(config)
    print(f"car: loop ended: {reason.value} (last run {state.last_run_id}, "
          f"{_exit_code(state.last_exit_code)}, TODO {state.done_todos}/"
          f"{state.done_todos + state.outstanding_todos} done)")
    if engine.commit_problem:  # said in the log too; a user relying on git.auto_commit must not miss it
        _warn(engine.commit_problem)
    return 1 if reason in ERROR_REASONS else 0


def _exit_code(code: Optional[int]) -> str:
    """A run's exit code as said to a user: a run going on, killed or interrupted has none."""
    return "no exit code" if code is None else f"exit code {code}"


def cmd_run(args: argparse.Namespace) -> int:
    return _run_in_foreground(repo_config(args), once=False)


def cmd_once(args: argparse.Namespace) -> int:
    return _run_in_foreground(repo_config(args), once=True)


def cmd_resume(args: argparse.Namespace) -> int:
    from car.lock import clear_stale_lock
    from car.recovery import reconcile

    config = repo_config(args)
    # a dead loop's agent may still run: it is ended first, or this would start a second one
    reconcile(config, on_orphan=lambda orphan: print(f"car: {orphan.describe()}"))
    if clear_stale_lock(RepoLayout(config.root).lock):
        print("car: cleared the stale lock")
    return _run_in_foreground(config, once=args.once)


def cmd_stop(args: argparse.Namespace) -> int:
    from car.runner import stop_elsewhere

    config, _ = repo_config_or_defaults(args, "(it needs only the repo's root)")
    try:
        info = stop_elsewhere(config)
    except Conflict as exc:  # nothing running is not a failure: the wish is already true
        print(f"car: {exc}")
        return 0
    print(f"car: {_stop_outcome(RepoLayout(config.root).lock, info)}")
    return 0


def _stop_outcome(lock_path: Path, asked: LockInfo) -> str:
    """What a stop did, as far as the lock shows it once the stop file is there. A run's marker is in
    the lock from before its agent starts to after it ends: with it, the loop ends after that run. Without
    it the loop is between runs and sees the stop file within engine.STOP_POLL_SECONDS; its end is waited
    for, since one that read the file just before it was written may yet start a run (and mark the lock)."""
    import time

    from car.lock import inspect_lock

    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while True:
        now = inspect_lock(lock_path)
        if now.status is not LockStatus.LOCKED_ALIVE or (now.pid, now.owner_token) != (asked.pid, asked.owner_token):
            return f"stopped; the loop of pid {asked.pid} has ended"
        if now.run_token or now.agent_pgid:
            return f"stop requested; pid {asked.pid} ends its loop after the current run"
        if time.monotonic() >= deadline:
            return f"stop requested; pid {asked.pid} runs no agent now and ends its loop at its next check"
        time.sleep(0.05)


def cmd_kill(args: argparse.Namespace) -> int:
    from car.recovery import end_orphaned_run
    from car.runner import kill_elsewhere, kill_orphan

    grace = RunnerConfig.kill_grace_seconds
    config, guessed = repo_config_or_defaults(args, f"with the default settings (runner.kill_grace_seconds: {grace:g})")
    # a loop killed -9 (or crashed) left its agent running. With the config unread, the run log may be
    # elsewhere (log.path): only the processes are ended, and the run is closed where it is, later
    orphan = end_orphaned_run(config) if guessed else kill_orphan(config)
    if orphan is not None:
        then = (f"once {CAR_DIR}/{CONFIG_NAME} reads again, `car status` closes that run in its log and history"
                if guessed else "`car resume` continues the loop")
        print(f"car: {orphan.describe()}; {then}")
        return 0
    try:
        info = kill_elsewhere(config)
    except Conflict as exc:
        print(f"car: {exc}")
        return 0
    print(f"car: killed the current run of pid {info.pid}" +
          (f" (agent group {info.agent_pgid})" if info.agent_pgid else " (it was between runs)"))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from car.recovery import reconcile
    from car.repo_view import view_repo

    config = repo_config(args)
    if reconcile(config, on_orphan=lambda orphan: _warn(orphan.describe())):
        _warn("the last run's owner died; its run is now closed as interrupted")
    view = view_repo(config)
    if args.json:
        print(json.dumps(view.to_json(), indent=2))
        return 0
    total = view.done_todos + view.outstanding_todos
    print(f"repo:       {config.root}")
    print(f"status:     {view.status}" + (f" (pid {view.lock_pid})" if view.lock_pid else ""))
    print(f"lock:       {view.lock_status}")
    print(f"TODO:       {view.done_todos}/{total} done")
    print(f"last run:   {view.last_run_id or '-'} ({_exit_code(view.last_exit_code)}, "
          f"started {view.last_run_started_at or '-'}, finished {view.last_run_finished_at or '-'})")
    print(f"stop reason: {view.stop_reason or '-'}")
    if view.lock_status == LockStatus.LOCKED_STALE.value:
        print("the lock is stale (its owner is gone, or it was copied or moved here): "
              "`car resume` clears it and continues")
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    import threading

    from car.logs import follow, list_runs, log_tail, read_run

    config = repo_config(args)
    path, backups = config.log_path, config.log.backup_count
    if args.run is not None:
        lines = read_run(path, backups, args.run)
        if not lines:
            known = [r.id for r in list_runs(path, backups)]
            span = f"runs {known[0]}..{known[-1]} are in the log" if known else "the log holds no runs"
            raise CarError(f"run {args.run} is not in {path} or its backups; {span}")
    else:
        lines = log_tail(path, backups, args.tail)
    for line in lines:
        print(line)
    sys.stdout.flush()  # a reader that has left shows now, not after the next new line
    if args.follow and not _reader_gone():
        stop = threading.Event()
        threading.Thread(target=_watch_reader, args=(stop,), name="car-log-reader", daemon=True).start()
        try:
            for line in follow(path, stop):
                print(line, flush=True)
                if _reader_gone():
                    break
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()  # ends the watcher too
    return 0


def _reader_gone() -> bool:
    """stdout's reader has left (car.launch.QuietStream saw it): a printer that never ends stops then."""
    return bool(getattr(sys.stdout, "gone", False))


def _watch_reader(stop: threading.Event, poll_ms: int = 250) -> None:
    """Set `stop` when stdout's reader leaves while no new line comes to find it out by a failing write:
    poll() reports POLLERR/POLLHUP on a pipe whose read end is closed (`| head -2` done) or a hung-up tty."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)  # no events asked: errors and hang-ups are always reported
    except (AttributeError, OSError, ValueError):
        return  # no poll() (Windows) or no descriptor (a test's capture): the next write finds out
    while not stop.is_set():
        if poller.poll(poll_ms):
            stop.set()


def cmd_doctor(args: argparse.Namespace) -> int:
    from car.cli_doctor import doctor  # only here: it starts the agent, which no other command does

    return doctor(repo_config(args))


# parser ------------------------------------------------------------------------------
def _add(commands: argparse._SubParsersAction, name: str, func: Callable, help: str) -> argparse.ArgumentParser:
    p = commands.add_parser(name, help=help, description=help)
    p.add_argument("--repo", type=Path, default=argparse.SUPPRESS,
                   help="repo root (default: nearest .codex-autorunner/ upward from here)")
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="car", description="Run a coding agent in a loop over a repo's TODO list.")
    parser.add_argument("--version", action="version", version=f"car {__version__}")
    parser.add_argument("--repo", type=Path, default=None,
                        help="repo root (default: nearest .codex-autorunner/ upward from here)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    p = _add(commands, "init", cmd_init, "create .codex-autorunner/ in this repo (idempotent)")
    p.add_argument("--force", action="store_true", help="rewrite templates (docs are never rewritten)")
    p.add_argument("--git-init", action="store_true", help="run `git init` first if there is no .git")
    _add(commands, "run", cmd_run, "run the agent in a loop until TODO is done or a limit is hit")
    _add(commands, "once", cmd_once, "run the agent once")
    _add(commands, "stop", cmd_stop, "ask the running loop to stop after its current run")
    _add(commands, "kill", cmd_kill, "end the current run now (the agent and all its processes)")
    p = _add(commands, "resume", cmd_resume, "clear a stale lock and continue the loop")
    p.add_argument("--once", action="store_true", help="run once instead of looping")
    p = _add(commands, "status", cmd_status, "show this repo's status")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = _add(commands, "log", cmd_log, "print the run log")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--run", type=int, metavar="N", help="print run N (searches rotated logs too)")
    which.add_argument("--tail", type=whole_number(), metavar="N", default=50,
                       help="print the last N lines (default 50)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    _add(commands, "doctor", cmd_doctor, "check config, docs, prompt template, agent binary, git and lock")
    add_usage_command(commands)
    add_serve_command(commands)
    from car.cli_hub import add_hub_commands  # here, not at the top: cli_hub imports this module

    add_hub_commands(commands)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CarError as exc:
        print(f"car: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the machine's, not car's (a full disk mid-run): a line, not a traceback
        print(f"car: {os_error_message(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
