"""Config values that loaded fine and failed later, each run or at `car serve` (QA)."""

from __future__ import annotations

from pathlib import Path

import pytest

from car.config import load_config
from car.errors import ConfigError, UsageError
from car.layout import RepoLayout
from car.web.server import normalize_base_path

from support import make_repo, run_car


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / ".codex-autorunner" / "config.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("template", ["''", "'   '", '"\\n"'])
def test_an_empty_commit_message_template_is_a_config_error(tmp_path: Path, template: str) -> None:
    """QA: taken, and every run then logged git's `Aborting commit due to empty commit message`."""
    path = write(tmp_path, f"version: 2\nmode: repo\ngit:\n  commit_message_template: {template}\n")
    with pytest.raises(ConfigError, match=r"config.yml:4: git.commit_message_template: expected a commit message "
                                          r"that is not empty, such as '\[codex\] run #\{run_id\}', got ") as info:
        load_config(path)
    assert str(path) in str(info.value)
    ok = write(tmp_path, "version: 2\nmode: repo\ngit:\n  commit_message_template: 'wip {run_id}'\n")
    assert load_config(ok).git.commit_message_template == "wip {run_id}"


@pytest.mark.parametrize("mode", ["repo", "hub"])
@pytest.mark.parametrize("value, shown", [("5", "5"), ("'my car'", "'my car'"), ("/a//b", "'/a//b'")])
def test_a_bad_base_path_in_the_config_names_its_key_and_file(tmp_path: Path, mode: str, value: str,
                                                              shown: str) -> None:
    """QA: `base_path: 5` was served at /5/; 'my car' failed only at serve, worded as the CLI's --base-path."""
    path = write(tmp_path, f"version: 2\nmode: {mode}\nserver:\n  base_path: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:4: server.base_path: expected a URL path such as /car, got {shown}"


@pytest.mark.parametrize("value", ["", "/", "car", "/car/", "//car//", " /car ", "/a/b.c/d~e-f_g", "/5",
                                   "my car", "/a b", "a//b", " / car", "/é", "/car?x", "/%20"])
def test_the_config_takes_exactly_the_base_paths_the_server_serves(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"version: 2\nmode: repo\nserver:\n  base_path: {value!r}\n")
    try:
        normalize_base_path(value)
        served = True
    except UsageError:
        served = False
    try:
        taken = load_config(path).server.base_path == value
    except ConfigError:
        taken = False
    assert taken is served


def test_stop_after_runs_of_zero_is_a_config_error_and_runs_nothing(tmp_path: Path) -> None:
    """QA: 0 ran once, while a 0 turns every other limit off; neither meaning is guessed now."""
    path = write(tmp_path, "version: 2\nmode: repo\nrunner:\n  stop_after_runs: 0\n")
    with pytest.raises(ConfigError, match=r"config.yml:4: runner.stop_after_runs: expected a whole number >= 1 "
                                          r"\(or null for no limit\), got 0"):
        load_config(path)
    for value, taken in (("1", 1), ("null", None)):
        assert load_config(write(tmp_path, f"version: 2\nmode: repo\nrunner:\n  stop_after_runs: {value}\n")
                           ).runner.stop_after_runs == taken
    repo = make_repo(tmp_path / "repo", stop_after_runs=0)
    done = run_car("run", cwd=repo)
    assert done.returncode == 2 and "runner.stop_after_runs: expected a whole number >= 1" in done.stderr
    assert '"last_run_id": null' in RepoLayout(repo).state.read_text() and not RepoLayout(repo).runs.exists()
