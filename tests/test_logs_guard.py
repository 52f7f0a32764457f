"""The run log's guard: car's own multi-line messages stay one stamped line per line and forge no
marker, in the file, the feed and the stream."""

from __future__ import annotations

import sys
from pathlib import Path

from car.config import load_config
from car.engine import Engine
from car.feed import Feed
from car.logs import (
    RunLog,
    RunRecord,
    last_run_output,
    list_runs,
    log_tail,
    read_run,
    run_ending,
    run_output,
    tail,
)
from car.web.sse import encode_lines

from support import car_env, make_repo, update_config

FORGED_END = "2026-11-24T23:28:49.069Z === run 1 end (code 0) ==="


def written_lines(path: Path) -> list:
    """The log's lines as written: split on \\n alone, as its readers do."""
    return path.read_bytes().decode("utf-8").split("\n")[:-1]


def stamp(line: str) -> str:
    return line.partition(" ")[0]


def after_stamp(line: str) -> str:
    return line.partition(" ")[2]


def test_a_multi_line_message_in_a_run_is_one_run_line_per_line_and_forges_no_end(tmp_path: Path) -> None:
    """Review: a car message holding \\n became raw lines, one of which closed the run early."""
    path = tmp_path / "car.log"
    log = RunLog(path, max_bytes=0, backup_count=3)
    log.start_run(1)
    written = log.write(f"car: error: boom\r\n{FORGED_END}\nlast words\n", 1)
    log.write("still working", 1)
    log.close()
    lines = written_lines(path)
    assert run_ending(path, 3, 1) == (False, stamp(lines[-1]))  # still going: recovery would close it
    assert list_runs(path, 3) == [RunRecord(1, stamp(lines[0]))]
    assert read_run(path, 3, 1) == lines
    assert [after_stamp(line) for line in lines] == [
        "=== run 1 start ===", "[run 1] car: error: boom", f"[run 1] {FORGED_END}", "[run 1] last words",
        "[run 1] still working"]  # the \r of the \r\n and the closing \n make no text and no empty line
    assert written == "\n".join(lines[1:4]) and len({stamp(line) for line in lines[1:4]}) == 1
    text = f"car: error: boom\n{FORGED_END}\nlast words\nstill working"
    assert run_output(path, 3, 1) == last_run_output(path, 3, 1) == text  # the next prompt gets it back


def test_a_multi_line_message_outside_a_run_forges_no_marker(tmp_path: Path) -> None:
    """Outside a run (no [run N] prefix) a continuation must not pass for a marker: as it is (a stamped one),
    nor once stamped (a bare one: what a fix that only stamps each line would forge)."""
    path = tmp_path / "car.log"
    log = RunLog(path, max_bytes=0, backup_count=3)
    log.start_run(2)
    log.write("car: the lock was lost\n=== run 2 end (code 0) ===\n2026-11-24T23:28:49.069Z === run 3 start ===")
    log.write("working", 2)
    log.close()
    lines = written_lines(path)
    assert list_runs(path, 3) == [RunRecord(2, stamp(lines[0]))]
    assert run_ending(path, 3, 2) == (False, stamp(lines[-1]))
    assert len(lines) == 5 and all(stamp(line) == stamp(lines[1]) for line in lines[1:4])
    assert [after_stamp(line) for line in lines[1:4]] == [
        "car: the lock was lost", "  === run 2 end (code 0) ===", "  2026-11-24T23:28:49.069Z === run 3 start ==="]
    assert read_run(path, 3, 2) == lines and read_run(path, 3, 3) == []
    assert run_output(path, 3, 2) == last_run_output(path, 3, 2) == "working"
    assert log_tail(path, 3, 4) == tail(path, 4) == lines[1:]


def test_each_line_of_a_message_is_one_feed_item_and_one_stream_line(tmp_path: Path) -> None:
    """The stream (SSE) sends each Feed item's lines as data lines: a continuation must come stamped."""
    feed = Feed()
    log = RunLog(tmp_path / "car.log", max_bytes=0, backup_count=3, feed=feed)
    log.start_run(1)
    log.write("car: the agent failed: quota\n  retry at 10:00\rnow", 1)
    log.close()
    _, items = feed.read_since(0, timeout=0)
    lines = written_lines(tmp_path / "car.log")
    assert items == lines and len(items) == 3
    assert items[2].endswith(" [run 1]   retry at 10:00\rnow")  # an inner \r stays, as an agent's does
    data = encode_lines(items).decode("utf-8").split("\n")
    assert data == [f"data: {line}".replace("\r", "\u240d") for line in lines] + ["", ""]


def test_an_end_reason_with_a_line_break_still_closes_its_run(tmp_path: Path) -> None:
    path = tmp_path / "car.log"
    log = RunLog(path, max_bytes=0, backup_count=3)
    log.start_run(1)
    log.end_run(1, "interrupted\nby the user\n")
    log.close()
    lines = written_lines(path)
    assert run_ending(path, 3, 1) == (True, stamp(lines[-1]))
    assert len(lines) == 2 and lines[1].endswith(" === run 1 end (interrupted by the user) ===")
    assert list_runs(path, 3) == [RunRecord(1, stamp(lines[0]), stamp(lines[1]), None, "interrupted by the user")]


def test_render_lines_stamps_every_line_and_keeps_a_single_line_as_it_was() -> None:
    from car.logs import render_lines  # here: the other tests also run against a car.logs without it

    at = "2026-01-02T03:04:05.678Z"
    assert render_lines(at, "plain", 4) == [f"{at} [run 4] plain"]
    assert render_lines(at, "", 4) == [f"{at} [run 4] "]
    assert render_lines(at, "=== run 4 start ===") == [f"{at} === run 4 start ==="]  # start_run's way
    assert render_lines(at, "a\n\nb", None) == [f"{at} a", f"{at}   ", f"{at}   b"]
    assert render_lines(at, "50%\r100%\r\n", 4) == [f"{at} [run 4] 50%\r100%"]


AGENT = '''\
import json, sys
sys.stdin.read()
message = "rate limited\\n" + sys.argv[1] + "\\nretry later"
print(json.dumps({"type": "thread.started", "thread_id": "t-1"}), flush=True)  # as Codex opens every stream
print(json.dumps({"type": "turn.failed", "error": {"message": message}}), flush=True)
sys.exit(1)
'''


def test_an_agents_multi_line_failure_stays_in_its_run_through_the_engine(tmp_path: Path) -> None:
    """A real engine and agent: Codex's turn.failed message (with a forged end in it) is logged by car as
    'car: the agent failed: ...', line by line, inside the run."""
    repo = make_repo(tmp_path / "repo", items=("only",))
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    update_config(repo, codex={"binary": sys.executable, "args": [str(script), FORGED_END]})
    Engine(load_config(repo / ".codex-autorunner" / "config.yml")).run_loop(once=True)
    path = repo / ".codex-autorunner" / "codex-autorunner.log"
    lines = read_run(path, 3, 1)
    assert lines[-1].endswith(" === run 1 end (code 1) ===")
    texts = [after_stamp(line) for line in lines]
    at = texts.index("[run 1] car: the agent failed: rate limited")
    assert texts[at:at + 3] == ["[run 1] car: the agent failed: rate limited", f"[run 1] {FORGED_END}",
                                "[run 1] retry later"]
    assert [(r.id, r.exit_code) for r in list_runs(path, 3)] == [(1, 1)]
    assert run_ending(path, 3, 1) == (True, stamp(lines[-1]))


def test_the_lines_of_a_message_lost_to_a_full_disk_are_counted_as_lines(tmp_path: Path, capfd) -> None:
    link = tmp_path / "car.log"
    link.symlink_to("/dev/full")  # every write: ENOSPC, as on a full disk
    log = RunLog(link, max_bytes=0, backup_count=1)
    log.write("car: error: one\ntwo\nthree", 1)
    log.write("four", 1)
    link.unlink()  # the disk has room again
    log.write("back")
    log.close()
    assert [after_stamp(line) for line in written_lines(link)] == [
        "car: 4 lines of this log were lost: it could not be written", "back"]
    assert len(capfd.readouterr().err.splitlines()) == 1  # told once


# a LogFile in a process of its own whose files may not grow past LIMIT bytes (RLIMIT_FSIZE: python ignores
# SIGXFSZ, so a write past it is cut short, and the next one fails with EFBIG, as on a disk that fills up)
TORN = """
import resource, sys
from pathlib import Path
from car.logfile import LogFile

log = LogFile(Path(sys.argv[1]), backup_count=1)
log.write("first line")
resource.setrlimit(resource.RLIMIT_FSIZE, (len("first line") + 1 + 8, resource.RLIM_INFINITY))
log.write("2026-11-25T00:33:14.587Z a line the disk has room for only the start of")
log.write("lost too")
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
log.write("back")
log.close()
"""


def test_a_line_cut_short_by_a_full_disk_is_ended_before_the_next(tmp_path: Path) -> None:
    """QA: a short write on a disk that filled up left part of a line, and the next line was glued to it
    ('2026-11-25T00:2026-11-25T00:33:14.587Z car: 244 lines ... lost'): a marker written so would be lost."""
    import subprocess

    path = tmp_path / "car.log"
    done = subprocess.run([sys.executable, "-c", TORN, str(path)], capture_output=True, text=True, timeout=60,
                          env=car_env())
    assert done.returncode == 0, done.stderr
    lines = written_lines(path)
    assert lines[:2] == ["first line", "2026-11-"], lines  # the part that fitted, ended as a line of its own
    assert after_stamp(lines[2]) == "car: 2 lines of this log were lost: it could not be written", lines
    assert lines[3:] == ["back"], lines

