#!/usr/bin/env python3
"""Engine figures: cold start of car.pyz next to bare python, and the loop's overhead per run.

Run from the project root: python3 bench/bench_engine.py [--runs 200]. Prints figures; asserts nothing.
Targets: `car.pyz --version` under 3x `python3 -c pass`; loop overhead under 20 ms per run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def timed(argv: list, n: int, env: dict) -> list:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        out.append(time.perf_counter() - t)
    return out


def bench_cold_start(n: int) -> None:
    pyz = ROOT / "dist" / "car.pyz"
    if not pyz.exists():
        subprocess.run([sys.executable, str(ROOT / "build.py")], check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, SHIV_ROOT=tmp)
        env.pop("PYTHONPATH", None)
        timed([sys.executable, str(pyz), "--version"], 2, env)  # first run extracts into SHIV_ROOT
        bare, car = [], []
        for _ in range(n):  # interleaved, so machine noise hits both alike
            bare += timed([sys.executable, "-c", "pass"], 1, env)
            car += timed([sys.executable, str(pyz), "--version"], 1, env)
    b, c = statistics.median(bare) * 1000, statistics.median(car) * 1000
    print(f"cold start: python3 -c pass {b:.1f} ms, car.pyz --version {c:.1f} ms, "
          f"ratio {c / b:.2f}x (target < 3x)")


def bench_loop(runs: int) -> None:
    import yaml

    from car.bootstrap import init_repo
    from car.config import load_config
    from car.engine import Engine

    true = shutil.which("true") or "/bin/true"
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        init_repo(repo)
        cfg_path = repo / ".codex-autorunner" / "config.yml"
        cfg = yaml.safe_load(cfg_path.read_text())
        cfg["codex"] = {"binary": true, "args": []}
        cfg["runner"].update(sleep_seconds=0, stop_after_runs=runs, no_progress_runs=None)
        cfg_path.write_text(yaml.safe_dump(cfg))
        config = load_config(cfg_path)
        prompt = repo / ".codex-autorunner" / "prompt.last.txt"
        prompt.write_text("x" * 4000)

        # the floor: the same agent spawned the same way, with nothing around it
        floor = []
        for _ in range(runs):
            t = time.perf_counter()
            with prompt.open("rb") as stdin:
                p = subprocess.Popen([true], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=repo)
                p.stdout.read()
                p.wait()
            floor.append(time.perf_counter() - t)
        t = time.perf_counter()
        Engine(config).run_loop()
        total = time.perf_counter() - t
    per_run, bare = total / runs * 1000, statistics.mean(floor) * 1000
    print(f"loop: {runs} runs of `true` in {total:.2f} s = {per_run:.1f} ms per run; bare spawn "
          f"{bare:.1f} ms; car's own overhead {per_run - bare:.1f} ms per run (target < 20 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--starts", type=int, default=20)
    args = parser.parse_args()
    bench_cold_start(args.starts)
    bench_loop(args.runs)


if __name__ == "__main__":
    main()
