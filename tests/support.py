"""Helpers shared by the tests: temp repos wired to the fake agent, bounded waits, pids."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Union

import yaml

from car.bootstrap import init_repo

TESTS = Path(__file__).resolve().parent
PROJECT = TESTS.parent
FAKE_AGENT = TESTS / "fake_agent.py"
FAST_RUNNER = {"sleep_seconds": 0, "kill_grace_seconds": 2, "no_progress_runs": 3}


def build_pyz(out: Path) -> Path:
    """car.pyz built from this tree by build.py (dist/ is left alone)."""
    subprocess.run([sys.executable, str(PROJECT / "build.py"), "--output", str(out)], check=True,
                   timeout=300, capture_output=True)
    return out


def clean_python(where: Path) -> Path:
    """A venv's python with nothing in its site-packages: a user's fresh interpreter. (This machine's
    own python runs a .pth at every start that imports certifi, ~25 ms, and with it pathlib and re.)"""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120,
                   capture_output=True)
    return where / "bin" / "python"


def wait_until(predicate: Callable[[], Any], timeout: float = 10, what: Union[str, Callable[[], str]] = "condition",
               interval: float = 0.02) -> Any:
    """Poll `predicate` until truthy; fail naming `what` (called then, if a function) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")
        time.sleep(interval)


def backdate(root: Path, seconds: float = 3600) -> None:
    """Age every file under root: a file changed within the last second is re-read, not trusted by its stat."""
    when = time.time() - seconds
    for path in root.rglob("*"):
        os.utime(path, (when, when), follow_symlinks=False)


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True,
                          timeout=30).stdout


def make_git_repo(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q")
    git(root, "config", "user.email", "test@example.invalid")
    git(root, "config", "user.name", "test")
    return root


def update_config(root: Path, **sections: Dict[str, Any]) -> None:
    path = root / ".codex-autorunner" / "config.yml"
    data = yaml.safe_load(path.read_text()) or {}
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(data.get(name), dict):
            data[name].update(values)
        else:
            data[name] = values
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def write_todo(root: Path, items: Iterable[str] = ("first", "second"), done: Iterable[str] = ()) -> None:
    lines = ["# TODO", ""] + [f"- [x] {d}" for d in done] + [f"- [ ] {i}" for i in items]
    (root / ".codex-autorunner" / "TODO.md").write_text("\n".join(lines) + "\n")


def make_repo(root: Path, items: Iterable[str] = ("first", "second"), **runner: Any) -> Path:
    """A git repo, initialized, whose agent is the fake agent and whose loop does not sleep."""
    make_git_repo(root)
    init_repo(root)
    update_config(root, codex={"binary": sys.executable, "args": [str(FAKE_AGENT)]},
                  runner={**FAST_RUNNER, **runner})
    write_todo(root, items)
    return root


def car_env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def car_cmd(*args: str) -> list:
    return [sys.executable, "-m", "car", *args]


def run_car(*args: str, cwd: Path, timeout: float = 60, env: Optional[Dict[str, str]] = None,
            **popen: Any) -> subprocess.CompletedProcess:
    return subprocess.run(car_cmd(*args), cwd=cwd, env=env or car_env(), capture_output=True,
                          text=True, timeout=timeout, **popen)


def default_sighup() -> None:
    """In a child before exec: SIGHUP at its default, even if pytest itself runs under nohup."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def start_car(repo: Path, *args: str, **env: str) -> subprocess.Popen:
    """`car ARGS` in the background, its stdout and stderr as one text pipe."""
    return subprocess.Popen(car_cmd(*args), cwd=repo, env=car_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=default_sighup)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def read_pids(path: Path) -> list:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def hang_agent(monkeypatch: Any, tmp_path: Path) -> Path:
    """Make the fake agent hang with a child of its own; returns the file their pids go to."""
    pidfile = tmp_path / "pids"
    monkeypatch.setenv("FAKE_AGENT_MODE", "hang")
    monkeypatch.setenv("FAKE_AGENT_PIDFILE", str(pidfile))
    return pidfile


def agent_and_child(pidfile: Path) -> list:
    """The pids of a hang agent (hang_agent) and its child, once both are up."""
    return wait_until(lambda: len(read_pids(pidfile)) == 2 and read_pids(pidfile), 20, "agent and child")


@contextmanager
def unwritable(path: Path) -> Iterator[Path]:
    """`path` (a file or a directory) that nothing, root included, may change: `chattr +i` for root
    (which chmod does not stop), else chmod, of the directory that holds a file too (a rename would
    replace it); as it was afterwards."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True, timeout=30)
        undo = ["chattr", "-i", str(path)]
    else:
        held = path if path.is_dir() else path.parent
        mode = held.stat().st_mode
        held.chmod(0o555)
        undo = None
    try:
        yield path
    finally:
        if undo:
            subprocess.run(undo, check=True, timeout=30)
        else:
            held.chmod(mode)
