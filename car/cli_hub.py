"""`car hub init|scan|status|serve`: find the hub config, call car.hub, print."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

from car.cli import WRONG_MODE_HUB_CMD, enclosing_repo, nearest_config
from car.config import HubConfig, find_config, load_config
from car.errors import ConfigError, InitError, UsageError
from car.layout import CAR_DIR, CONFIG_NAME, HubLayout

if TYPE_CHECKING:  # the hub modules load only for hub commands: repo commands start faster
    from car.hub import HubSupervisor
    from car.hub_state import HubSnapshot, RepoEntry

NO_HUB = ("no {car}/{cfg} in {where} or any parent directory; run `car hub init` in the hub root "
          "(the directory above the repos), or pass --hub PATH")
NO_HUB_AT = "no hub at {where}; run `car hub init --hub {where}` first (or fix the --hub path)"
NO_HUB_INSIDE = "no hub at {where}; it is inside the hub at {root}: pass --hub {root}"
BAD_HUB_PATH = ("{where} {what}; fix the --hub path, or create that directory and run "
                "`car hub init --hub {where}`")
MADE_HUB = "no config found in {where} or above: made it a hub root (as `car hub init` would)"
INSIDE_HUB = ("{where} is inside the hub at {root}; run hub commands there, or make a separate hub in a "
              "directory outside it")
INIT_FAILED_IN_SCAN = "init failed for {ids}: see each one's error; fix the cause, then `car hub scan` again"
NO_REPOS = "no repos yet: put git repos in {root} (one level down), then `car hub scan`"


def _note(message: str) -> None:
    print(f"car: {message}", file=sys.stderr)


def no_hub_in_repo(where: Path, repo: Path) -> str:
    """--hub names a repo car set up (or a directory in one), and no hub holds that repo."""
    what = "a repo" if where == repo else f"in the repo {repo}, which"
    return (f"no hub at {where}; it is {what} car set up (mode: repo): pass the hub root (the directory "
            f"above the repos) as --hub")


def inside_hub_repo(where: Path, repo: Path, hub_root: Path) -> str:
    """`hub init` refused in (or below) a repo of another hub."""
    what = "one of the repos" if where == repo else f"inside {repo}, one of the repos"
    return (f"{where} is {what} of the hub at {hub_root}; a hub goes in the directory above its repos: "
            f"use that one (`car hub scan --hub {hub_root}`)")


def inside_repo(where: Path, repo: Path) -> str:
    """`hub init` refused in (or below) a repo car set up (`car init`)."""
    what = "a repo" if where == repo else f"inside the repo {repo}, which"
    return (f"{where} is {what} car already set up (mode: repo); a hub goes in the directory above its repos "
            f"(e.g. `car hub init --hub {repo.parent}`)")


def _hub_dir(args: argparse.Namespace) -> Tuple[Path, bool]:
    """The hub root --hub names (which must be a directory: a typo creates nothing), or the CWD;
    and whether --hub named it."""
    explicit: Optional[Path] = getattr(args, "hub", None)
    root = Path(explicit or Path.cwd()).resolve()
    if explicit is not None and not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise UsageError(BAD_HUB_PATH.format(where=root, what=what))
    return root, explicit is not None


def _hub_above(path: Path) -> Optional[HubConfig]:
    """The hub config nearest upward from `path`, if that nearest config is a hub's and readable."""
    config = nearest_config(path)
    return config if isinstance(config, HubConfig) else None


def hub_config(args: argparse.Namespace, create: bool = False) -> HubConfig:
    """The hub config from --hub or the nearest one upward. With `create` (scan, serve), a directory
    with no config in or above it is made a hub root, as `hub init` would (DESIGN §4); one inside a
    hub or a set-up repo never is, and a --hub path that does not exist was refused already."""
    from car.bootstrap import init_hub  # like the hub modules: only hub commands load it

    start, explicit = _hub_dir(args)
    path = HubLayout(start).config if explicit else find_config(start)
    if path is None or not path.is_file():
        if explicit and (not create or find_config(start) is not None):
            raise ConfigError(_no_hub_at(start))
        if not create:
            raise ConfigError(NO_HUB.format(car=CAR_DIR, cfg=CONFIG_NAME, where=start))
        init_hub(start)
        _note(MADE_HUB.format(where=start))
        path = HubLayout(start).config
    config = load_config(path)
    if not isinstance(config, HubConfig):
        if explicit:  # WRONG_MODE_HUB_CMD's advice is to pass --hub, which this did
            raise UsageError(_no_hub_at(start))
        command = getattr(args, "hub_command", None) or "serve"
        raise UsageError(WRONG_MODE_HUB_CMD.format(cmd=command, path=path))
    for warning in config.warnings:
        _note(f"warning: {warning}")
    return config


def _no_hub_at(path: Path) -> str:
    """Why --hub `path` names no hub, and what to pass instead: the hub or repo it is in, if any."""
    repo = enclosing_repo(path)
    outer = _hub_above(repo.parent if repo is not None else path)  # at or above: it holds the repo too
    if outer is not None:
        return NO_HUB_INSIDE.format(where=path, root=outer.root)
    if repo is not None:
        return no_hub_in_repo(path, repo)
    return NO_HUB_AT.format(where=path)


def cmd_hub_init(args: argparse.Namespace) -> int:
    from car.bootstrap import init_hub

    root, _ = _hub_dir(args)
    _refuse_nested_hub(root)
    report = init_hub(root)
    for action in report.actions:
        print(action)
    print(f"hub ready at {root}; `car hub scan` finds the git repos one level down")
    return 0


def _refuse_nested_hub(root: Path) -> None:
    """A hub inside a set-up repo or inside another hub would take over the config lookup of what is
    below it (the nearest config wins): refuse, naming what `root` is inside."""
    from car.discovery import repo_holding

    repo = enclosing_repo(root)
    if repo is not None:
        outer = _hub_above(repo.parent)
        if outer is not None and repo_holding(outer.repos_root, repo) == repo:
            raise UsageError(inside_hub_repo(root, repo, outer.root))
        raise UsageError(inside_repo(root, repo))
    found = find_config(root)
    if found is None:
        return
    # a repo's config was enclosing_repo's above; one that cannot be read: its ConfigError names the file
    config = load_config(found)
    if config.root != root:  # (the hub itself: init is idempotent)
        repo = repo_holding(config.repos_root, root)
        raise UsageError(inside_hub_repo(root, repo, config.root) if repo is not None
                         else INSIDE_HUB.format(where=root, root=config.root))


def _supervisor(config: HubConfig, **kw: Any) -> HubSupervisor:
    from car.hub import HubSupervisor

    return HubSupervisor(config, **kw)


def cmd_hub_scan(args: argparse.Namespace) -> int:
    hub = _supervisor(hub_config(args, create=True))
    hub.start(auto_run=False, watch=False)  # the hub lock: a live hub serving this root scans through its API
    try:
        snapshot = hub.last_scan or hub.snapshot()
    finally:
        hub.shutdown()
    _print(snapshot, args.json, hub.config)
    failed = [r.id for r in snapshot.repos if r.status.value == "init_error"]
    if failed:  # the table says which and why; the exit code tells a script something needs a fix
        raise InitError(INIT_FAILED_IN_SCAN.format(ids=", ".join(failed)))
    return 0


def cmd_hub_status(args: argparse.Namespace) -> int:
    config = hub_config(args)
    _print(_supervisor(config, max_workers=1).inspect(), args.json, config)
    return 0


def cmd_hub_serve(args: argparse.Namespace) -> int:
    """Bind the port, start the supervisor, then serve the API and page (car.web) until SIGINT/SIGTERM."""
    import threading  # like the hub modules: only `hub serve` loads them

    from car.signals import on_stop_signals

    config = hub_config(args, create=True)
    host = args.host if getattr(args, "host", None) is not None else config.server.host
    port = args.port if getattr(args, "port", None) is not None else config.server.port
    base_path = args.base_path if getattr(args, "base_path", None) is not None else config.server.base_path
    allow_remote = bool(getattr(args, "allow_remote", False))
    try:
        web: Any = importlib.import_module("car.web.server")
    except ImportError:  # a build without the web layer: the supervisor alone
        web = None
    if web is not None:
        web.check_bind(host, allow_remote)  # a refused bind exits before anything starts
    stop = threading.Event()
    hub = _supervisor(config)

    def start_hub() -> None:
        hub.start()
        snapshot = hub.snapshot()
        _note(f"hub at {config.root}: {len(snapshot.repos)} repos, "
              f"{sum(r.status.value == 'running' for r in snapshot.repos)} running")

    with on_stop_signals(stop.set):  # from before the hub's start: a signal then still shuts it down
        try:
            if web is not None:  # the hub starts once the socket is bound: a busy port starts no repo
                web.serve_hub(hub, host, port, allow_remote=allow_remote, base_path=base_path,
                              ready=web.print_ready, stop=stop, listening=start_hub)
            else:
                start_hub()
                _note("no web server in this build; the supervisor runs until Ctrl-C")
                stop.wait()
        finally:
            hub.shutdown()
    return 0


# output --------------------------------------------------------------------------------
def _last_run(entry: RepoEntry) -> str:
    if entry.current_run_id is not None:
        return f"#{entry.current_run_id} running since {entry.current_run_started_at}"
    if entry.last_run_id is None:
        return "-"
    how = f"exit {entry.last_exit_code}" if entry.last_exit_code is not None else entry.stop_reason or "no exit code"
    return f"#{entry.last_run_id} {how} at {entry.last_run_finished_at or '?'}"


def render_table(snapshot: HubSnapshot) -> List[str]:
    """The repo table of `hub scan`/`hub status`: id, path, status, last run, TODO done/total."""
    rows = [("ID", "PATH", "STATUS", "LAST RUN", "TODO")]
    rows += [(r.id, r.path, r.status.value, _last_run(r), f"{r.todo_done}/{r.todo_total}")
             for r in snapshot.repos]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4]
             for row in rows]
    lines += [f"{r.id}: {r.error}" for r in snapshot.repos if r.error]
    return [line.rstrip() for line in lines]


def _print(snapshot: HubSnapshot, as_json: bool, config: HubConfig) -> None:
    if as_json:
        print(json.dumps(snapshot.to_json(), indent=2))
        return
    if not snapshot.repos:
        print(NO_REPOS.format(root=config.repos_root))
        return
    for line in render_table(snapshot):
        print(line)
    print(f"{len(snapshot.repos)} repos; last scan {snapshot.last_scan_at or 'never'}")


# parser --------------------------------------------------------------------------------
def _add(commands: Any, name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
    p = commands.add_parser(name, help=help, description=help)
    p.add_argument("--hub", type=Path, default=argparse.SUPPRESS, metavar="PATH",
                   help="hub root (default: nearest .codex-autorunner/ upward from here)")
    p.set_defaults(func=func)
    return p


def add_hub_commands(commands: Any) -> None:
    """`car hub ...`, added to the top-level subparsers."""
    from car.cli_serve import add_server_options
    from car.cli_usage import add_hub_usage_command

    text = "supervise the git repos one level below this directory (a hub root)"
    hub = commands.add_parser("hub", help=text, description=text)
    sub = hub.add_subparsers(dest="hub_command", metavar="HUB_COMMAND")
    sub.required = True
    _add(sub, "init", cmd_hub_init, "make this directory a hub root: config, empty manifest, .gitignore")
    p = _add(sub, "scan", cmd_hub_scan, "find new repos, initialize them, print the repo table")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = _add(sub, "status", cmd_hub_status, "print the repo table (no scan, no hub lock)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_hub_usage_command(sub)
    p = _add(sub, "serve", cmd_hub_serve, "run the supervisor and serve the hub's page and API")
    add_server_options(p)
