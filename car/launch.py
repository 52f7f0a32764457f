"""The console entry point: answers --version before importing the engine (cold start)."""

from __future__ import annotations

import errno  # built into the interpreter: no file to find or compile
import os  # loaded by the interpreter's own start anyway: costs nothing here
import sys

from car import __version__

# what writing to a reader that has gone says: a closed pipe (`| head -1`), a hung-up terminal (EIO),
# a terminal whose device is gone (ENXIO), a socket closed by its peer
GONE = frozenset({errno.EPIPE, errno.EIO, errno.ENXIO, errno.ECONNRESET, errno.ENOTCONN})


class QuietStream:
    """sys.stdout or sys.stderr whose reader may go away. The first write that finds it gone points
    the file descriptor at /dev/null: the command ends as it would have (its cleanup done, its exit code
    its own), with no traceback, and Python's flush at exit has nowhere left to fail (which would make
    the exit code 120). Any other OSError (a full disk) is raised as before."""

    def __init__(self, stream: object) -> None:
        self.stream = stream
        self.gone = False  # a printer that never ends (`car log --follow`) stops when it is

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)  # type: ignore[attr-defined]
        except OSError as exc:
            self._went(exc)
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()  # type: ignore[attr-defined]
        except OSError as exc:
            self._went(exc)

    def _went(self, exc: OSError) -> None:
        if exc.errno not in GONE:
            raise exc
        self.gone = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self.stream.fileno())  # type: ignore[attr-defined]
        except (OSError, ValueError):
            pass  # a stream without a descriptor: nothing of it outlives this process to flush at exit
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> object:  # fileno, isatty, encoding...: the stream's own
        return getattr(self.stream, name)


def _run_cli(args: list[str]) -> int:
    """Run car.cli's main, imported with the garbage collector off; what the imports made is frozen (issue 5).

    Importing makes tens of thousands of objects and no garbage worth a collection: the collections
    it set off cost a few ms, and at exit Python's final one went through them all again, ~8 ms of a
    short command. Frozen, they are never looked at again; they live as long as the process anyway.
    The collector is back on before any command runs (a loop or the hub runs for days)."""
    import gc  # built into the interpreter

    gc.disable()
    try:
        from car.cli import main as cli_main  # YAML and the engine cost more than python's own start
    finally:
        gc.freeze()
        gc.enable()
    return cli_main(args)


def main(argv: list[str] | None = None) -> int:  # no typing import: --version starts faster
    args = sys.argv[1:] if argv is None else argv
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (QuietStream(s) if s is not None else s for s in streams)
    try:
        if args == ["--version"]:
            print(f"car {__version__}")
            return 0
        return _run_cli(args)
    finally:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()  # here, where a reader that has gone is quiet; not in Python's exit
        sys.stdout, sys.stderr = streams
