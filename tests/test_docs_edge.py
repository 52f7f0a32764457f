"""Docs at their edges: `<!--` that is not a comment, UTF-16 docs, and saves that keep a file's bytes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest
from test_docs import QA_TODO

from car.docs import parse_todos, read_doc, write_doc
from car.errors import CarError
from car.files import read_text

from hub_fixtures import git_repos
from support import PROJECT, car_env, run_car
from web_fixtures import Served, repo_server

TODO_PATH = Path(".codex-autorunner") / "TODO.md"


@pytest.fixture
def served(repo: Path) -> Iterator[Served]:
    with repo_server(repo) as s:
        yield s


def todo_of(repo: Path) -> Path:
    return repo / TODO_PATH


# 1. `<!--` hides items only where CommonMark makes it a comment (its cases: test_docs.test_parse_todos)
def test_the_starter_todo_still_counts_its_one_item(tmp_path: Path) -> None:
    from car.bootstrap import STARTER_DOCS
    from car.docs import DocKind

    assert parse_todos(STARTER_DOCS[DocKind.TODO]).outstanding == 1


def test_a_10_mb_todo_of_unclosed_comment_starts_is_counted_in_seconds() -> None:
    """The old regex read from each unclosed `<!--` to the end of the text: hours for 10 MB."""
    script = textwrap.dedent("""\
        import sys, time
        sys.path.insert(0, sys.argv[1])
        from car.docs import parse_todos
        text = "- [ ] strip `<!--` here\\n" * 420_000 + "```\\n" + "- [ ] in a fence\\n" * 10
        started = time.perf_counter()
        counts = parse_todos(text)
        print(len(text), counts.outstanding, time.perf_counter() - started)
        """)
    try:  # a child, so the old code's hours end at the timeout (run() kills it)
        done = subprocess.run([sys.executable, "-c", script, str(PROJECT)], capture_output=True, text=True,
                              timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("parse_todos took over 20 s on a 10 MB TODO")
    size, outstanding, seconds = done.stdout.split()
    assert int(size) > 10_000_000 and int(outstanding) == 420_000, done.stderr
    assert float(seconds) < 10


def test_car_status_and_run_see_every_item_after_a_mid_line_comment_start(repo: Path) -> None:
    """QA: `car status` said 0/1 and `car run` ended todo_done with two items unchecked."""
    todo_of(repo).write_text(QA_TODO)
    status = json.loads(run_car("status", "--json", cwd=repo).stdout)
    assert (status["done_todos"], status["outstanding_todos"]) == (0, 3)
    done = run_car("run", cwd=repo)
    assert done.returncode == 0, done.stderr
    text = todo_of(repo).read_text()
    assert "- [ ]" not in text and text.count("- [x]") == 3, text
    state = json.loads(run_car("status", "--json", cwd=repo).stdout)
    assert state["stop_reason"] == "todo_done" and state["last_run_id"] == 3


# 2. a UTF-16 doc is refused with one line, never read as 0/0 ------------------------------------
UTF16 = {"le": "\ufeff- [ ] one\r\n- [ ] two\r\n".encode("utf-16-le"),
         "be": "\ufeff- [ ] one\n".encode("utf-16-be")}


@pytest.mark.parametrize("order", sorted(UTF16))
def test_reading_a_utf16_doc_is_one_line_naming_it_and_the_fix(tmp_path: Path, order: str) -> None:
    path = tmp_path / "TODO.md"
    path.write_bytes(UTF16[order])
    with pytest.raises(CarError) as caught:
        read_text(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: saved as UTF-16") and "save it as UTF-8" in message
    assert "\n" not in message
    with pytest.raises(CarError, match="UTF-16"):
        read_doc(path)
    with pytest.raises(CarError, match="UTF-16"):  # a save from what the page showed: refused, nothing written
        write_doc(path, "- [x] one\n", etag=read_doc(tmp_path / "none.md").etag)
    assert path.read_bytes() == UTF16[order]


def test_car_status_run_and_doctor_refuse_a_utf16_todo_and_the_agent_never_runs(repo: Path, tmp_path: Path) -> None:
    """QA: `car run` ended `todo_done … TODO 0/0 done` and `car doctor` said ok."""
    todo_of(repo).write_bytes(UTF16["le"])
    prompt = tmp_path / "prompt.txt"
    for command in ("status", "run", "once", "doctor"):
        done = run_car(command, cwd=repo, env=car_env(FAKE_AGENT_PROMPT_OUT=str(prompt)))
        out = done.stdout + done.stderr
        assert done.returncode != 0, (command, out)
        assert "Traceback" not in out and f"{todo_of(repo)}: saved as UTF-16" in out, (command, out)
        assert "todo_done" not in out and "all checks passed" not in out, (command, out)
    assert not prompt.exists()  # no run started
    assert todo_of(repo).read_bytes() == UTF16["le"]


def test_doctor_fails_each_utf16_doc_and_goes_on_with_the_other_checks(repo: Path) -> None:
    """It stopped at the first one with `car: ...`, hiding every check after it (and never read SPEC)."""
    spec = repo / ".codex-autorunner" / "SPEC.md"
    todo_of(repo).write_bytes(UTF16["le"])
    spec.write_bytes(UTF16["be"])
    done = run_car("doctor", cwd=repo)
    lines = done.stdout.splitlines()
    assert done.returncode == 1 and not done.stderr, done.stdout + done.stderr
    assert [line[:6] for line in lines if "UTF-16" in line] == ["FAIL  ", "FAIL  "], lines
    assert any(line.startswith(f"FAIL  {spec}: saved as UTF-16") for line in lines), lines
    assert "ok    doc progress: " in done.stdout and "ok    git repository" in done.stdout
    assert "info  TODO" not in done.stdout and lines[-1] == "2 problem(s) found"
    todo_of(repo).write_text("- [x] one\n- [ ] two\n")
    spec.write_text("# spec\n")
    again = run_car("doctor", cwd=repo)
    assert "info  TODO: 1 done, 1 outstanding" in again.stdout, again.stdout + again.stderr


def test_the_hub_lists_a_repo_with_a_utf16_todo_as_error_saying_why(tmp_path: Path) -> None:
    """It listed 0/0 and idle: a repo that looked done, whose every run is refused."""
    git_repos(tmp_path, "alpha", "beta")
    assert run_car("hub", "scan", cwd=tmp_path).returncode == 0
    todo_of(tmp_path / "alpha").write_bytes(UTF16["le"])
    done = run_car("hub", "status", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    repos = {r["id"]: r for r in json.loads(done.stdout)["repos"]}
    assert repos["alpha"]["status"] == "error", repos["alpha"]
    assert repos["alpha"]["error"].startswith(f"{todo_of(tmp_path / 'alpha').resolve()}: saved as UTF-16")
    assert (repos["beta"]["status"], repos["beta"]["error"]) == ("idle", None)
    todo_of(tmp_path / "alpha").write_text("- [x] one\n- [ ] two\n")  # saved as UTF-8: fine again
    repos = {r["id"]: r for r in json.loads(run_car("hub", "status", "--json", cwd=tmp_path).stdout)["repos"]}
    assert (repos["alpha"]["status"], repos["alpha"]["error"], repos["alpha"]["todo_done"]) == ("idle", None, 1)


def test_the_api_refuses_to_show_or_overwrite_a_utf16_doc(served: Served, repo: Path) -> None:
    todo_of(repo).write_bytes(UTF16["le"])
    for reply in (served.client.get("/api/docs/todo"), served.client.get("/api/docs"),
                  served.client.put("/api/docs/todo", {"content": "- [ ] mine\n", "etag": "0" * 16})):
        assert reply.status >= 400 and "saved as UTF-16" in reply.json["error"]["message"], reply.text
    assert todo_of(repo).read_bytes() == UTF16["le"]
    assert not any("Traceback" in line for line in served.log.handlers[0].lines)


# 3. a save keeps the bytes the user did not edit ------------------------------------------------
QA_BYTES = b"\xef\xbb\xbf# TODO\r\n- [ ] caf\xe9\r\n- [ ] two\r\n"


def test_a_get_put_round_trip_of_unchanged_text_leaves_the_file_byte_identical(served: Served, repo: Path) -> None:
    """QA: the file became LF-only, lost its BOM, and its \\xe9 became EF BF BD."""
    todo_of(repo).write_bytes(QA_BYTES)
    doc = served.client.get("/api/docs/todo").json["todo"]
    assert doc["content"] == "# TODO\n- [ ] caf\ufffd\n- [ ] two\n"
    reply = served.client.put("/api/docs/todo", {"content": doc["content"], "etag": doc["etag"]})
    assert reply.status == 200 and reply.json["todo"] == doc, reply.text
    assert todo_of(repo).read_bytes() == QA_BYTES


def test_an_edit_of_a_doc_with_bytes_that_are_not_utf8_is_refused_naming_file_line_and_fix(
        served: Served, repo: Path) -> None:
    todo_of(repo).write_bytes(QA_BYTES)
    doc = served.client.get("/api/docs/todo").json["todo"]
    edited = doc["content"].replace("- [ ] two", "- [x] two")
    reply = served.client.put("/api/docs/todo", {"content": edited, "etag": doc["etag"]})
    assert reply.status == 409 and reply.error_code == "conflict", reply.text
    message = reply.json["error"]["message"]
    offset = QA_BYTES.index(b"\xe9")  # 20, the BOM counted
    assert message.startswith(f"{todo_of(repo)}:2: not UTF-8 text (byte 0xe9 at offset {offset})"), message
    assert "convert the file to UTF-8" in message and "\n" not in message
    assert todo_of(repo).read_bytes() == QA_BYTES
    assert served.client.put("/api/docs/todo", {"content": edited}).status == 409  # without an etag too
    assert todo_of(repo).read_bytes() == QA_BYTES


def test_an_edit_keeps_the_files_bom_and_crlf_and_changes_only_the_edited_line(served: Served, repo: Path) -> None:
    original = "\ufeff# TODO\r\n- [ ] café\r\n- [ ] two\r\n".encode()
    todo_of(repo).write_bytes(original)
    doc = served.client.get("/api/docs/todo").json["todo"]
    reply = served.client.put("/api/docs/todo", {"content": doc["content"].replace("[ ] two", "[x] two"),
                                                 "etag": doc["etag"]})
    assert reply.status == 200, reply.text
    assert todo_of(repo).read_bytes() == original.replace(b"[ ] two", b"[x] two")
    assert served.client.get("/api/docs/todo").json["todo"] == reply.json["todo"]  # its etag holds


def test_crlf_sent_by_a_client_is_written_in_the_files_style_and_its_etag_holds(served: Served, repo: Path) -> None:
    todo_of(repo).write_bytes(b"- [ ] lf file\n")
    reply = served.client.put("/api/docs/todo", {"content": "- [ ] lf file\r\n- [ ] added\r\n"})
    assert reply.status == 200 and reply.json["todo"]["content"] == "- [ ] lf file\n- [ ] added\n"
    assert todo_of(repo).read_bytes() == b"- [ ] lf file\n- [ ] added\n"
    etag = reply.json["todo"]["etag"]
    assert served.client.get("/api/docs/todo").json["todo"]["etag"] == etag
    assert served.client.put("/api/docs/todo", {"content": "- [x] lf file\n", "etag": etag}).status == 200


@pytest.mark.parametrize("raw, content, expected", [
    (b"a\r\nb\r\n", "a\nB\n", b"a\r\nB\r\n"),
    (b"a\rb\r", "a\nB\n", b"a\rB\r"),  # classic Mac line ends
    (b"a\r\nb\nc\r\n", "a\nb\nC\n", b"a\r\nb\r\nC\r\n"),  # mixed: the most common end wins
    (b"\xef\xbb\xbfa\n", "A\n", b"\xef\xbb\xbfA\n"),
    (b"a\n", "A\n", b"A\n"),
    (b"", "- [ ] new\n", b"- [ ] new\n"),
])
def test_a_write_keeps_the_files_bom_and_line_ends(tmp_path: Path, raw: bytes, content: str,
                                                         expected: bytes) -> None:
    path = tmp_path / "TODO.md"
    path.write_bytes(raw)
    doc = write_doc(path, content, read_doc(path).etag)
    assert path.read_bytes() == expected and read_doc(path) == doc


def test_an_unchanged_save_of_a_mixed_line_end_file_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "TODO.md"
    raw = b"\xef\xbb\xbfa\r\nb\nc\rd \xff\n"
    path.write_bytes(raw)
    before = path.stat().st_mtime_ns, path.stat().st_ino
    doc = read_doc(path)
    assert write_doc(path, doc.content, doc.etag) == doc
    assert path.read_bytes() == raw and (path.stat().st_mtime_ns, path.stat().st_ino) == before


def test_a_save_without_an_etag_never_overwrites_a_utf16_doc(served: Served, repo: Path) -> None:
    todo_of(repo).write_bytes(UTF16["le"])
    reply = served.client.put("/api/docs/todo", {"content": "- [ ] mine\n"})
    assert reply.status >= 400 and "saved as UTF-16" in reply.json["error"]["message"], reply.text
    assert todo_of(repo).read_bytes() == UTF16["le"]


def test_a_missing_doc_is_created_by_a_save(tmp_path: Path) -> None:
    path = tmp_path / "TODO.md"
    assert write_doc(path, "").content == "" and path.read_bytes() == b""
