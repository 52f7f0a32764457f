"""The console entry point: answers --version before importing the engine (cold start)."""

from __future__ import annotations

import os  # loaded by the interpreter's own start anyway: costs nothing here
import sys

from car import __version__


def main(argv: list[str] | None = None) -> int:  # no typing import: --version starts faster
    args = sys.argv[1:] if argv is None else argv
    try:
        if args == ["--version"]:
            print(f"car {__version__}")
            return 0
        from car.cli import main as cli_main  # YAML and the engine cost more than python's own start

        return cli_main(args)
    except BrokenPipeError:
        # the reader left (`car hub status | head -1`): stop quietly, as Unix tools do. What is still
        # buffered would fail again when Python flushes stdout at exit, so stdout goes to devnull
        # (the recipe in Python's docs, "Note on SIGPIPE")
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
