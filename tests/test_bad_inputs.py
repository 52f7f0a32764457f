"""Bad input, as QA found it against car.pyz: each gets one line (or a JSON 4xx), never a traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pytest

from car.config import load_config
from car.errors import ConfigError
from car.layout import CAR_DIR, HubLayout, RepoLayout
from car.state import RepoState, save_state

from hub_fixtures import agent_repos, git_repos, make_hub
from support import (
    FAKE_AGENT,
    backdate,
    car_cmd,
    car_env,
    hang_agent,
    make_repo,
    read_pids,
    run_car,
    update_config,
)
from web_fixtures import capture_logger, hub_server, repo_server, write_hub_config


def one_line(stderr: str) -> str:
    """The single `car: ...` line a bad input must give."""
    assert "Traceback" not in stderr, stderr
    assert stderr.count("\n") == 1, stderr
    return stderr


@contextmanager
def busy_port() -> Iterator[int]:
    """A loopback port some other program listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


# 1. numbers that crash or hang later ----------------------------------------------------------
@pytest.mark.parametrize("section, key, value, shown", [
    ("runner", "sleep_seconds", ".inf", "got inf"),
    ("runner", "sleep_seconds", "1.0e+10", "got 10000000000.0"),
    ("runner", "sleep_seconds", "1" + "0" * 400, "got 1000"),  # too big for a float
    ("runner", "kill_grace_seconds", ".nan", "got nan"),
    ("runner", "run_timeout_seconds", ".inf", "got inf"),
    ("runner", "idle_timeout_seconds", ".nan", "got nan"),
    ("runner", "max_wallclock_seconds", "1.0e+300", "got 1e+300"),
    ("server", "port", "70000", "got 70000"),
    ("log", "backup_count", "1000000000", "got 1000000000"),
])
def test_a_number_out_of_range_is_a_config_error_naming_key_value_and_range(
        tmp_path: Path, section: str, key: str, value: str, shown: str) -> None:
    path = tmp_path / CAR_DIR / "config.yml"
    path.parent.mkdir()
    path.write_text(f"version: 2\nmode: repo\n{section}:\n  {key}: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}:4: {section}.{key}: expected a ") and " from 0 to " in message
    assert shown in message and "\n" not in message


def test_numbers_in_range_still_load(tmp_path: Path) -> None:
    path = tmp_path / CAR_DIR / "config.yml"
    path.parent.mkdir()
    path.write_text("version: 2\nmode: repo\nrunner: {sleep_seconds: 0.5, kill_grace_seconds: 0, "
                    "max_wallclock_seconds: 86400}\nserver: {port: 65535}\nlog: {backup_count: 0}\n")
    config = load_config(path)
    assert (config.runner.sleep_seconds, config.server.port, config.log.backup_count) == (0.5, 65535, 0)


def test_car_refuses_an_infinite_sleep_before_it_runs(repo: Path) -> None:
    update_config(repo, runner={"sleep_seconds": float("inf")})
    for command in ("status", "once"):
        done = run_car(command, cwd=repo)
        assert done.returncode == 2
        assert "runner.sleep_seconds: expected a number from 0 to" in one_line(done.stderr)
    assert not RepoLayout(repo).lock.exists()


def test_a_config_port_out_of_range_is_exit_2_not_an_overflow_at_bind(repo: Path) -> None:
    update_config(repo, server={"port": 70000})
    done = run_car("serve", cwd=repo)
    assert done.returncode == 2
    assert "server.port: expected a whole number from 0 to 65535, got 70000" in one_line(done.stderr)


@pytest.mark.parametrize("args", [("serve", "--port", "99999999"), ("serve", "--port=-5"),
                                  ("serve", "--port", "http"), ("hub", "serve", "--port", "99999")])
def test_a_port_option_out_of_range_is_a_usage_error(tmp_path: Path, args: tuple) -> None:
    make_repo(tmp_path / "repo")
    done = run_car(*args, cwd=tmp_path / "repo")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "argument --port: expected a whole number from 0 to 65535" in done.stderr.splitlines()[-1]


# 2. a config that is not UTF-8 ------------------------------------------------------------------
@pytest.mark.parametrize("command", ["status", "doctor", "once", "serve"])
def test_a_config_with_a_non_utf8_byte_is_one_line_naming_file_and_offset(repo: Path, command: str) -> None:
    config = RepoLayout(repo).config
    size = config.stat().st_size
    with config.open("ab") as f:
        f.write(b"# caf\xe9\n")
    before = config.read_bytes()
    done = run_car(command, cwd=repo)
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert str(config) in line and f"byte 0xe9 at offset {size + 5}" in line and "UTF-8" in line
    assert config.read_bytes() == before


def test_init_on_a_config_with_a_non_utf8_byte_is_one_line(repo: Path) -> None:
    with RepoLayout(repo).config.open("ab") as f:
        f.write(b"# caf\xe9\n")
    done = run_car("init", cwd=repo)
    assert done.returncode == 2 and "byte 0xe9" in one_line(done.stderr)


@pytest.mark.parametrize("setting", ['log:\n  path: "a\\0b"\n', 'docs:\n  todo: "\\0"\n',
                                     'codex:\n  args: [exec, "\\0"]\n'])
@pytest.mark.parametrize("command", ["status", "once"])
def test_a_nul_in_a_config_path_is_one_line_naming_file_line_and_key(
        repo: Path, setting: str, command: str) -> None:
    config = RepoLayout(repo).config
    config.write_text(setting)
    done = run_car(command, cwd=repo)
    key = {"log": "log.path", "docs": "docs.todo", "codex": "codex.args"}[setting.split(":")[0]]
    assert done.returncode == 2 and f"{config}:2: {key}: expected text without a NUL" in one_line(done.stderr)


def test_a_bom_at_the_start_of_todo_md_hides_no_item(repo: Path, tmp_path: Path) -> None:
    """Windows editors start a file with U+FEFF: the first `- [ ]` must still count and reach the agent."""
    todo = repo / CAR_DIR / "TODO.md"
    todo.write_bytes(b"\xef\xbb\xbf- [ ] only item\n")
    status = json.loads(run_car("status", "--json", cwd=repo).stdout)
    assert (status["outstanding_todos"], status["done_todos"]) == (1, 0)
    prompt = tmp_path / "prompt.txt"
    done = run_car("once", cwd=repo, env=car_env(FAKE_AGENT_PROMPT_OUT=str(prompt)))
    assert done.returncode == 0 and "todo_done (TODO 0/0" not in done.stdout + done.stderr, done.stderr
    text = prompt.read_text(encoding="utf-8")  # the agent ran, and its prompt carries no BOM
    assert "- [ ] only item" in text and "\ufeff" not in text


# 3. HTTP: a request line that does not parse; HEAD -----------------------------------------------
def _raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        reply = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return reply
            reply += chunk


@pytest.mark.parametrize("line", [b"GARBAGE\r\n\r\n", b"GET /api/state HTTP/x.y\r\n\r\n",
                                  b"POST /api/state\r\n\r\n", b"GET / HTTP/1.1 extra\r\n\r\n"])
def test_a_malformed_request_line_gets_a_json_400_and_no_traceback(
        repo: Path, capfd: pytest.CaptureFixture, line: bytes) -> None:
    log, lines = capture_logger("car.test.bad_request_line")
    with repo_server(repo, log=log) as served:
        reply = _raw_exchange(served.port, line)
        assert served.client.get("/api/state").status == 200  # the server lives on
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), reply
    assert b"Content-Type: application/json" in head and b"Connection: close" in head
    assert json.loads(body)["error"]["code"] == "http_400"
    assert "Traceback" not in capfd.readouterr().err
    assert not any("Traceback" in entry for entry in lines.lines)


def test_head_is_answered_like_get_without_a_body(repo: Path) -> None:
    with repo_server(repo) as served:
        for path in ("/api/state", "/api/docs/todo", "/api/runs", "/api/logs?tail=5"):
            got, head = served.client.get(path), served.client.call("HEAD", path)
            assert (head.status, head.text) == (200, ""), (path, head)
            assert head.headers["content-type"] == got.headers["content-type"]
        assert served.client.call("HEAD", "/api/docs/nope").status == 404
        assert served.client.call("HEAD", "/api/run/start").status == 405  # POST only
        stream = served.client.call("HEAD", "/api/logs/stream", timeout=5)  # headers, then the end
        assert stream.status == 200 and stream.text == ""
        assert stream.headers["content-type"].startswith("text/event-stream")


# 4. hub serve / serve on a port in use -----------------------------------------------------------
def test_hub_serve_on_a_busy_port_starts_no_repo_and_leaves_no_trace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pidfile = hang_agent(monkeypatch, tmp_path)
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha")
    config.manifest_path.write_text("version: 1\nrepos:\n- {id: alpha, path: alpha, auto_run: true}\n")
    state = RepoLayout(root / "alpha").state
    state_before = state.read_bytes() if state.exists() else None
    with busy_port() as port:
        done = run_car("hub", "serve", "--port", str(port), cwd=root)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in one_line(done.stderr) and "hub at" not in done.stderr
    assert read_pids(pidfile) == []  # no agent was started
    assert (state.read_bytes() if state.exists() else None) == state_before
    assert not HubLayout(root).lock.exists() and not RepoLayout(root / "alpha").lock.exists()


def test_hub_serve_with_a_bad_base_path_starts_nothing(tmp_path: Path) -> None:
    root = tmp_path / "hub"
    make_hub(root)
    git_repos(root, "alpha")
    done = run_car("hub", "serve", "--port", "0", "--base-path", "/a b", cwd=root)
    assert done.returncode == 2 and "--base-path" in one_line(done.stderr)
    assert not HubLayout(root).lock.exists() and not (root / "alpha" / CAR_DIR).exists()


def test_serve_on_a_busy_port_leaves_the_repo_as_it_was(repo: Path) -> None:
    layout = RepoLayout(repo)
    save_state(layout.state, RepoState(status="running", last_run_id=1))  # its owner died
    before = layout.state.read_bytes()
    with busy_port() as port:
        done = run_car("serve", "--port", str(port), cwd=repo)
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in one_line(done.stderr)
    assert layout.state.read_bytes() == before  # reconciled only by a server that runs


# 5. output to a closed pipe ----------------------------------------------------------------------
@pytest.mark.parametrize("args", [("hub", "status"), ("hub", "scan", "--json"), ("hub", "usage"),
                                  ("--version",)])
def test_output_to_a_closed_pipe_exits_quietly(tmp_path: Path, args: tuple) -> None:
    root = tmp_path / "hub"
    make_hub(root)
    git_repos(root, *(f"repo{i:02}" for i in range(20)))
    assert run_car("hub", "scan", cwd=root).returncode == 0
    with closed_pipe() as stdout:
        done = subprocess.run(car_cmd(*args), cwd=root, env=car_env(), stdout=stdout,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")  # its own exit code: all it lost is output nobody reads


@contextmanager
def closed_pipe() -> Iterator[int]:
    """The write end of a pipe whose reader has already gone (`| head -1` that has exited)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        yield write_end
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args, agent, code", [
    (("once",), "ok", 0),
    (("once",), "fail", 1),  # agent_failed: the real exit code, not one the lost output made up
    (("log", "--follow"), "ok", 0),  # printed the log, then waited on new lines for a reader long gone
])
def test_a_repo_command_whose_output_is_gone_ends_with_its_own_exit_code(
        repo: Path, args: tuple, agent: str, code: int) -> None:
    assert run_car("once", cwd=repo, env=car_env(FAKE_AGENT_MODE=agent)).returncode == code  # a log to print
    with closed_pipe() as stdout:
        done = subprocess.run(car_cmd(*args), cwd=repo, env=car_env(FAKE_AGENT_MODE=agent), stdout=stdout,
                              stderr=subprocess.PIPE, text=True, timeout=30)
    assert (done.returncode, done.stderr) == (code, "")


def test_log_follow_ends_soon_after_its_reader_leaves_while_no_line_comes(repo: Path) -> None:
    """`car log --tail 5 --follow | head -2`: head leaves, no new line comes to fail a write on."""
    assert run_car("once", cwd=repo).returncode == 0  # a log to print
    proc = subprocess.Popen(car_cmd("log", "--tail", "5", "--follow"), cwd=repo, env=car_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline() and proc.stdout.readline()
        proc.stdout.close()  # what head does after its two lines
        left = time.monotonic()
        assert proc.wait(10) == 0 and time.monotonic() - left < 3
        assert proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_an_error_to_a_stderr_that_is_gone_still_exits_with_its_code(tmp_path: Path) -> None:
    with closed_pipe() as gone:
        done = subprocess.run(car_cmd("status"), cwd=tmp_path, env=car_env(), stdout=gone, stderr=gone,
                              timeout=30)
    assert done.returncode == 2  # no config here: a config error, whose one line nobody reads


# 6. hub usage with one broken repo ---------------------------------------------------------------
def _usage_hub(root: Path, breakage: str) -> None:
    """alpha with a run of 7 input tokens; beta broken as `breakage` says; both in the manifest."""
    make_hub(root).manifest_path.write_text("version: 1\nrepos:\n- {id: alpha, path: alpha}\n"
                                            "- {id: beta, path: beta}\n")
    agent_repos(root, "alpha", "beta")
    record = {"id": 1, "exit_code": 0, "usage": {"input_tokens": 7}}
    RepoLayout(root / "alpha").runs.write_text(json.dumps(record) + "\n")
    beta = root / "beta" / CAR_DIR
    if breakage == "car dir is a file":
        for child in sorted(beta.rglob("*"), reverse=True):
            child.unlink() if child.is_file() else child.rmdir()
        beta.rmdir()
        beta.write_text("not a directory\n")
    else:
        RepoLayout(root / "beta").runs.mkdir()


BREAKAGES = ["car dir is a file", "runs.jsonl is a directory"]


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_hub_usage_reports_the_other_repos_and_notes_the_broken_one(tmp_path: Path, breakage: str) -> None:
    root = tmp_path / "hub"
    _usage_hub(root, breakage)
    done = run_car("hub", "usage", cwd=root)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    alpha, beta, total = done.stdout.splitlines()
    assert alpha.startswith("alpha") and "input=7" in alpha
    assert beta.startswith("beta") and "input=0" in beta and "not counted: cannot read" in beta
    assert "input=7" in total
    body = json.loads(run_car("hub", "usage", "--json", cwd=root).stdout)
    errors = {r["id"]: r["error"] for r in body["repos"]}
    assert errors["alpha"] is None and "runs.jsonl" in errors["beta"]
    assert body["total"]["input_tokens"] == 7


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_get_hub_usage_is_200_with_the_broken_repo_noted(tmp_path: Path, breakage: str) -> None:
    root = tmp_path / "hub"
    _usage_hub(root, breakage)
    with hub_server(root) as served:
        reply = served.client.get("/hub/usage")
    assert reply.status == 200, reply.text
    rows = {r["id"]: r for r in reply.json["repos"]}
    assert rows["alpha"]["total"]["input_tokens"] == 7 and rows["alpha"]["error"] is None
    assert rows["beta"]["run_count"] == 0 and "cannot read" in rows["beta"]["error"]


# 7. a log path that cannot be -------------------------------------------------------------------
def _unmakeable(tmp_path: Path) -> Path:
    """A log path under a regular file: its directory can never be made."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory\n")
    return blocker / "logs" / "x.log"


@pytest.mark.parametrize("command", [("hub", "serve", "--port", "0"), ("hub", "scan"), ("hub", "status")])
def test_a_bad_hub_log_path_is_one_line_naming_it(tmp_path: Path, command: tuple) -> None:
    root = tmp_path / "hub"
    bad = _unmakeable(tmp_path)
    git_repos(root, "alpha")
    write_hub_config(root, log={"path": str(bad)})
    done = run_car(*command, cwd=root)
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert f"hub.log.path: cannot create the directory of {bad}" in line and str(HubLayout(root).config) in line
    assert not HubLayout(root).lock.exists()


@pytest.mark.parametrize("command", ["once", "serve", "status"])
def test_a_bad_repo_log_path_is_one_line_naming_it(tmp_path: Path, command: str) -> None:
    repo = make_repo(tmp_path / "repo")
    bad = _unmakeable(tmp_path)
    update_config(repo, log={"path": str(bad)})
    done = run_car(command, cwd=repo)
    assert done.returncode == 2 and f"log.path: cannot create the directory of {bad}" in one_line(done.stderr)
    assert not RepoLayout(repo).lock.exists()


def test_a_repo_log_path_that_is_a_directory_is_one_line(repo: Path) -> None:
    update_config(repo, log={"path": CAR_DIR})
    done = run_car("once", cwd=repo)
    assert done.returncode == 2 and "log.path" in one_line(done.stderr) and "is a directory" in done.stderr


@pytest.mark.parametrize("log_path, what", [
    (f"{CAR_DIR}/TODO.md", "docs.todo's file"),
    (f"./{CAR_DIR}/../{CAR_DIR}/state.json", "car's state.json"),
    ("linked/prompt.txt", "prompt.template's file"),  # through a symlink to .codex-autorunner/
    ("notes/spec.md", "docs.spec's file"),  # a doc moved out of .codex-autorunner/
])
def test_a_repo_log_path_naming_a_file_car_uses_is_refused_and_nothing_is_written(repo: Path, log_path: str,
                                                                                   what: str) -> None:
    """The log appends to its file and rotation renames it away: as a doc or state.json, a run would
    have written agent output into TODO.md (seen: the TODO then held the run's lines)."""
    (repo / "linked").symlink_to(repo / CAR_DIR)
    (repo / "notes").mkdir()
    (repo / "notes/spec.md").write_text("# the spec\n")
    update_config(repo, log={"path": log_path}, docs={"spec": "notes/spec.md"})
    layout = RepoLayout(repo)
    before = {p: p.read_bytes() for p in [*layout.dir.iterdir(), repo / "notes/spec.md"] if p.is_file()}
    for command in ("once", "status"):
        done = run_car(command, cwd=repo)
        line = one_line(done.stderr)
        shown = os.path.realpath(repo / log_path)  # a relative path is shown resolved
        assert done.returncode == 2 and f"log.path: {shown} is {what}" in line, done.stderr
        assert "set log.path to a file of its own" in line and str(layout.config) in line
    after = {p: p.read_bytes() for p in [*layout.dir.iterdir(), repo / "notes/spec.md"] if p.is_file()}
    assert after == before


def test_a_hub_log_path_naming_the_manifest_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "hub"
    git_repos(root, "alpha")
    write_hub_config(root, log={"path": f"{CAR_DIR}/manifest.yml"})
    done = run_car("hub", "scan", cwd=root)
    line = one_line(done.stderr)
    assert done.returncode == 2 and "hub.log.path:" in line and "is hub.manifest's file" in line, done.stderr
    assert not HubLayout(root).lock.exists()


def test_a_log_directory_that_is_missing_is_made_by_the_run_not_by_reading_the_config(repo: Path) -> None:
    update_config(repo, log={"path": "logs/deep/car.log"})
    assert run_car("status", cwd=repo).returncode == 0
    assert not (repo / "logs").exists()
    assert run_car("once", cwd=repo).returncode == 0
    assert (repo / "logs" / "deep" / "car.log").is_file()


def test_a_hub_repo_with_a_bad_log_path_is_an_error_row_not_a_500(tmp_path: Path) -> None:
    root = tmp_path / "hub"
    make_hub(root)
    agent_repos(root, "alpha", "beta")
    bad = _unmakeable(tmp_path)
    update_config(root / "beta", log={"path": str(bad)})
    with hub_server(root) as served:
        assert served.client.get("/hub/repos").status == 200
        assert "log.path" in (served.entry("beta")["error"] or "")
        run = served.client.post("/hub/repos/beta/run")
        assert 400 <= run.status < 500 and "log.path" in run.json["error"]["message"], run.text
        assert served.client.get("/hub/usage").status == 200


# 7. codex.binary that names no program -----------------------------------------------------------
@pytest.mark.parametrize("binary", ["tools", "tools/"])
def test_a_directory_as_the_agent_binary_is_named_a_directory(repo: Path, binary: str) -> None:
    (repo / "tools").mkdir()
    update_config(repo, codex={"binary": str(repo / binary)})
    done = run_car("once", cwd=repo)
    assert done.returncode == 1, done.stderr
    assert f"agent binary {repo / 'tools'} is a directory; set codex.binary" in one_line(done.stderr)
    assert "to the agent's executable" in done.stderr
    doctor = run_car("doctor", cwd=repo)
    assert doctor.returncode == 1 and f"FAIL  agent binary {repo / 'tools'} is a directory" in doctor.stdout


@pytest.mark.parametrize("binary, says", [
    ("", "codex.binary is empty; set codex.binary"),
    ("   ", "codex.binary is empty; set codex.binary"),
    ("codex --json", "'codex --json' not found on PATH; codex.binary is the program alone, its arguments go in"),
])
def test_an_agent_binary_that_is_no_name_says_what_to_set(repo: Path, binary: str, says: str) -> None:
    update_config(repo, codex={"binary": binary})
    done = run_car("once", cwd=repo)
    assert done.returncode == 1 and says in one_line(done.stderr)


def test_a_relative_path_entry_finds_the_agent_where_it_runs_not_where_car_was_started(repo: Path) -> None:
    """PATH=.:... and `car once` from a subdirectory: shutil.which looked in car's CWD (and answered
    with a relative path), while the agent is spawned in the repo root."""
    agent = repo / "my-agent"
    agent.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE_AGENT} \"$@\"\n")
    agent.chmod(0o755)
    update_config(repo, codex={"binary": "my-agent", "args": []})
    (repo / "sub").mkdir()
    env = car_env(PATH=os.pathsep.join([".", os.environ["PATH"]]))
    done = run_car("once", cwd=repo / "sub", env=env)
    assert done.returncode == 0, done.stderr
    doctor = run_car("doctor", cwd=repo / "sub", env=env)
    assert f"ok    agent {agent}" in doctor.stdout, doctor.stdout


# 8. a key written twice in a YAML file -----------------------------------------------------------
def files_under(root: Path, but: Optional[Path] = None) -> dict:
    """Every file below root (but .git and `but`) with its bytes and mtime: what must not change."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(root).parts and p != but}


TWICE = [  # (config text, line of the second key, line of the first, key)
    ("version: 2\nmode: repo\nrunner:\n  sleep_seconds: 0\ncodex:\n  args: []\nrunner:\n  no_progress_runs: 3\n",
     7, 3, "runner"),
    ("version: 2\nmode: repo\nrunner:\n  sleep_seconds: 0\n  kill_grace_seconds: 2\n  sleep_seconds: 5\n",
     6, 4, "sleep_seconds"),
    ("version: 2\nmode: repo\nrunner: {sleep_seconds: 0, sleep_seconds: 1}\n", 3, 3, "sleep_seconds"),
]


@pytest.mark.parametrize("command", [("status",), ("once",), ("doctor",), ("init", "--force")])
@pytest.mark.parametrize("text, line, first, key", TWICE)
def test_a_key_twice_in_config_yml_is_one_line_and_changes_nothing(
        repo: Path, command: tuple, text: str, line: int, first: int, key: str) -> None:
    config = RepoLayout(repo).config
    config.write_text(text)
    backdate(repo / CAR_DIR)  # old enough that a config that loads would be cached
    before = files_under(repo)
    done = run_car(*command, cwd=repo)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert one_line(done.stderr) == f"car: {config}:{line}: key '{key}' appears twice (first at line {first}); " \
                                    f"keep one\n"
    assert files_under(repo) == before


def test_a_merge_key_may_still_be_overridden_and_errors_name_the_explicit_line(tmp_path: Path) -> None:
    path = tmp_path / CAR_DIR / "config.yml"
    path.parent.mkdir()
    base = "version: 2\nmode: repo\nfast: &fast {sleep_seconds: 0, no_progress_runs: 2}\nrunner:\n  <<: *fast\n"
    path.write_text(base + "  sleep_seconds: 7\n")
    config = load_config(path)
    assert (config.runner.sleep_seconds, config.runner.no_progress_runs) == (7, 2)
    path.write_text(base + "  sleep_seconds: soon\n")
    with pytest.raises(ConfigError, match=r"config.yml:6: runner.sleep_seconds: expected a number"):
        load_config(path)


@pytest.mark.parametrize("manifest, line, first, key", [
    ("version: 1\nrepos:\n- {id: alpha, path: alpha}\nrepos:\n- {id: beta, path: beta}\n", 4, 2, "repos"),
    ("version: 1\nrepos:\n- id: alpha\n  path: alpha\n  id: beta\n", 5, 3, "id"),
])
@pytest.mark.parametrize("command", [("hub", "status"), ("hub", "scan")])
def test_a_key_twice_in_the_hub_manifest_is_one_line_and_changes_nothing(
        tmp_path: Path, manifest: str, line: int, first: int, key: str, command: tuple) -> None:
    root = tmp_path / "hub"
    hub = make_hub(root)
    path = hub.manifest_path
    agent_repos(root, "alpha", "beta", "gamma")  # gamma: new to a scan, which would add it to the manifest
    path.write_text(manifest)
    backdate(root)
    before = files_under(root, but=hub.log_path)  # a scan's hub notes its start and stop there
    done = run_car(*command, cwd=root)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert one_line(done.stderr).startswith(f"car: {path}:{line}: key '{key}' appears twice (first at line "
                                            f"{first}); keep one (car never rewrites a manifest")
    assert files_under(root, but=hub.log_path) == before


def test_a_key_twice_in_the_hub_config_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / "hub"
    config = HubLayout(root).config
    make_hub(root)
    config.write_text(config.read_text() + "mode: hub\n")
    done = run_car("hub", "status", cwd=root)
    assert done.returncode == 2 and f"{config}:" in one_line(done.stderr) and "key 'mode' appears twice" in done.stderr
