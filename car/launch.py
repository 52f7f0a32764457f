"""The console entry point: answers --version before importing the engine (cold start)."""

from __future__ import annotations

import sys

from car import __version__


def main(argv: list[str] | None = None) -> int:  # no typing import: --version starts faster
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        print(f"car {__version__}")
        return 0
    from car.cli import main as cli_main  # YAML and the engine cost more than python's own start

    return cli_main(args)
