"""The page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Never skipped: a missing browser or package fails with what to install.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from support import make_repo
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
