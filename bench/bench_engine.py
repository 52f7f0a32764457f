#!/usr/bin/env python3
"""Engine figures: start of car.pyz next to bare python, and the loop's overhead per run.

Run from the project root: python3 bench/bench_engine.py [--runs 200] [--starts 20]. Prints figures;
asserts nothing. The pyz is built from this tree into a temp dir (dist/ is left alone).
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
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support import build_pyz, clean_python, make_repo, update_config  # noqa: E402


def timed(argv: list, n: int, env: dict, cwd: Optional[Path] = None) -> list:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        out.append(time.perf_counter() - t)
    return out


def bench_cold_start(n: int) -> None:
    """--version, and the repo commands whose cost is mostly start-up: status, and once of `true`;
    under this machine's python and under a clean venv's (no site-packages .pth), each next to its
    own bare start."""
    true = shutil.which("true") or "/bin/true"
    with tempfile.TemporaryDirectory() as tmp:
        pyz = build_pyz(Path(tmp) / "car.pyz")
        pythons = {"python3": sys.executable, "clean venv": str(clean_python(Path(tmp) / "venv"))}
        repo = make_repo(Path(tmp) / "repo", items=("never ticked",))
        update_config(repo, codex={"binary": true, "args": []}, runner={"no_progress_runs": None})
        time.sleep(1.1)  # a config a second old, as a user's is, gets its parse cached (car.config)
        env = dict(os.environ, SHIV_ROOT=str(Path(tmp) / "shiv"))
        env.pop("PYTHONPATH", None)
        sides = {}
        for label, python in pythons.items():
            sides.update({(label, "-c pass"): [python, "-c", "pass"],
                          (label, "car.pyz --version"): [python, str(pyz), "--version"],
                          (label, "car.pyz status"): [python, str(pyz), "status"],
                          (label, "car.pyz once (true)"): [python, str(pyz), "once"]})
        times: dict = {name: [] for name in sides}
        for i in range(n + 2):  # interleaved, so machine noise hits all alike; the first run unpacks
            for name, argv in sides.items():
                elapsed = timed(argv, 1, env, cwd=repo)
                if i >= 2:
                    times[name] += elapsed
    medians = {name: statistics.median(t) * 1000 for name, t in times.items()}
    for (label, what), ms in medians.items():
        bare = medians[(label, "-c pass")]
        print(f"start ({label}): {what:<20} median {ms:6.1f} ms  ({ms - bare:+6.1f} ms over its -c pass)")
    for label in pythons:
        ratio = medians[(label, "car.pyz --version")] / medians[(label, "-c pass")]
        print(f"cold start ({label}): car.pyz --version / -c pass = {ratio:.2f}x (target < 3x)")


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
