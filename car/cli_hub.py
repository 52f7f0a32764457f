"""`car hub init|scan|status|serve`: find the hub config, call car.hub, print."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional

from car.cli import WRONG_MODE_HUB_CMD
from car.config import HubConfig, find_config, load_config
from car.errors import ConfigError, UsageError
from car.layout import CAR_DIR, CONFIG_NAME, HubLayout

if TYPE_CHECKING:  # the hub modules load only for hub commands: repo commands start faster
    from car.hub import HubSupervisor
    from car.hub_state import HubSnapshot, RepoEntry

NO_HUB = ("no {car}/{cfg} in {where} or any parent directory; run `car hub init` in the hub root "
          "(the directory above the repos), or pass --hub PATH")
MADE_HUB = "no config found in {where} or above: made it a hub root (as `car hub init` would)"
INSIDE_HUB = ("{where} is inside the hub at {root}; run hub commands there (or pass --hub PATH to "
              "make a separate hub)")
NO_REPOS = "no repos yet: put git repos in {root} (one level down), then `car hub scan`"


def _note(message: str) -> None:
    print(f"car: {message}", file=sys.stderr)


def hub_config(args: argparse.Namespace, create: bool = False) -> HubConfig:
    """The hub config from --hub or the nearest one upward; with `create`, none found = make one here."""
    from car.bootstrap import init_hub  # like the hub modules: only hub commands load it

    explicit: Optional[Path] = getattr(args, "hub", None)
    start = Path(explicit or Path.cwd()).resolve()
    path = start / CAR_DIR / CONFIG_NAME if explicit else find_config(start)
    if path is None or not path.is_file():
        if not create:
            raise ConfigError(NO_HUB.format(car=CAR_DIR, cfg=CONFIG_NAME, where=start))
        init_hub(start)
        _note(MADE_HUB.format(where=start))
        path = HubLayout(start).config
    config = load_config(path)
    if not isinstance(config, HubConfig):
        command = getattr(args, "hub_command", None) or "serve"
        raise UsageError(WRONG_MODE_HUB_CMD.format(cmd=command, path=path))
    for warning in config.warnings:
        _note(f"warning: {warning}")
    return config


def cmd_hub_init(args: argparse.Namespace) -> int:
    from car.bootstrap import init_hub

    root = Path(getattr(args, "hub", None) or Path.cwd()).resolve()
    found = find_config(root)
    if found is not None:
        config = load_config(found)
        if not isinstance(config, HubConfig):
            raise UsageError(WRONG_MODE_HUB_CMD.format(cmd="init", path=found))
        if config.root != root:
            raise UsageError(INSIDE_HUB.format(where=root, root=config.root))
    report = init_hub(root)
    for action in report.actions:
        print(action)
    print(f"hub ready at {root}; `car hub scan` finds the git repos one level down")
    return 0


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
