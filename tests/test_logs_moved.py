"""A run log truncated in place, moved or deleted while a loop writes it: its followers (`car log --follow`,
the web stream) read on from its new start, and its writer goes back to its path."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import BinaryIO, Dict, List, Tuple

import pytest

from car.logs import FileCursor, RunLog, last_run_output, read_run, run_output

from support import make_repo, run_car, start_car, wait_until
from web_fixtures import repo_server

FILLER = "".join(f"2026-01-01T00:00:00.000Z filler {i} {'x' * 80}\n" for i in range(1000))  # ~100 KB
WAITING = "[run 1] fake-agent: read"  # run 1's last line before its agent waits for the go file
RUN_3_END = "=== run 3 end (code 0) ==="


def written_lines(path: Path) -> List[str]:
    """The log's lines as written: split on \\n alone, as its readers do."""
    return path.read_bytes().decode("utf-8").split("\n")[:-1]


def after_stamp(line: str) -> str:
    return line.partition(" ")[2]


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(text)


def truncate_in_place(path: Path) -> None:
    """As logrotate's copytruncate (or `: > x.log`) does: the same inode, emptied."""
    os.truncate(path, 0)


def up_to(lines: List[str], text: str) -> List[str]:
    """`lines` up to and including the first that holds `text`."""
    return lines[:next(i for i, line in enumerate(lines) if text in line) + 1]


def from_the(lines: List[str], text: str) -> List[str]:
    """`lines` from the first that holds `text` on."""
    return lines[next(i for i, line in enumerate(lines) if text in line):]


# truncated in place: the followers ----------------------------------------------------------------
def test_a_cursor_reads_a_log_truncated_in_place_from_its_new_start(tmp_path: Path) -> None:
    """QA: after `: > codex-autorunner.log` the follower printed nothing until the file passed its old
    offset, then a line torn off its first bytes."""
    path = tmp_path / "car.log"
    path.write_text(FILLER)
    cursor = FileCursor(path)
    cursor.mark(cursor.position())
    log = RunLog(path, max_bytes=0, backup_count=3)  # the real writer: O_APPEND, so it writes at the new end
    try:
        log.write("before")
        assert [after_stamp(line) for line in cursor.read_new()] == ["before"]
        truncate_in_place(path)
        log.write("after")
        log.write("still after")
        assert [after_stamp(line) for line in cursor.read_new()] == ["after", "still after"]
        # the file grows past the offset the cursor had before the truncation: it reads on, nothing twice
        more = [f"more {i} {'y' * 80}" for i in range(1500)]
        for line in more:
            log.write(line)
        assert path.stat().st_size > len(FILLER)
        assert [after_stamp(line) for line in cursor.read_new()] == more
    finally:
        cursor.close()
        log.close()


def test_a_part_of_a_line_read_before_a_truncation_is_not_glued_to_the_next_line(tmp_path: Path) -> None:
    path = tmp_path / "car.log"
    path.write_text("old 1\nold 2\n")
    cursor = FileCursor(path)
    cursor.mark(cursor.position())
    append(path, "new 1\nhalf a li")
    assert cursor.read_new() == ["new 1"]
    truncate_in_place(path)  # the rest of that line went to logrotate's copy
    append(path, "next 1\nnext 2\n")
    assert cursor.read_new() == ["half a li", "next 1", "next 2"]
    cursor.close()


def waiting_repo(tmp_path: Path) -> Tuple[Path, Path, Dict[str, str]]:
    """A 3-item repo whose log holds FILLER, the go file, and the env of a `car run` whose agents wait for it."""
    # FILLER puts a follower's offset past all the loop writes after a truncation: read on from there, it saw none
    repo = make_repo(tmp_path / "repo", items=("first", "second", "third"))
    (repo / ".codex-autorunner" / "codex-autorunner.log").write_text(FILLER)
    go = tmp_path / "go"
    return repo, go, {"FAKE_AGENT_WAIT_FOR": str(go), "FAKE_AGENT_PROMPT_OUT": str(tmp_path / "prompt")}


class Printed:
    """What a process prints, line by line, gathered by a thread; read with bounded waits."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: List[str] = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def until(self, text: str, timeout: float = 15) -> List[str]:
        """The lines printed up to and including the first that holds `text`."""
        wait_until(lambda: any(text in line for line in list(self.lines)), timeout,
                   lambda: f"{text!r} from the process; it printed last {self.lines[-3:]}")
        return up_to(list(self.lines), text)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def test_car_log_follow_prints_every_line_written_after_the_log_is_truncated(tmp_path: Path) -> None:
    """QA: `car log --follow` printed nothing of the rest of run 3 and of runs 4-5 after the log was
    truncated, then '026-11-25T03:00:10.441Z === run 6 start ==='."""
    repo, go, env = waiting_repo(tmp_path)
    path = repo / ".codex-autorunner" / "codex-autorunner.log"
    follower = start_car(repo, "log", "--tail", "0", "--follow")
    loop = None
    try:
        printed = Printed(follower)
        ping = RunLog(path, max_bytes=0, backup_count=3)  # it follows from its start: ping until it shows it
        wait_until(lambda: ping.write("ping") and any(line.endswith(" ping") for line in printed.lines), 15,
                   "the follower to print a ping")
        ping.close()
        loop = start_car(repo, "run", **env)
        before = from_the(printed.until(WAITING), "=== run 1 start ===")
        assert before == from_the(written_lines(path), "=== run 1 start ===")  # all the loop wrote so far
        truncate_in_place(path)
        go.touch()
        assert loop.wait(60) == 0, loop.stdout.read()
        after = printed.until(RUN_3_END)[len(up_to(printed.lines, WAITING)):]
        assert after == up_to(written_lines(path), RUN_3_END)  # each line since the truncation, whole, once
    finally:
        go.touch()
        stop(follower)
        if loop is not None:
            stop(loop)


def test_the_web_log_stream_sends_every_line_written_after_the_log_is_truncated(tmp_path: Path) -> None:
    """The stream reads the file (a FileCursor) while another process runs the loop."""
    repo, go, env = waiting_repo(tmp_path)
    path = repo / ".codex-autorunner" / "codex-autorunner.log"
    with repo_server(repo) as served:
        sse = served.sse("/api/logs/stream")
        loop = start_car(repo, "run", **env)
        try:
            before = from_the(sse.lines_until(lambda line: WAITING in line, timeout=20), "=== run 1 start ===")
            assert before == from_the(written_lines(path), "=== run 1 start ===")
            truncate_in_place(path)
            go.touch()
            after = sse.lines_until(lambda line: RUN_3_END in line, timeout=20)
            assert after == up_to(written_lines(path), RUN_3_END)
            assert loop.wait(60) == 0, loop.stdout.read()
        finally:
            go.touch()
            sse.close()
            stop(loop)


# moved or deleted: the writer ---------------------------------------------------------------------
def take_away(path: Path, how: str) -> BinaryIO:
    """Move (`mv`) or delete (`rm`) the log, as a user may; returns the old file, open, to read what went to it."""
    old = path.open("rb")
    if how == "mv":
        path.rename(path.with_name("x.moved"))
    else:
        path.unlink()
    return old


def old_lines(old: BinaryIO) -> List[str]:
    with old:
        return [after_stamp(line) for line in old.read().decode("utf-8").split("\n")[:-1]]


@pytest.mark.parametrize("how", ["mv", "rm"])
def test_a_run_started_after_its_log_was_moved_is_written_at_the_path(tmp_path: Path, how: str) -> None:
    """QA: after `mv codex-autorunner.log x.moved` every later run went to x.moved: `car log --run 7` said
    the run was not in the log, and the next prompt's previous-run output was empty."""
    path = tmp_path / "car.log"
    log = RunLog(path, max_bytes=0, backup_count=3)
    log.start_run(1)
    log.write("one", 1)
    old = take_away(path, how)
    log.write("two", 1)  # to the old file, or to the path if a check fell due: either way, kept once
    log.end_run(1, "code 0")
    log.start_run(2)
    log.write("three", 2)
    log.end_run(2, "code 0")
    log.close()
    lines = [after_stamp(line) for line in written_lines(path)]
    assert lines[-3:] == ["=== run 2 start ===", "[run 2] three", "=== run 2 end (code 0) ==="]
    assert old_lines(old) + lines == ["=== run 1 start ===", "[run 1] one", "[run 1] two",
                                      "=== run 1 end (code 0) ===", *lines[-3:]]
    assert [after_stamp(line) for line in read_run(path, 3, 2)] == lines[-3:]
    assert run_output(path, 3, 2) == last_run_output(path, 3, 2) == "three"


@pytest.mark.parametrize("how", ["mv", "rm"])
def test_a_log_moved_mid_run_is_written_at_its_path_again_from_the_next_check(tmp_path: Path, how: str) -> None:
    """Within a run there is no start marker to look at: a write looks now and then (about once a second)."""
    path = tmp_path / "car.log"
    log = RunLog(path, max_bytes=0, backup_count=3)
    log.start_run(1)
    log.write("line 0", 1)
    old = take_away(path, how)
    count = 1

    def write_one() -> bool:
        nonlocal count
        log.write(f"line {count}", 1)
        count += 1
        return path.exists()

    wait_until(write_one, 10, "the log to be made again at its path")
    for _ in range(5):
        write_one()
    log.close()
    before, after = old_lines(old), [after_stamp(line) for line in written_lines(path)]
    assert before[0] == "=== run 1 start ===" and after
    # the old file holds the lines up to the check, the path every one after it: none lost, none twice
    assert before[1:] + after == [f"[run 1] line {i}" for i in range(count)]


@pytest.mark.parametrize("how", ["mv", "rm"])
def test_a_loop_whose_log_is_moved_mid_run_keeps_its_later_runs_at_the_path(tmp_path: Path, how: str) -> None:
    """A real `car run`: after the move, `car log --run N` finds the later runs and the next prompt gets the
    previous run's output."""
    repo, go, env = waiting_repo(tmp_path)
    path = repo / ".codex-autorunner" / "codex-autorunner.log"
    loop = start_car(repo, "run", **env)
    try:
        wait_until(lambda: any(WAITING in line for line in written_lines(path)), 20, "run 1's agent to wait")
        old = take_away(path, how)
        go.touch()
        assert loop.wait(60) == 0, loop.stdout.read()
    finally:
        go.touch()
        stop(loop)
    assert "=== run 1 start ===" in old_lines(old)
    for run_id in (2, 3):
        shown = run_car("log", "--run", str(run_id), cwd=repo)
        assert shown.returncode == 0, shown.stderr
        lines = [after_stamp(line) for line in shown.stdout.splitlines()]
        assert lines[0] == f"=== run {run_id} start ===" and lines[-1] == f"=== run {run_id} end (code 0) ==="
    assert "fake-agent: checked off 'second'" in (tmp_path / "prompt").read_text()  # run 3's prompt: run 2's output
