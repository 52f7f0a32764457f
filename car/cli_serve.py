"""`car serve`: one repo's API and page; at a hub root it is `car hub serve`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Optional

from car.config import MAX_PORT, HubConfig, find_config, load_config

SERVE_HELP = "serve this repo's web page and JSON API (at a hub root: the hub's)"


def whole_number(most: Optional[int] = None) -> Callable[[str], int]:
    """An option's type: a whole number from 0 (to `most`); anything else is argparse's usage error
    (exit 2), not a failure later (an OverflowError at bind, a silent empty --tail)."""
    wanted = f"a whole number from 0 to {most}" if most is not None else "a whole number >= 0"

    def parse(text: str) -> int:
        if not text.isdigit() or (most is not None and int(text) > most):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got '{text}'")
        return int(text)

    return parse


def add_server_options(p: argparse.ArgumentParser) -> None:
    """--host/--port/--allow-remote/--base-path; None means: take it from the config."""
    p.add_argument("--host", default=None, help="address to listen on (default: server.host, 127.0.0.1)")
    p.add_argument("--port", type=whole_number(MAX_PORT), default=None,
                   help="port (default: server.port, 4173; 0 = any free)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host; every request then needs the printed token")
    p.add_argument("--base-path", default=None, metavar="PATH",
                   help="URL prefix when behind a reverse proxy, e.g. /car (default: server.base_path)")


def add_serve_command(commands: Any) -> argparse.ArgumentParser:
    p = commands.add_parser("serve", help=SERVE_HELP, description=SERVE_HELP)
    p.add_argument("--repo", type=Path, default=argparse.SUPPRESS,
                   help="repo root (default: nearest .codex-autorunner/ upward from here)")
    add_server_options(p)
    p.set_defaults(func=cmd_serve)
    return p


def _at_hub_root(args: argparse.Namespace) -> bool:
    if getattr(args, "repo", None) is not None:
        return False
    found = find_config(Path.cwd())
    return found is not None and isinstance(load_config(found), HubConfig)


def cmd_serve(args: argparse.Namespace) -> int:
    if _at_hub_root(args):
        from car.cli_hub import cmd_hub_serve  # `serve` at a hub root is `hub serve` (DESIGN §4)

        return cmd_hub_serve(args)
    # here, not at the top: car.cli imports this module, and only `serve` needs the runner and the web
    from concurrent.futures import ThreadPoolExecutor

    from car.cli import repo_config
    from car.recovery import reconcile
    from car.runner import RepoRunner
    from car.web.server import check_bind, print_ready, serve_repo

    config = repo_config(args)
    host = args.host if args.host is not None else config.server.host
    port = args.port if args.port is not None else config.server.port
    base_path = args.base_path if args.base_path is not None else config.server.base_path
    check_bind(host, args.allow_remote)  # exit 2 before anything else happens
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="car-loop")
    runner = RepoRunner(config, executor)
    try:  # reconcile once the port is ours: a busy port changes nothing on disk
        serve_repo(runner, host, port, allow_remote=args.allow_remote, base_path=base_path,
                   ready=print_ready, listening=lambda: reconcile(config))
    finally:
        runner.close()  # ends a running agent's group and records the run (DESIGN §3 shutdown)
        executor.shutdown(wait=True)
    return 0
