#!/usr/bin/env python3
"""Run log figures: finding an early run in a large log, and what writing it cost.

Run from the project root: python3 bench/bench_logs.py [--mb 40] [--repeat 3]. Prints figures;
asserts nothing. The logs are written by a real RunLog into a temp dir: one file of --mb MB
(thousands of runs, never rolled over), and the same runs in a log that rolls over every --mb/3.9 MB
(3 backups, the current file nine tenths full), where the oldest run kept sits in the oldest backup.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from car.logs import RunLog, last_run_output, list_runs, log_files, log_tail, run_ending, run_output  # noqa: E402

LINES_PER_RUN = 100
LINE = "x" * 72  # with its stamp and run id, a line of ~110 bytes, as an agent's usually is


def write_log(path: Path, mb: int, max_bytes: int, backup_count: int) -> tuple:
    """Runs of LINES_PER_RUN lines until the log and its backups hold `mb` MB; (runs, seconds, lines)."""
    log = RunLog(path, max_bytes=max_bytes, backup_count=backup_count)
    t = time.perf_counter()
    run_id, lines, size = 0, 0, 0
    while size < mb * 1_000_000:
        run_id += 1
        log.start_run(run_id)
        for i in range(LINES_PER_RUN):
            size += len(log.write(f"output {run_id}.{i} {LINE}", run_id)) + 1
        log.end_run(run_id, "code 0")
        lines += LINES_PER_RUN + 2
    log.close()
    return run_id, time.perf_counter() - t, lines


def timed(what: Callable[[], object], repeat: int) -> tuple:
    """(median seconds, the last result)."""
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = what()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def report(label: str, seconds: float, note: str = "") -> None:
    print(f"  {label:<46} {seconds * 1000:9.1f} ms {note}")


def bench_one_file(tmp: Path, mb: int, repeat: int) -> None:
    path = tmp / "one" / "car.log"
    runs, seconds, lines = write_log(path, mb, max_bytes=0, backup_count=0)
    size = path.stat().st_size
    print(f"one file: {size / 1e6:.1f} MB, {runs} runs, {lines} lines; written by RunLog in {seconds:.2f} s "
          f"({seconds / lines * 1e6:.2f} us per line)")
    s, text = timed(lambda: last_run_output(path, 0, 1), repeat)
    report("last_run_output(run 1) (read from the end)", s, f"({len(text.splitlines())} lines)")
    s, _ = timed(lambda: run_output(path, 0, 1), repeat)
    report("run_output(run 1) (full forward scan)", s)
    s, ending = timed(lambda: run_ending(path, 0, 1), repeat)
    report("run_ending(run 1)", s, f"({ending[0]})")
    middle = runs // 2
    s, _ = timed(lambda: last_run_output(path, 0, middle), repeat)
    report(f"last_run_output(run {middle}) (the middle)", s)
    s, _ = timed(lambda: last_run_output(path, 0, runs), repeat)
    report(f"last_run_output(run {runs}) (the newest, as usual)", s)
    n = lines // 2
    s, got = timed(lambda: log_tail(path, 0, n), repeat)
    report(f"log_tail({n} lines)", s, f"({len(got)} lines)")


def bench_backups(tmp: Path, mb: int, repeat: int) -> None:
    path = tmp / "rolled" / "car.log"
    runs, _, _ = write_log(path, mb, max_bytes=int(mb * 1_000_000 / 3.9), backup_count=3)
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in log_files(path, 3))
    first = list_runs(path, 3)[0].id  # the oldest run still kept
    print(f"rolled over: {sizes}; runs {first}..{runs}")
    s, text = timed(lambda: last_run_output(path, 3, first), repeat)
    report(f"last_run_output(run {first}) (in the oldest backup)", s, f"({len(text.splitlines())} lines)")
    s, ending = timed(lambda: run_ending(path, 3, first), repeat)
    report(f"run_ending(run {first})", s, f"({ending[0]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_one_file(Path(tmp), args.mb, args.repeat)
        bench_backups(Path(tmp), args.mb, args.repeat)


if __name__ == "__main__":
    main()
