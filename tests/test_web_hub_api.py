"""The hub's API (`car hub serve`) against a real server on a free loopback port."""

from __future__ import annotations

import json
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from car.layout import HubLayout, RepoLayout
from car.lock import acquire_lock, release_lock

from support import make_repo, unwritable, wait_until
from web_fixtures import Client, SseReader, hub_server, make_sample_hub, serve_process

ENTRY_KEYS = {"id", "path", "display_name", "enabled", "auto_run", "status", "lock_status", "error",
              "last_run_id", "last_run_started_at", "last_run_finished_at", "last_exit_code",
              "stop_reason", "todo_done", "todo_total"}


@pytest.fixture
def hub_root(tmp_path: Path) -> Path:
    return make_sample_hub(tmp_path / "hub")


@pytest.fixture
def served(hub_root: Path):
    with hub_server(hub_root) as s:
        yield s


def entry_is(served, repo_id: str, **expected) -> bool:
    entry = served.entry(repo_id)
    return all(entry[k] == v for k, v in expected.items())


def wait_status(served, repo_id: str, status: str, timeout: float = 20) -> dict:
    return wait_until(lambda: (lambda e: e if e["status"] == status else None)(served.entry(repo_id)),
                      timeout, f"{repo_id} to be {status}")


def test_hub_repos_lists_every_repo_with_the_design_keys(served):
    data = served.client.get("/hub/repos").json
    assert data["last_scan_at"]
    by_id = {r["id"]: r for r in data["repos"]}
    assert list(by_id) == ["alpha", "beta", "gamma", "delta"]
    assert all(ENTRY_KEYS <= set(r) for r in data["repos"])
    assert {k: r["status"] for k, r in by_id.items()} == {
        "alpha": "idle", "beta": "error", "gamma": "uninitialized", "delta": "missing"}
    assert by_id["alpha"]["todo_total"] == 2 and by_id["alpha"]["todo_done"] == 0


def test_scan_adds_a_new_repo_and_returns_the_list(served, hub_root: Path):
    make_repo(hub_root / "epsilon")
    reply = served.client.post("/hub/repos/scan")
    assert reply.status == 200
    assert "epsilon" in [r["id"] for r in reply.json["repos"]] and reply.json["last_scan_at"]
    assert served.client.get("/hub/repos/scan").status == 405


def test_run_once_through_the_hub_and_read_the_repo_through_its_routes(served):
    reply = served.client.post("/hub/repos/alpha/run", {"once": True})
    assert reply.status == 200 and reply.json["repo"]["id"] == "alpha"
    assert reply.json["repo"]["status"] == "running"
    entry = wait_status(served, "alpha", "idle")
    assert entry["last_run_id"] == 1 and entry["last_exit_code"] == 0
    state = served.client.get("/repos/alpha/api/state").json
    assert state["last_run_id"] == 1 and state["done_todos"] == 1
    assert served.client.get("/repos/alpha/api/runs").json["runs"][0]["id"] == 1
    assert served.client.get("/repos/alpha/api/logs?run_id=1").json["lines"][-1].endswith("(code 0) ===")
    docs = served.client.get("/repos/alpha/api/docs").json
    etag = docs["todo"]["etag"]
    assert served.client.put("/repos/alpha/api/docs/todo", {"content": "- [ ] z\n", "etag": etag}).status == 200
    assert served.client.put("/repos/alpha/api/docs/todo", {"content": "- [ ] y\n", "etag": etag}).status == 409


def test_a_doc_put_with_a_lone_surrogate_under_the_hub_is_400(served, hub_root: Path):
    todo = hub_root / "alpha" / ".codex-autorunner" / "TODO.md"
    before = todo.read_text()
    reply = served.client.call("PUT", "/repos/alpha/api/docs/todo", raw=b'{"content": "a\\ud800b"}')
    assert reply.status == 400 and "not valid Unicode text" in reply.json["error"]["message"], reply.text
    assert todo.read_text() == before


def test_per_repo_routes_drive_the_hubs_one_runner(served, monkeypatch):
    monkeypatch.setenv("FAKE_AGENT_MODE", "slow")
    monkeypatch.setenv("FAKE_AGENT_SLEEP", "0.2")
    monkeypatch.setenv("FAKE_AGENT_LINES", "100")
    assert served.client.post("/repos/alpha/api/run/start", {}).status == 200
    assert served.hub.runner("alpha").active  # the same RepoRunner the hub lists
    assert served.hub.repo("alpha").status.value == "running"
    again = served.client.post("/hub/repos/alpha/run", {})
    assert again.status == 409  # one controller per repo: no second loop
    wait_until(lambda: served.client.get("/repos/alpha/api/state").json["current_run_id"], 10, "a run")
    killed = served.client.post("/hub/repos/alpha/kill")
    assert killed.status == 200 and killed.json["repo"]["id"] == "alpha"
    entry = wait_status(served, "alpha", "idle")
    assert entry["stop_reason"] == "killed" and entry["lock_status"] == "unlocked"


def test_stop_and_resume_through_the_hub(served, hub_root: Path, monkeypatch):
    monkeypatch.setenv("FAKE_AGENT_MODE", "slow")
    monkeypatch.setenv("FAKE_AGENT_SLEEP", "0.1")
    monkeypatch.setenv("FAKE_AGENT_LINES", "5")
    assert served.client.post("/hub/repos/alpha/stop").status == 409  # nothing to stop
    assert served.client.post("/hub/repos/alpha/run", {"once": False}).status == 200
    wait_until(lambda: served.client.get("/repos/alpha/api/state").json["current_run_id"], 10, "run 1")
    assert served.client.post("/hub/repos/alpha/stop").json["repo"]["id"] == "alpha"
    # the hub's list follows the repo's files within moments: wait for the whole expected entry
    wait_until(lambda: entry_is(served, "alpha", status="idle", stop_reason="stopped", last_run_id=1),
               20, "alpha idle after a stop")
    resumed = served.client.post("/hub/repos/alpha/resume", {"once": True})
    assert resumed.status == 200
    wait_until(lambda: entry_is(served, "alpha", status="idle", last_run_id=2), 20, "alpha's run 2")


def test_init_an_uninitialized_repo(served, hub_root: Path):
    assert served.client.post("/hub/repos/gamma/run").status == 409
    assert served.client.get("/repos/gamma/api/state").status == 409
    reply = served.client.post("/hub/repos/gamma/init")
    assert reply.status == 200 and reply.json["repo"]["status"] == "idle"
    assert (hub_root / "gamma" / ".codex-autorunner" / "config.yml").is_file()
    assert served.client.get("/repos/gamma/api/state").json["status"] == "idle"


def test_a_failed_init_is_a_409_naming_the_repo_and_the_fix_and_the_list_says_init_error(served, hub_root: Path):
    (hub_root / "gamma" / ".codex-autorunner").write_text("in the way")
    reply = served.client.post("/hub/repos/gamma/init")
    assert reply.status == 409 and reply.error_code == "init_error", reply.text
    message = reply.json["error"]["message"]
    assert "\n" not in message and message.startswith("gamma: init failed: ")
    assert "is not a directory; move it away" in message
    entry = served.entry("gamma")  # at once: the list is not served from before the init
    assert entry["status"] == "init_error" and "is not a directory" in entry["error"]
    assert message == f"gamma: init failed: {entry['error']}"  # its fix said once, not twice
    (hub_root / "gamma" / ".codex-autorunner").unlink()
    retried = served.client.post("/hub/repos/gamma/init")
    assert retried.status == 200 and retried.json["repo"]["status"] == "idle"
    assert served.entry("gamma")["error"] is None


def test_a_missing_repo_cannot_run(served):
    reply = served.client.post("/hub/repos/delta/run")
    assert reply.status == 409 and "missing" in reply.json["error"]["message"]


def test_a_disabled_repo_starts_through_no_route_and_can_still_be_read(hub_root: Path):
    manifest = hub_root / ".codex-autorunner" / "manifest.yml"
    manifest.write_text(manifest.read_text().replace("enabled: true\n  id: alpha", "enabled: false\n  id: alpha"))
    assert "enabled: false\n  id: alpha" in manifest.read_text()
    layout = RepoLayout(hub_root / "alpha")
    state = layout.state.read_bytes()
    with hub_server(hub_root) as served:
        for path in ("/hub/repos/alpha/run", "/hub/repos/alpha/resume", "/repos/alpha/api/run/start",
                     "/repos/alpha/api/run/resume"):
            reply = served.client.post(path, {"once": True})
            assert reply.status == 409, path
            assert reply.json["error"]["message"] == (f"alpha is disabled (enabled: false in {manifest}); "
                                                      "set it to true to run it"), path
        assert served.client.get("/repos/alpha/api/state").status == 200
        assert served.entry("alpha")["status"] == "idle" and served.entry("alpha")["last_run_id"] is None
    assert not layout.lock.exists() and layout.state.read_bytes() == state


def test_a_loop_that_cannot_take_its_lock_is_refused_not_reported_running(served, hub_root: Path):
    """QA: with .codex-autorunner/ unwritable, run/start answered 200 "running"; the loop then died on its
    thread, and the state never showed why."""
    lock = RepoLayout(hub_root / "alpha").lock
    with unwritable(lock.parent):
        for path in ("/hub/repos/alpha/run", "/repos/alpha/api/run/start", "/repos/alpha/api/run/resume"):
            reply = served.client.post(path, {"once": True})
            assert reply.status == 409 and reply.error_code == "locked", (path, reply.text)
            assert reply.json["error"]["message"].startswith(f"{lock}: cannot create the lock ("), reply.text
            entry = served.entry("alpha")
            assert (entry["status"], entry["last_run_id"]) == ("idle", None), path
    assert not lock.exists()
    assert served.client.post("/hub/repos/alpha/run", {"once": True}).status == 200  # and once it can


def test_a_repo_locked_by_another_process_is_409(served, hub_root: Path):
    lock = RepoLayout(hub_root / "alpha").lock
    acquire_lock(lock)  # a live owner that is not the hub's runner
    try:
        wait_status(served, "alpha", "locked")
        reply = served.client.post("/hub/repos/alpha/run")
        assert reply.status == 409 and reply.error_code == "locked"
        assert served.client.post("/hub/repos/alpha/resume").status == 409
    finally:
        release_lock(lock)


HUB_FLUSHED = ("codex-autorunner-hub.log", "hub_state", ".hub_state", "hub_cache", ".hub_cache")  # the hub's own


@pytest.mark.parametrize("method, path", [
    ("POST", "/hub/repos/nope/run"), ("POST", "/hub/repos/nope/init"), ("GET", "/repos/nope/api/state"),
    ("GET", "/repos/..%2F..%2Fetc/api/state"), ("POST", "/hub/repos/../alpha/run"),
    ("POST", "/hub/repos/..%2Falpha/run"), ("POST", "/hub/repos/alpha%2F..%2Fbeta/kill"),
    ("PUT", "/repos/..%2Falpha/api/docs/todo"), ("GET", "/repos/alpha/api/docs/..%2F..%2F..%2Fconfig.yml"),
    ("POST", "/hub/repos/alpha/explode"), ("GET", "/hub/nothing"),
])
def test_unknown_and_traversal_ids_are_404_and_touch_nothing(served, hub_root: Path, method, path):
    before = sorted(p for p in hub_root.parent.rglob("*") if not p.name.startswith(HUB_FLUSHED))
    reply = served.client.call(method, path, body={"content": "pwned", "once": True})
    assert reply.status == 404 and reply.error_code == "not_found", (path, reply.text)
    after = sorted(p for p in hub_root.parent.rglob("*") if not p.name.startswith(HUB_FLUSHED))
    assert after == before
    # after the look: making alpha's runner loads its config, which may write the config's cache
    assert not served.hub.runner("alpha").active


def test_bad_bodies_are_400(served):
    assert served.client.post("/hub/repos/alpha/run", {"once": "yes"}).status == 400
    assert served.client.call("POST", "/hub/repos/alpha/run", raw=b"{oops").status == 400
    assert not served.hub.runner("alpha").active


def test_hub_events_stream_the_list_then_each_change(served):
    sse = served.sse("/hub/events")
    try:
        first = next(sse.events(10))
        assert first["event"] == "repos" and len(json.loads(first["data"])["repos"]) == 4
        served.client.post("/hub/repos/alpha/run", {"once": True})
        seen = []
        for ev in sse.events(20):
            data = json.loads(ev["data"])
            if ev["event"] == "repo" and data["id"] == "alpha":
                seen.append(data["status"])
                if data["status"] == "idle" and "running" in seen:
                    break
        assert "running" in seen and seen[-1] == "idle", seen
    finally:
        sse.close()


def test_hub_event_clients_that_vanish_end_and_others_go_on(served):
    streams = served.running.server.app.streams
    readers = [served.sse("/hub/events") for _ in range(3)]
    wait_until(lambda: streams.active == 3, 5, "three streams")
    readers[0].close()
    readers[1].close()
    wait_until(lambda: streams.active == 1, 5, "the vanished streams to end")
    served.client.post("/hub/repos/scan")
    assert any(ev["event"] == "repos" for ev in readers[2].events(5))
    readers[2].close()


def test_50_concurrent_clients_on_hub_repos_and_repo_state(served):
    paths = ["/hub/repos", "/repos/alpha/api/state"] * 25
    with ThreadPoolExecutor(max_workers=50) as pool:
        replies = list(pool.map(served.client.get, paths))
    assert [r.status for r in replies] == [200] * 50


def test_host_and_origin_guards_in_hub_mode(served):
    assert served.client.get("/hub/repos", headers={"Host": "attacker.example"}).status == 403
    reply = served.client.post("/hub/repos/alpha/run", {"once": True}, headers={"Origin": "http://evil.example"})
    assert reply.status == 403 and not served.hub.runner("alpha").active
    assert served.client.post("/hub/repos/scan", headers={"Origin": f"http://localhost:{served.port}",
                                                          "Host": f"localhost:{served.port}"}).status == 200


def test_base_path_under_the_hub(hub_root: Path):
    with hub_server(hub_root, base_path="/car") as served:
        assert served.client.get("/car/hub/repos").status == 200
        assert served.client.get("/car/repos/alpha/api/state").json["status"] == "idle"
        assert served.client.get("/car/").headers["content-type"].startswith("text/html")
        assert served.client.get("/hub/repos").status == 200


def test_the_hub_bound_to_another_loopback_address_answers_there(hub_root: Path):
    with hub_server(hub_root, host="127.0.0.2") as served:
        assert served.running.url == f"http://127.0.0.2:{served.port}/"
        client = Client(served.port, host="127.0.0.2")
        assert client.get("/hub/repos").status == 200
        assert client.get("/repos/alpha/api/state").status == 200
        assert client.get("/hub/repos", headers={"Host": "evil.example"}).status == 403


def test_token_when_remote_is_allowed_lives_in_the_hub_dir(hub_root: Path):
    with hub_server(hub_root, allow_remote=True) as served:
        token_path = HubLayout(hub_root).token
        assert token_path.read_text().strip() == served.running.token
        assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
        anonymous = Client(served.port)
        assert anonymous.get("/hub/repos").status == 401
        assert anonymous.post("/hub/repos/alpha/run").status == 401
        assert served.client.get("/hub/repos").status == 200
        sse = SseReader(served.port, f"/hub/events?token={served.running.token}")
        assert sse.status == 200 and next(sse.events(5))["event"] == "repos"
        sse.close()


def test_access_lines_go_to_the_hub_log(hub_root: Path):
    with hub_server(hub_root) as served:
        served.client.post("/hub/repos/scan")
        served.client.get("/hub/nothing")
    text = (hub_root / ".codex-autorunner" / "codex-autorunner-hub.log").read_text()
    assert '"POST /hub/repos/scan HTTP/1.1" 200' in text and '"GET /hub/nothing HTTP/1.1" 404' in text


def test_car_serve_at_a_hub_root_is_hub_serve(hub_root: Path):
    import signal
    with serve_process(hub_root) as served:
        repos = served.client.get("/hub/repos").json["repos"]
        assert [r["id"] for r in repos] == ["alpha", "beta", "gamma", "delta"]
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(30) == 0


def test_hub_usage_sums_over_the_repos(served, hub_root: Path):
    usage = {"input_tokens": 7, "cached_input_tokens": 0, "output_tokens": 3, "reasoning_output_tokens": 0}
    for name in ("alpha", "beta"):
        record = {"id": 1, "started_at": None, "finished_at": None, "exit_code": 0, "usage": usage}
        (hub_root / name / ".codex-autorunner" / "runs.jsonl").write_text(json.dumps(record) + "\n")
    body = served.client.get("/hub/usage").json
    assert {r["id"]: r["total"]["input_tokens"] for r in body["repos"]}["alpha"] == 7
    assert body["total"]["input_tokens"] == 14 and body["total"]["output_tokens"] == 6
