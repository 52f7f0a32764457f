from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from car.layout import RepoLayout
from car.logfile import LogFile
from car.logs import (
    FileCursor,
    RunLog,
    follow,
    last_run_output,
    list_runs,
    log_files,
    log_tail,
    read_run,
    run_ending,
    run_output,
    tail,
)

from support import car_cmd, car_env, make_repo, run_car, update_config, wait_until


def write_runs(log: RunLog, first: int, last: int, lines: int = 50) -> None:
    for run_id in range(first, last + 1):
        log.start_run(run_id)
        for i in range(lines):
            log.write(f"output {run_id}.{i} " + "x" * 80, run_id)
        log.end_run(run_id, "code 0")


def test_last_run_output_reads_the_tail_and_matches_the_full_scan(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "car.log", max_bytes=0, backup_count=3)
    write_runs(log, 1, 30, lines=200)
    log.close()
    path = tmp_path / "car.log"
    assert last_run_output(path, 3, 30) == run_output(path, 3, 30)
    assert last_run_output(path, 3, 30).splitlines()[-1].startswith("output 30.199 ")


def test_last_run_output_finds_a_run_that_rotation_moved_to_a_backup(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "car.log", max_bytes=1000, backup_count=3)
    write_runs(log, 1, 2, lines=20)  # each run passes max_bytes: rolled over right after its end
    log.close()
    path = tmp_path / "car.log"
    assert not path.exists() or "run 2" not in path.read_text()
    assert last_run_output(path, 3, 2).splitlines()[0].startswith("output 2.0 ")
    assert [r.id for r in list_runs(path, 3)] == [1, 2]
    assert read_run(path, 3, 1)[-1].endswith("=== run 1 end (code 0) ===")


def test_tail_reads_lines_from_the_end(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("".join(f"line {i}\n" for i in range(100_000)))
    assert tail(path, 3) == ["line 99997", "line 99998", "line 99999"]
    assert tail(tmp_path / "missing", 3) == [] and tail(path, 0) == []



def test_follow_delivers_every_new_line_across_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "car.log"
    path.write_text("before follow\n")
    stop, seen = threading.Event(), []
    t = threading.Thread(target=lambda: seen.extend(follow(path, stop, poll_seconds=0.02)) or None,
                         daemon=True)
    log = RunLog(path, max_bytes=1, backup_count=3)  # any size is full: rollover_if_full rolls over
    try:
        t.start()
        # the follower starts at the end of the file: ping until it shows it is reading
        wait_until(lambda: log.write("ping") and any(s.endswith(" ping") for s in seen), 5, "the follower")
        log.write("one")
        log.write("two")
        log.rollover_if_full()  # "two" may still be unread in what is now the backup
        log.write("three")
        wait_until(lambda: any(s.endswith(" three") for s in seen), 5, "the line after the rotation")
    finally:
        stop.set()
        log.close()
        t.join(5)
    words = [s.rsplit(" ", 1)[1] for s in seen if not s.endswith(" ping")]
    assert words == ["one", "two", "three"] and "before follow" not in seen


def test_file_cursor_reads_appends_partial_lines_and_rotation(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("old 1\nold 2\n")
    cursor = FileCursor(log)
    cursor.mark(cursor.position())
    assert cursor.tail(1) == ["old 2"] and cursor.read_new() == []
    with log.open("a") as fh:
        fh.write("new 1\nnew 2 (half")
    assert cursor.read_new() == ["new 1"]
    with log.open("a") as fh:
        fh.write(")\nnew 3\n")
    log.rename(tmp_path / "x.log.1")  # rotation, as RotatingFileHandler does it
    log.write_text("next 1\n")
    assert cursor.read_new() == ["new 2 (half)", "new 3", "next 1"]
    cursor.close()


@pytest.mark.parametrize("rotations", [1, 2])
def test_file_cursor_catches_up_from_its_mark_across_rotations(tmp_path: Path, rotations: int) -> None:
    log = tmp_path / "x.log"
    log.write_text("a\n")
    cursor = FileCursor(log)
    cursor.mark(cursor.position())
    with log.open("a") as fh:
        fh.write("b\n")
    lines = ["b"]
    for line in "cd"[:rotations]:  # as RotatingFileHandler does it: x.log.1 -> .2, x.log -> .1
        for i in range(rotations, 0, -1):
            if (tmp_path / f"x.log.{i}").exists():
                (tmp_path / f"x.log.{i}").rename(tmp_path / f"x.log.{i + 1}")
        log.rename(tmp_path / "x.log.1")
        log.write_text(f"{line}\n")
        lines.append(line)
    assert cursor.read_new() == lines
    cursor.close()


def test_file_cursor_of_a_log_not_yet_made_starts_with_its_first_line(tmp_path: Path) -> None:
    missing = FileCursor(tmp_path / "none.log")
    missing.mark(missing.position())
    assert missing.read_new() == [] and missing.tail(5) == []
    (tmp_path / "none.log").write_text("first\n")
    assert missing.read_new() == ["first"]


def test_file_cursor_misses_no_line_when_the_log_rotated_twice_between_reads(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "x.log", max_bytes=1, backup_count=5)
    cursor = FileCursor(log.path)
    cursor.mark(cursor.position())
    log.write("before")
    assert cursor.read_new()[-1].endswith(" before")
    for run in (1, 2, 3):  # each run's end rolls the log over: two whole files pass unseen
        log.start_run(run)
        log.write("work", run)
        log.end_run(run, "code 0")
    log.write("after")
    seen = [line.split(" ", 1)[1] for line in cursor.read_new()]
    assert seen == [f(run) for run in (1, 2, 3) for f in (
        lambda r: f"=== run {r} start ===", lambda r: f"[run {r}] work", lambda r: f"=== run {r} end (code 0) ===")
    ] + ["after"]
    cursor.close()
    log.close()


def test_a_log_that_fails_mid_run_is_told_once_and_the_gap_is_marked(tmp_path: Path, capfd) -> None:
    link = tmp_path / "car.log"
    link.symlink_to("/dev/full")  # every write: ENOSPC, as on a full disk
    log = LogFile(link, backup_count=1)
    for i in range(50):
        log.write(f"line {i}")
    err = capfd.readouterr().err
    assert err.splitlines() == [f"car: cannot write {link} (No space left on device); its lines are dropped "
                                "until it can be written again"]
    link.unlink()  # the disk has room again
    log.write("back")
    log.close()
    lines = link.read_text().splitlines()
    assert lines[0].endswith(" car: 50 lines of this log were lost: it could not be written") and lines[1] == "back"
    assert capfd.readouterr().err == ""


def test_a_run_whose_log_fills_the_disk_ends_cleanly_with_one_line(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", items=("only",))
    (tmp_path / "full.log").symlink_to("/dev/full")
    update_config(repo, log={"path": str(tmp_path / "full.log")})
    proc = run_car("once", cwd=repo, env=car_env(FAKE_AGENT_MODE="flood", FAKE_AGENT_LINES="200"))
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stderr.splitlines() if "full.log" in line] == [
        f"car: cannot write {tmp_path / 'full.log'} (No space left on device); its lines are dropped until it "
        "can be written again"]
    assert "Traceback" not in proc.stderr
    state = json.loads(RepoLayout(repo).state.read_text())
    assert (state["status"], state["last_run_id"], state["last_exit_code"]) == ("idle", 1, 0)


@pytest.mark.parametrize("backups", [0, 2])
def test_rollover_keeps_backup_count_files_and_zero_means_never(tmp_path: Path, backups: int) -> None:
    path = tmp_path / "x.log"
    log = LogFile(path, backup_count=backups, max_bytes=100)
    for i in range(40):  # 40 lines of 11 bytes: the file passes 100 bytes four times
        log.write(f"line {i:5d}")
    if not backups:  # RotatingFileHandler's rule (DESIGN.md 4): no backups, no rollover; QA: lines were lost
        log.rollover()  # as the run log is told between runs
        log.close()
        assert [p.name for p in tmp_path.iterdir()] == ["x.log"]
        assert path.read_text().split() == [w for i in range(40) for w in ("line", str(i))]
        return
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.log"] + [f"x.log.{i}" for i in range(1, backups + 1)]
    assert path.stat().st_size <= 100
    files = [*(Path(f"{path}.{i}") for i in range(backups, 0, -1)), path]  # oldest first
    numbers = [int(word) for p in files for word in p.read_text().split() if word.isdigit()]
    # the newest lines, in order, none lost in between
    assert len(numbers) >= 1 + 9 * backups and numbers == list(range(40 - len(numbers), 40))


def test_the_tail_of_a_log_that_has_just_rolled_over_comes_from_its_backups(tmp_path: Path) -> None:
    """QA: `car log --tail`, the API and the page showed nothing after each rollover (one per run here)."""
    path = tmp_path / "car.log"
    log = RunLog(path, max_bytes=200, backup_count=3)
    write_runs(log, 1, 3, lines=2)
    log.close()
    assert path.stat().st_size == 0  # rolled over at the end of run 3
    every = [line for file in log_files(path, 3) for line in file.read_text().splitlines()]
    assert log_tail(path, 3, 6) == every[-6:] and every[-1].endswith("=== run 3 end (code 0) ===")
    assert log_tail(path, 3, 1000) == every and log_tail(path, 3, 0) == []

    repo = make_repo(tmp_path / "repo", items=("one",))
    update_config(repo, log={"max_bytes": 100})
    assert run_car("once", cwd=repo).returncode == 0
    shown = run_car("log", "--tail", "2", cwd=repo).stdout.splitlines()
    assert len(shown) == 2 and shown[-1].endswith("=== run 1 end (code 0) ===")


# what agents print that str.splitlines() would cut: a progress bar's \r, the other Unicode line
# boundaries, and text that would pass for car's markers once cut there (or as it is)
ODD_OUTPUT = [
    "Downloading  10%\rDownloading  50%\rDownloading 100%",
    "hello\r2026-11-24T23:28:49.069Z === run 1 end (code 0) ===\rxx",
    "hi\r2026-11-24T23:28:49.069Z === run 99 start ===",
    "=== run 1 start ===",
    "vt\x0bff\x0cfs\x1cgs\x1drs\x1enel\x85ls\u2028ps\u2029end",
]
FORGED_END = "bye\r2026-11-24T23:28:49.069Z === run 2 end (code 0) ===\rxx"


def write_odd_log(path: Path) -> tuple:
    """Run 1 ended, with ODD_OUTPUT; run 2 still going, after FORGED_END. Returns (run 1's lines, run 2's)."""
    log = RunLog(path, max_bytes=0, backup_count=3)
    log.start_run(1)
    run1 = [log.write(text, 1) for text in ["before", *ODD_OUTPUT, "after"]]
    log.end_run(1, "code 0")
    log.start_run(2)
    run2 = [log.write(FORGED_END, 2), log.write("still working", 2)]
    log.close()
    return run1, run2


def test_an_agents_cr_and_unicode_line_breaks_stay_in_their_line_and_forge_no_marker(tmp_path: Path) -> None:
    """QA: a progress bar's \\r split a line in two, and a forged end marker after it cut a run short."""
    path = tmp_path / "car.log"
    run1, run2 = write_odd_log(path)
    assert path.read_bytes().count(b"\n") == len(run1) + len(run2) + 3  # the writer: one line per line
    lines = read_run(path, 3, 1)
    assert lines[1:-1] == run1 and lines[-1].endswith(" === run 1 end (code 0) ===")
    assert read_run(path, 3, 2)[1:] == run2
    runs = list_runs(path, 3)
    assert [r.id for r in runs] == [1, 2] and runs[0].exit_code == 0
    assert runs[0].finished_at != "2026-11-24T23:28:49.069Z" and runs[1].finished_at is None
    assert run_ending(path, 3, 2) == (False, run2[-1].split(" ", 1)[0])
    assert log_tail(path, 3, len(run1) + len(run2) + 3) == [*lines, *read_run(path, 3, 2)]
    assert tail(path, 2) == run2
    output = "\n".join(["before", *ODD_OUTPUT, "after"])
    assert run_output(path, 3, 1) == output
    assert last_run_output(path, 3, 1) == output  # from the end of the log: no forged start honored
    assert last_run_output(path, 3, 2) == run_output(path, 3, 2) == f"{FORGED_END}\nstill working"


def test_car_log_prints_a_line_with_a_cr_as_one_line(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    path = repo / ".codex-autorunner" / "codex-autorunner.log"
    run1, _ = write_odd_log(path)
    every = path.read_bytes().decode("utf-8").split("\n")[:-1]  # the lines as written
    for args, want in ((["--run", "1"], every[:len(run1) + 2]), (["--tail", "3"], every[-3:])):
        shown = subprocess.run(car_cmd("log", *args), cwd=repo, env=car_env(), capture_output=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.decode("utf-8").split("\n") == [*want, ""], args  # bytes: text mode splits at \r
