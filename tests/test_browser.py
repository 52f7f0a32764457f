"""The page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Never skipped: a missing browser or package fails with what to install.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from car.config import load_config
from car.layout import RepoLayout
from car.logs import open_run_log
from car.web.api_hub import hub_routes
from car.web.server import start_in_thread

from support import car_cmd, car_env, make_repo, wait_until
from web_fixtures import hub_server, make_sample_hub, repo_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright's Python package: pip install playwright "
                    "(no browser download: they drive Debian's chromium)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"the browser tests need Chromium at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def hub_root(tmp_path: Path) -> Path:
    return make_sample_hub(tmp_path / "hub", alpha_items=("one", "two", "three"))


def slow_agent(monkeypatch, lines: int = 15, sleep: float = 0.2) -> None:
    monkeypatch.setenv("FAKE_AGENT_MODE", "slow")
    monkeypatch.setenv("FAKE_AGENT_SLEEP", str(sleep))
    monkeypatch.setenv("FAKE_AGENT_LINES", str(lines))


def log_has(page, text: str) -> None:
    """Wait for a line in #log (a locator, not wait_for_function: the page's CSP forbids eval)."""
    page.locator("#log", has_text=text).wait_for()


def badge(page, repo_id: str, status: str):
    return page.locator(f'[data-repo-id="{repo_id}"] .badge[data-status="{status}"]')


def test_hub_home_lists_the_repos_with_their_badges(hub_root: Path, page, tmp_path: Path):
    with hub_server(hub_root) as served:
        page.goto(served.running.url)
        for repo_id, status in (("alpha", "idle"), ("beta", "error"), ("gamma", "uninitialized"),
                                ("delta", "missing")):
            badge(page, repo_id, status).wait_for()
        assert page.locator("[data-repo-id]").count() == 4
        alpha = page.locator('[data-repo-id="alpha"]')
        assert alpha.locator('[data-action="run"]').is_visible()
        assert alpha.locator('[data-action="once"]').is_visible()
        assert alpha.locator('[data-action="kill"]').count() == 0
        assert page.locator('[data-repo-id="gamma"] [data-action="init"]').is_visible()
        assert "0/3" in alpha.inner_text()
        assert "manifest" in page.locator('[data-repo-id="delta"]').inner_text()
        page.locator("#scan").click()
        badge(page, "alpha", "idle").wait_for()
        page.screenshot(path=str(tmp_path / "home.png"), full_page=True)
    assert (tmp_path / "home.png").stat().st_size > 10_000


def test_run_turns_the_badge_to_running_and_back_without_a_reload(hub_root: Path, page, monkeypatch):
    slow_agent(monkeypatch, lines=10, sleep=0.2)
    with hub_server(hub_root) as served:
        page.goto(served.running.url)
        badge(page, "alpha", "idle").wait_for()
        page.evaluate("window.__no_reload = 42")
        page.locator('[data-repo-id="alpha"] [data-action="once"]').click()
        badge(page, "alpha", "running").wait_for()
        page.locator('[data-repo-id="alpha"] [data-action="stop"]').wait_for()
        badge(page, "alpha", "idle").wait_for()
        assert page.evaluate("window.__no_reload") == 42
        assert "1/3" in page.locator('[data-repo-id="alpha"]').inner_text()
        assert served.hub.repo("alpha").last_run_id == 1


def test_init_from_the_home_page(hub_root: Path, page):
    with hub_server(hub_root) as served:
        page.goto(served.running.url)
        page.locator('[data-repo-id="gamma"] [data-action="init"]').click()
        badge(page, "gamma", "idle").wait_for()
        assert (hub_root / "gamma" / ".codex-autorunner" / "config.yml").is_file()
        assert served.hub.repo("gamma").status.value == "idle"


def test_docs_editor_saves_and_resolves_conflicts(hub_root: Path, page, tmp_path: Path):
    todo = hub_root / "alpha" / ".codex-autorunner" / "TODO.md"
    with hub_server(hub_root) as served:
        page.goto(served.running.url + "#/repos/alpha")
        page.locator('#repo-status[data-status="idle"]').wait_for()
        page.locator('[data-doc-tab="todo"]').click()
        editor = page.locator("#doc-editor")
        page.locator("#doc-editor:enabled").wait_for()
        assert "- [ ] one" in editor.input_value()
        editor.fill("# TODO\n\n- [ ] saved from the browser\n")
        page.locator("#doc-save").click()
        page.locator('#doc-status[data-state="saved"]').wait_for()
        assert todo.read_text() == "# TODO\n\n- [ ] saved from the browser\n"

        # keep mine: the disk changed behind the editor's back; saving shows the conflict
        editor.fill("# TODO\n\n- [ ] mine\n")
        todo.write_text("# TODO\n\n- [ ] theirs\n")
        editor.press("Control+s")
        page.locator("#doc-conflict").wait_for(state="visible")
        assert page.locator("#doc-theirs").input_value() == "# TODO\n\n- [ ] theirs\n"
        assert todo.read_text() == "# TODO\n\n- [ ] theirs\n"  # nothing written on a 409
        page.screenshot(path=str(tmp_path / "conflict.png"), full_page=True)
        page.locator("#keep-mine").click()
        page.locator("#doc-conflict").wait_for(state="hidden")
        page.locator('#doc-status[data-state="saved"]').wait_for()
        assert todo.read_text() == "# TODO\n\n- [ ] mine\n"

        # take theirs: the editor shows the disk's text and nothing is written
        editor.fill("# TODO\n\n- [ ] mine again\n")
        todo.write_text("# TODO\n\n- [ ] theirs again\n")
        page.locator("#doc-save").click()
        page.locator("#doc-conflict").wait_for(state="visible")
        page.locator("#take-theirs").click()
        page.locator("#doc-conflict").wait_for(state="hidden")
        assert editor.input_value() == "# TODO\n\n- [ ] theirs again\n"
        assert todo.read_text() == "# TODO\n\n- [ ] theirs again\n"


def test_live_log_shows_lines_as_the_agent_prints_them(hub_root: Path, page, monkeypatch, tmp_path: Path):
    slow_agent(monkeypatch, lines=12, sleep=0.25)
    with hub_server(hub_root) as served:
        page.goto(served.running.url + "#/repos/alpha")
        page.locator('#repo-status[data-status="idle"]').wait_for()
        page.locator('#controls [data-action="once"]').click()
        page.locator('#repo-status[data-status="running"]').wait_for()
        log = page.locator("#log")
        log_has(page, "working 2")
        assert "=== run 1 start ===" in log.inner_text()
        assert "working 11" not in log.inner_text()  # it arrived live, before the run ended
        page.screenshot(path=str(tmp_path / "repo.png"), full_page=True)
        log_has(page, "=== run 1 end")
        page.locator('#repo-status[data-status="idle"]').wait_for()
        page.locator('#run-picker option[value="1"]').wait_for(state="attached")
        page.locator("#run-picker").select_option("1")
        log_has(page, "working 11")
    assert (tmp_path / "repo.png").stat().st_size > 10_000


def test_a_log_line_with_a_carriage_return_shows_once_as_one_line(hub_root: Path, page):
    """An agent's progress bar (text\\rtext) comes as \\r in GET logs and as U+240D in the stream: the
    live view must still know it has the line (it showed it twice), and show it as one line."""
    config = load_config(RepoLayout(hub_root / "alpha").config)
    log = open_run_log(config)
    log.start_run(1)
    log.write("Downloading  10%\rDownloading 100%", 1)
    log.end_run(1, "code 0")
    log.close()
    with hub_server(hub_root) as served:
        page.goto(served.running.url + "#/repos/alpha")
        log_has(page, "=== run 1 end")
        page.locator('#log-state[data-state="live"]').wait_for()
        page.wait_for_timeout(500)  # the stream's context lines, had they been taken for new ones
        shown = "Downloading  10%\u240dDownloading 100%"
        assert page.locator("#log").inner_text().count(shown) == 1
        page.locator('#run-picker option[value="1"]').wait_for(state="attached")
        page.locator("#run-picker").select_option("1")
        page.locator("#log-state", has_text="saved log").wait_for()
        log_has(page, "=== run 1 end")
        assert page.locator("#log").inner_text().count(shown) == 1


def test_only_a_runs_own_start_and_end_show_as_markers(hub_root: Path, page):
    """Review: the page styled any line holding '=== run N start|end' as a marker (and polled on it): an
    agent's line that prints those words, or the next line of one of car's messages."""
    config = load_config(RepoLayout(hub_root / "alpha").config)
    log = open_run_log(config)
    log.start_run(1)
    log.write("=== run 1 end (code 0) ===", 1)  # the agent's own text
    log.end_run(1, "code 0")
    log.write("car: a note\n=== run 2 start ===")  # outside a run: its next line is indented
    log.close()
    with hub_server(hub_root) as served:
        page.goto(served.running.url + "#/repos/alpha")
        log_has(page, "a note")
        markers = page.locator("#log .ln.marker")
        assert markers.count() == 2, page.locator("#log").inner_text()
        assert "=== run 1 start ===" in markers.nth(0).inner_text()
        assert "=== run 1 end (code 0) ===" in markers.nth(1).inner_text()


def test_single_repo_page_under_a_base_path(tmp_path: Path, page, monkeypatch):
    slow_agent(monkeypatch, lines=6, sleep=0.1)
    repo = make_repo(tmp_path / "solo")
    with repo_server(repo, base_path="/car") as served:
        page.goto(served.running.url)
        page.locator('#repo-status[data-status="idle"]').wait_for()
        assert page.locator("#home-view").is_hidden()
        page.locator('#controls [data-action="once"]').click()
        log_has(page, "working 5")
        page.locator('#repo-status[data-status="idle"]').wait_for()
        assert served.runner.view().last_run_id == 1


def test_the_page_asks_for_the_token_when_remote_is_allowed(hub_root: Path, page):
    with hub_server(hub_root, allow_remote=True) as served:
        page.goto(served.running.url)
        page.locator("#auth").wait_for(state="visible")
        assert page.locator("[data-repo-id]").count() == 0
        page.locator("#token").fill(served.running.token)
        page.locator("#auth-form button[type=submit]").click()
        badge(page, "alpha", "idle").wait_for()
        page.locator('#hub-live[data-state="live"]').wait_for()  # the event stream got in with ?token=
        assert re.search(r"4 repos", page.locator("#home-summary").inner_text())


def test_the_repo_page_shows_a_repo_whose_directory_went_missing_and_recovers(hub_root: Path, page):
    with hub_server(hub_root) as served:
        page.goto(served.running.url + "#/repos/alpha")
        page.locator('#repo-status[data-status="idle"]').wait_for()
        page.locator('#controls [data-action="run"]').wait_for()
        (hub_root / "alpha").rename(hub_root / "alpha_gone")
        page.locator('#repo-status[data-status="missing"]').wait_for()
        page.locator("#repo-error").wait_for(state="visible")
        assert page.locator("#controls [data-action]").count() == 0  # nothing there can work
        assert page.locator("#lock-status").inner_text() == "—"  # no stale "unlocked"
        assert "gone from disk" in page.locator("#repo-hint").inner_text()

        (hub_root / "alpha_gone").rename(hub_root / "alpha")
        page.locator('#repo-status[data-status="idle"]').wait_for()
        page.locator('#controls [data-action="run"]').wait_for()
        page.locator("#repo-error").wait_for(state="hidden")
        assert page.locator("#lock-status").inner_text() == "unlocked"


def test_saving_a_doc_of_a_missing_repo_shows_why_not_a_conflict(hub_root: Path, page):
    with hub_server(hub_root) as served:
        page.goto(served.running.url + "#/repos/alpha")
        page.locator("#doc-editor:enabled").wait_for()
        (hub_root / "alpha").rename(hub_root / "alpha_gone")
        wait_until(lambda: served.entry("alpha")["status"] == "missing", 20, "alpha to be missing")
        page.locator("#doc-editor").fill("# TODO\n\n- [ ] typed after the repo went away\n")
        page.locator("#doc-save").click()
        status = page.locator('#doc-status[data-state="error"]')
        status.wait_for()
        text = status.inner_text()
        assert "missing on disk" in text, text  # the server's own reason
        assert "changed on disk" not in text, text  # a 409 for another reason is no etag conflict
        assert page.locator("#doc-conflict").is_hidden()
        assert not (hub_root / "alpha").exists()


def test_a_disabled_repo_offers_no_run_and_says_how_to_enable_it(hub_root: Path, page):
    manifest = hub_root / ".codex-autorunner" / "manifest.yml"
    data = yaml.safe_load(manifest.read_text())
    for repo in data["repos"]:
        repo["enabled"] = repo["id"] != "alpha"
    manifest.write_text(yaml.safe_dump(data))
    with hub_server(hub_root) as served:
        page.goto(served.running.url)
        badge(page, "alpha", "idle").wait_for()
        alpha = page.locator('[data-repo-id="alpha"]')
        assert alpha.locator("[data-action]").count() == 0
        note = alpha.locator(".note")
        assert note.is_visible()
        assert "enabled: false" in note.inner_text() and "manifest.yml" in note.inner_text()
        assert page.locator('[data-repo-id="beta"] [data-action="run"]').is_visible()  # enabled: unchanged

        page.goto(served.running.url + "#/repos/alpha")
        page.locator('#repo-status[data-status="idle"]').wait_for()
        page.locator("#repo-hint", has_text="enabled: false").wait_for()
        assert page.locator("#controls [data-action]").count() == 0


def test_a_loop_run_by_another_process_can_be_stopped_and_killed_from_the_page(hub_root: Path, page,
                                                                               monkeypatch):
    slow_agent(monkeypatch, lines=400, sleep=0.1)  # one run outlasts the test: only Kill ends it soon
    proc = subprocess.Popen(car_cmd("run"), cwd=hub_root / "alpha", env=car_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with hub_server(hub_root) as served:
            page.goto(served.running.url + "#/repos/alpha")
            page.locator('#repo-status[data-status="locked"]').wait_for()
            page.locator('#controls [data-action="stop"]').wait_for()
            assert page.locator('#controls [data-action="kill"]').is_visible()

            page.goto(served.running.url)
            badge(page, "alpha", "locked").wait_for()
            alpha = page.locator('[data-repo-id="alpha"]')
            assert alpha.locator('[data-action="stop"]').is_visible()
            for action in ("run", "once", "resume"):
                assert alpha.locator(f'[data-action="{action}"]').count() == 0
            alpha.locator('[data-action="kill"]').click()
            assert proc.wait(timeout=30) == 0  # its loop saw the kill and ended by itself
            badge(page, "alpha", "idle").wait_for()
            assert served.entry("alpha")["stop_reason"] == "killed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_while_the_hub_is_unreachable_the_page_shows_the_last_known_state_as_stale(hub_root: Path, page,
                                                                                 monkeypatch):
    slow_agent(monkeypatch, lines=400, sleep=0.1)
    with hub_server(hub_root) as served:
        page.goto(served.running.url)
        badge(page, "alpha", "idle").wait_for()
        page.locator('[data-repo-id="alpha"] [data-action="once"]').click()
        badge(page, "alpha", "running").wait_for()
        stop = page.locator('[data-repo-id="alpha"] [data-action="stop"]')
        stop.wait_for()
        timer = page.locator('[data-repo-id="alpha"] [data-since]')
        timer.wait_for()  # the run's start time is known: "running" may show a moment before it
        port = served.port
        served.running.close()  # the hub's loops go on; only its web server is gone
        try:
            page.locator("#stale-note").wait_for(state="visible")
            assert page.locator("body[data-stale]").count() == 1
            assert stop.is_disabled() and page.locator("#scan").is_disabled()
            frozen = timer.inner_text()
            page.wait_for_timeout(1500)  # the timer would tick at least once meanwhile
            assert timer.inner_text() == frozen

            served.running = start_in_thread(hub_routes(served.hub), port=port, log=served.hub.log)
            page.locator("#stale-note").wait_for(state="hidden")
            assert page.locator("body[data-stale]").count() == 0
            assert stop.is_enabled()
            stop.click()
            served.client.post("/hub/repos/alpha/kill")
            badge(page, "alpha", "idle").wait_for()
        finally:
            served.running.close()
