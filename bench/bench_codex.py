#!/usr/bin/env python3
"""car's own overhead around a REAL Codex run: `car once` vs `codex exec` alone, same script.

Run from the project root: python3 bench/bench_codex.py [--runs 20] [--script tool|message].
Both sides talk to one scripted model server (tests/model_server.py), with one CODEX_HOME, in the
same repo, interleaved so machine noise hits both alike. Prints figures; asserts nothing.
Target: car adds under 50 ms per run (`car once` includes python startup, config, log, state).
`car run` over --loop-runs runs shows the same cost as a loop pays it: the start once, then per run.
`car once` runs the built car.pyz (what users run), under this machine's python and under a clean
venv's; "python + car's stdlib" is a clean interpreter importing only the stdlib modules car needs,
the floor of any Python program built like car.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from codex_support import CODEX_ARGS, codex_candidates, codex_env  # noqa: E402
from model_server import ModelServer, write_codex_home  # noqa: E402
from support import build_pyz, car_env, clean_python, make_repo, update_config  # noqa: E402

SCRIPTS = {  # one run as the model plays it
    "tool": [{"shell": "true"}, {"message": "done"}],
    "message": [{"message": "done"}],
}
RUN_TIMEOUT_SECONDS = 60
# the stdlib modules `car once` imports (run logs do not use logging: car.logfile)
STDLIB = "import argparse, dataclasses, json, pathlib, queue, shutil, subprocess, threading, typing"


def find_codex() -> Path:
    found = next((p for p in codex_candidates() if p.is_file()), None)
    if found is None:
        sys.exit(f"codex not found at {', '.join(map(str, codex_candidates()))}: "
                 "run `npm install` in tests/codex/")
    return found


def timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run_checked(argv: List[str], cwd: Path, env: Dict[str, str], stdin_path: Path) -> None:
    with stdin_path.open("rb") as stdin:
        proc = subprocess.run(argv, cwd=cwd, env=env, stdin=stdin, capture_output=True,
                              timeout=RUN_TIMEOUT_SECONDS)
    if proc.returncode != 0:
        sys.exit(f"{argv[0]} exited {proc.returncode}: {proc.stdout[-2000:]!r} {proc.stderr[-2000:]!r}")


def summary(name: str, seconds: List[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (f"{name:<22} median {statistics.median(ms):7.1f} ms  mean {statistics.mean(ms):7.1f} ms  "
            f"min {min(ms):7.1f} ms  max {max(ms):7.1f} ms")


def bench(runs: int, warmup: int, script_name: str, real_home: bool, loop_runs: int) -> None:
    codex = find_codex()
    version = subprocess.run([str(codex), "--version"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    turns = SCRIPTS[script_name]
    total_runs = (runs + warmup) * (4 + loop_runs)  # four sides run the agent once, `car run` loop_runs times
    with tempfile.TemporaryDirectory(prefix="car-bench-codex-") as tmp, \
            ModelServer(turns * total_runs, max_requests=len(turns) * total_runs + 10,
                        max_lifetime_seconds=RUN_TIMEOUT_SECONDS * total_runs) as srv:
        repo = make_repo(Path(tmp) / "repo", items=("never ticked",))
        loop_repo = make_repo(Path(tmp) / "loop-repo", items=("never ticked",))
        for path, stop_after in ((repo, None), (loop_repo, loop_runs)):
            update_config(path, codex={"binary": str(codex), "args": list(CODEX_ARGS)},
                          runner={"sleep_seconds": 0, "no_progress_runs": None, "stop_after_runs": stop_after})
        home = write_codex_home(Path(tmp) / "codex-home", srv.base_url)
        agent_env = codex_env(home)
        if real_home:
            agent_env.pop("HOME")
        env = car_env(**agent_env)
        prompt = Path(tmp) / "prompt.txt"  # the size of a rendered car prompt with small docs
        prompt.write_text((repo / ".codex-autorunner/prompt.txt").read_text())
        in_process = in_process_runner(repo, agent_env)
        pyz = str(build_pyz(Path(tmp) / "car.pyz"))
        clean = str(clean_python(Path(tmp) / "venv"))
        env["SHIV_ROOT"] = str(Path(tmp) / "shiv")
        env.pop("PYTHONPATH", None)

        def side(*argv: str, cwd: Path = repo) -> Callable[[], None]:
            return lambda: run_checked(list(argv), cwd, env, Path(os.devnull))

        sides = {
            "codex exec alone": lambda: run_checked([str(codex), *CODEX_ARGS], repo, env, prompt),
            "car once": side(sys.executable, pyz, "once"),
            "car once (clean venv)": side(clean, pyz, "once"),
            "Engine once (in-proc)": in_process,
            f"car run ({loop_runs} runs)": side(clean, pyz, "run", cwd=loop_repo),
            "clean python -c pass": side(clean, "-c", "pass"),
            "python + car's stdlib": side(clean, "-c", STDLIB),
            "car --version (clean)": side(clean, pyz, "--version"),
        }
        times: Dict[str, List[float]] = {name: [] for name in sides}
        for i in range(warmup + runs):
            for name, fn in sides.items():  # interleaved
                elapsed = timed(fn)
                if i >= warmup:
                    times[name].append(elapsed)

    print(f"{version}, script '{script_name}' ({len(turns)} model turn(s) per run), "
          f"{runs} runs per side after {warmup} warm-up, python {sys.version.split()[0]}, "
          f"HOME {'yours' if real_home else 'empty (tool shells skip ~/.bashrc)'}")
    for name, seconds in times.items():
        print(summary(name, seconds))
    alone = times["codex exec alone"]
    print("car once = python's start + the stdlib modules car imports + car's own start + the engine's work "
          "per run (Engine once)")
    floor = (statistics.median(times["python + car's stdlib"]) - statistics.median(times["clean python -c pass"]))
    print(f"python start (clean venv) {statistics.median(times['clean python -c pass']) * 1000:.1f} ms, "
          f"+ importing car's stdlib modules {floor * 1000:.1f} ms: the floor of a fresh Python process")
    for name in ("car once", "car once (clean venv)", "Engine once (in-proc)"):
        d_med = (statistics.median(times[name]) - statistics.median(alone)) * 1000
        d_mean = (statistics.mean(times[name]) - statistics.mean(alone)) * 1000
        print(f"added by {name:<22} median {d_med:+7.1f} ms  mean {d_mean:+7.1f} ms per run "
              f"(target < 50 ms)")
    loop = times[f"car run ({loop_runs} runs)"]
    per_run = (statistics.median(loop) / loop_runs - statistics.median(alone)) * 1000
    print(f"added by car run (clean venv), {loop_runs} runs in one loop: median {per_run:+7.1f} ms per run "
          f"(its start shared by {loop_runs} runs)")
    if loop_runs > 1:  # a loop of N runs less a loop of one (car once), per extra run: what each run adds
        marginal = ((statistics.median(loop) - statistics.median(times["car once (clean venv)"])) / (loop_runs - 1)
                    - statistics.median(alone)) * 1000
        print(f"added by each further run of a loop (car run less car once, per run): median {marginal:+7.1f} ms")
    python_start = statistics.median(times["clean python -c pass"])
    start = statistics.median(times["car --version (clean)"]) - python_start
    print(f"starting car.pyz at all (car --version less python -c pass): {start * 1000:.1f} ms; so "
          f"{(python_start + floor + start) * 1000:.1f} ms go before car's own modules load (python's start, "
          "car's stdlib modules, the pyz)")


def in_process_runner(repo: Path, agent_env: Dict[str, str]) -> Callable[[], None]:
    """One loop of one run through car's Engine in this process (no interpreter start)."""
    from car.config import load_config
    from car.engine import Engine
    from car.layout import RepoLayout
    from car.status import StopReason

    def run() -> None:
        saved = {key: os.environ.get(key) for key in agent_env}
        os.environ.update(agent_env)  # the agent inherits car's environment
        try:
            reason = Engine(load_config(RepoLayout(repo).config)).run_loop(once=True)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        if reason is not StopReason.STOP_AFTER_RUNS:
            sys.exit(f"in-process run ended with {reason.value}")

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--script", choices=sorted(SCRIPTS), default="tool")
    parser.add_argument("--loop-runs", type=int, default=5, help="runs of the one `car run` side (default 5)")
    parser.add_argument("--real-home", action="store_true",
                        help="keep your HOME (tool shells source your ~/.bashrc)")
    args = parser.parse_args()
    bench(args.runs, args.warmup, args.script, args.real_home, args.loop_runs)


if __name__ == "__main__":
    main()
