"""Shared by the tests that drive the REAL Codex CLI: finding the binary, wiring a repo to it,
scripted model turns, what a run left on disk, and what is left of a run in /proc."""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from car.layout import RepoLayout
from car.logs import run_output

from model_server import ModelServer, write_codex_home
from support import PROJECT, update_config

CODEX_CANDIDATES = (PROJECT / "tests/codex/node_modules/.bin/codex",
                    Path("/tmp/codexinst/node_modules/.bin/codex"))
CODEX_ARGS = ["exec", "--dangerously-bypass-approvals-and-sandbox", "--json", "-"]
CAR_TIMEOUT_SECONDS = 90  # one `car` command; a run here takes ~0.6 s per model turn
TICK = r"sed -i '0,/- \[ \]/s//- [x]/' .codex-autorunner/TODO.md"  # checks off the first item
CODEX_MISSING = ("codex not found at {where}: run `npm install` in tests/codex/ "
                 "(keep optional deps), or set CAR_CODEX_BIN")


def codex_candidates() -> tuple:
    """$CAR_CODEX_BIN alone when set, else the pinned install (tests/codex), then a local one."""
    if os.environ.get("CAR_CODEX_BIN"):
        return (Path(os.environ["CAR_CODEX_BIN"]),)
    return CODEX_CANDIDATES


def find_codex() -> Path:
    """The codex launcher; a missing binary FAILS the test (these tests never skip)."""
    candidates = codex_candidates()
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        pytest.fail(CODEX_MISSING.format(where=", ".join(map(str, candidates))))
    return found


def use_real_codex(root: Path, **runner: object) -> Path:
    """Point a make_repo() repo at the real codex with the default args; returns the binary."""
    codex = find_codex()
    update_config(root, codex={"binary": str(codex), "args": list(CODEX_ARGS)})
    if runner:
        update_config(root, runner=dict(runner))
    return codex


def codex_env(codex_home: Path) -> Dict[str, str]:
    """What the agent's environment needs besides ours: CODEX_HOME, and a HOME of its own so the
    tool commands' `bash -lc` does not source the developer's ~/.bashrc (pyenv init there made
    every tool command slow, and a stale pyenv lock made each one wait 60 s)."""
    user_home = Path(codex_home).parent / "user-home"
    user_home.mkdir(parents=True, exist_ok=True)
    return {"CODEX_HOME": str(codex_home), "HOME": str(user_home)}


# scripts, the server, what a run left on disk ---------------------------------------------
def usage(inp: int, cached: int, out: int, reasoning: int) -> Dict[str, int]:
    return {"input_tokens": inp, "cached_tokens": cached, "output_tokens": out,
            "reasoning_tokens": reasoning}


def tick_run(message: str, base: int) -> List[Dict[str, Any]]:
    """One car run as the model plays it: tick the first open item, then say `message`."""
    return [{"shell": TICK, "usage": usage(base, base // 4, 40, 8)},
            {"message": message, "usage": usage(base + 500, base // 2, 25, 0)}]


def tick_run_tokens(base: int) -> Dict[str, int]:
    """What car must record for tick_run(…, base): Codex sums the turn's two requests."""
    return {"input_tokens": 2 * base + 500, "cached_input_tokens": base // 4 + base // 2,
            "output_tokens": 65, "reasoning_output_tokens": 8}


@contextmanager
def model(tmp_path: Path, script: Any, stream_idle_timeout_ms: int = 5000,
          ) -> Iterator[Tuple[ModelServer, Path]]:
    """The scripted server (a list of turns, or {text: turns}) and a CODEX_HOME under tmp_path
    that points Codex at it."""
    with ModelServer(script, max_requests=30, max_lifetime_seconds=180) as srv:
        yield srv, write_codex_home(tmp_path / "codex-home", srv.base_url, stream_idle_timeout_ms)


def run_texts(repo: Path, run_id: int) -> List[str]:
    """A run's log lines without timestamps and markers."""
    return run_output(repo / ".codex-autorunner/codex-autorunner.log", 3, run_id).splitlines()


def runs_jsonl(repo: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in RepoLayout(repo).runs.read_text().splitlines()]


def user_prompt(body: Dict[str, Any]) -> str:
    """The car prompt inside one Responses request (Codex adds its own messages around it)."""
    texts = [c.get("text", "") for item in body.get("input", []) if item.get("role") == "user"
             for c in item.get("content", []) if isinstance(c, dict)]
    return next(t for t in texts if "<PREVIOUS_RUN_OUTPUT>" in t)


def free_port() -> int:
    """A port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# /proc probes (Linux; these tests run on Linux CI) ------------------------------------------
def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None


def process_environ(pid: int) -> Dict[str, str]:
    raw = _read(f"/proc/{pid}/environ") or b""
    pairs = (item.decode("utf-8", "replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def process_argv(pid: int) -> List[str]:
    raw = _read(f"/proc/{pid}/cmdline") or b""
    return [arg.decode("utf-8", "replace") for arg in raw.split(b"\0") if arg]


def is_zombie(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat")
    return stat is None or stat.rsplit(b")", 1)[-1].split()[0] == b"Z"


def live_pids() -> List[int]:
    me = os.getpid()
    return [int(e.name) for e in os.scandir("/proc")
            if e.name.isdigit() and int(e.name) != me and not is_zombie(int(e.name))]


def pids_with_env(key: str, value: str) -> List[int]:
    """Live processes whose environment holds key=value (e.g. the run's CAR_RUN_TOKEN)."""
    needle = f"{key}={value}".encode()
    return [pid for pid in live_pids() if needle in (_read(f"/proc/{pid}/environ") or b"").split(b"\0")]


def pids_running(argv: List[str], env_key: str, env_value: str) -> List[int]:
    """Live processes with exactly `argv` whose environment holds env_key=env_value."""
    return [pid for pid in pids_with_env(env_key, env_value) if process_argv(pid) == argv]


def describe(pids: List[int]) -> str:
    """`pid: argv` per process on one line, each clipped (Codex's shell snapshot is 2 KB)."""
    return "; ".join(f"{pid}: {' '.join(' '.join(process_argv(pid)).split())[:100]}"
                     for pid in pids) or "none"
