from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from car.bootstrap import init_repo
from car.config import DEFAULT_CODEX_ARGS, RACY_NS, HubConfig, RepoConfig, find_config, load_config
from car.errors import ConfigError
from car.layout import CONFIG_CACHE_NAME, RepoLayout

from support import car_env


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / ".codex-autorunner" / "config.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_empty_repo_config_has_every_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "version: 2\nmode: repo\n"))
    assert isinstance(config, RepoConfig)
    assert config.root == tmp_path.resolve()
    assert config.codex.binary == "codex" and config.codex.args == DEFAULT_CODEX_ARGS
    assert config.prompt.prev_run_max_chars == 6000
    r = config.runner
    assert (r.sleep_seconds, r.stop_after_runs, r.max_wallclock_seconds, r.kill_grace_seconds,
            r.run_timeout_seconds, r.idle_timeout_seconds, r.no_progress_runs) == (5, None, None, 10, 14400, 1800, 3)
    assert (config.git.auto_commit, config.git.commit_message_template) == (False, "[codex] run #{run_id}")
    assert (config.server.host, config.server.port, config.server.base_path) == ("127.0.0.1", 4173, "")
    assert (config.log.max_bytes, config.log.backup_count) == (10_000_000, 3)
    assert config.doc_path("todo") == tmp_path.resolve() / ".codex-autorunner" / "TODO.md"


def test_overrides_and_partial_sections(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "version: 2\nmode: repo\nrunner:\n  sleep_seconds: 0.5\n"
                                         "  stop_after_runs: 4\nlog:\n  max_bytes: 1_000\n"))
    assert config.runner.sleep_seconds == 0.5 and config.runner.stop_after_runs == 4
    assert config.runner.kill_grace_seconds == 10  # untouched keys keep defaults
    assert config.log.max_bytes == 1000 and config.log.backup_count == 3


def test_hub_config_is_a_distinct_type_with_the_spec_keys(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "version: 2\nmode: hub\nhub:\n  log:\n    backup_count: 5\n"))
    assert isinstance(config, HubConfig)
    assert config.hub.repos_root == "." and config.hub.discover_depth == 1
    assert config.hub.auto_init_missing is True
    # a partial hub.log keeps the hub log's own path, not the repo default
    assert config.log_path == tmp_path.resolve() / ".codex-autorunner" / "codex-autorunner-hub.log"
    assert config.hub.log.backup_count == 5 and config.hub.log.max_bytes == 10_000_000


@pytest.mark.parametrize("text, message", [
    ("version: 2\nmode: repo\nrunner:\n  sleep_seconds: soon\n",
     r"config.yml:4: runner.sleep_seconds: expected a number >= 0, got 'soon'"),
    ("version: 2\nmode: repo\ngit:\n  auto_commit: 'yes'\n", r":4: git.auto_commit: expected true or false"),
    ("version: 2\nmode: repo\ncodex:\n  args: exec\n", r":4: codex.args: expected a list of strings"),
    ("version: 2\nmode: repo\nrunner: [1\n", r"config.yml:4: invalid YAML: expected ',' or '\]'.*started at line 3"),
    ("version: 2\nmode: repo\nrunner: [1\n", r"; fix the file or run `car init --force`$"),
    # QA: `car init --force`, advised for a broken hub config, made the hub's root a repo
    ("version: 2\nmode: hub\nhub:\n  repos_root: [x\n", r"; fix the file, or move it away and run `car hub init`"),
    ("version: 1\nmode: repo\n", r":1: version: expected 2"),
    ("version: 2\nmode: both\n", r":2: mode: expected 'repo' or 'hub'"),
    ("- a list\n", r"expected a mapping of settings"),
    ("version: 2\nrunner: 5\n", r":2: runner: expected a mapping"),
    ("version: 2\nlog:\n  backup_count: -1\n", r"log.backup_count: expected a whole number >= 0, got -1"),
    # QA: taken, and ignored: no repo two levels down was found, and nothing said why
    ("version: 2\nmode: hub\nhub:\n  discover_depth: 2\n",
     r"config.yml:4: hub.discover_depth: expected 1 \(car finds repos one level below repos_root\), got 2$"),
])
def test_errors_name_file_line_key_and_expectation(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("mode, setting, key", [
    ("repo", 'log:\n  path: "a\\0b"', "log.path"), ("repo", 'docs:\n  todo: "\\0"', "docs.todo"),
    ("repo", 'prompt:\n  template: "t\\0"', "prompt.template"), ("repo", 'codex:\n  binary: "x\\0"', "codex.binary"),
    ("repo", 'codex:\n  args: [exec, "-\\0"]', "codex.args"),
    ("repo", 'git:\n  commit_message_template: "run\\0"', "git.commit_message_template"),
    ("repo", 'server:\n  host: "127.0.0.1\\0"', "server.host"),
    ("repo", 'server:\n  base_path: "/\\0"', "server.base_path"),
    ("hub", 'hub:\n  repos_root: "\\0"', "hub.repos_root"), ("hub", 'hub:\n  manifest: "m\\0"', "hub.manifest"),
    ("hub", 'hub:\n  log:\n    path: "\\0"', "hub.log.path"),
])
def test_a_nul_in_a_string_setting_is_a_config_error_naming_its_line(
        tmp_path: Path, mode: str, setting: str, key: str) -> None:
    """Paths, argv items and addresses cannot hold a NUL: not `ValueError: embedded null byte` later."""
    path = write(tmp_path, f"version: 2\nmode: {mode}\n{setting}\n")
    line = 2 + setting.count("\n") + 1
    with pytest.raises(ConfigError, match=rf"config.yml:{line}: {key}: expected text without a NUL"):
        load_config(path)


def test_unknown_keys_are_warnings_not_errors(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "version: 2\nmode: repo\nextra: 1\nrunner:\n  typo_seconds: 3\n"))
    assert any("unknown key extra" in w for w in config.warnings)
    assert any("unknown key runner.typo_seconds" in w for w in config.warnings)


def test_nearest_config_walking_up(tmp_path: Path) -> None:
    hub = write(tmp_path, "version: 2\nmode: hub\n")
    repo = write(tmp_path / "repo", "version: 2\nmode: repo\n")
    deep = tmp_path / "repo" / "src" / "pkg"
    deep.mkdir(parents=True)
    assert find_config(deep) == repo
    assert find_config(tmp_path / "repo") == repo
    other = tmp_path / "other"
    other.mkdir()
    assert find_config(other) == hub


def test_no_config_anywhere(tmp_path: Path) -> None:
    assert find_config(tmp_path) is None or not str(find_config(tmp_path)).startswith(str(tmp_path))


# the parsed-config cache (.config.json) ---------------------------------------------------
def later() -> int:
    """A clock at which the files a test just wrote are old enough to be cached."""
    return time.time_ns() + 2 * RACY_NS


def test_a_cached_config_is_the_same_config_and_loads_without_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 2\nmode: repo\nextra: 1\nrunner:\n  sleep_seconds: 0.5\n")
    parsed = load_config(path, clock_ns=later)
    assert (path.parent / CONFIG_CACHE_NAME).is_file()
    assert load_config(path) == parsed  # warnings included
    code = ("import sys; from pathlib import Path; from car.config import load_config; "
            f"c = load_config(Path({str(path)!r})); print(c.runner.sleep_seconds, c.warnings, 'yaml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=car_env(), capture_output=True, text=True, timeout=60)
    assert out.stdout == f"0.5 {parsed.warnings} False\n", out.stderr


def test_an_untouched_config_is_cached_too(tmp_path: Path) -> None:
    init_repo(tmp_path)
    path = RepoLayout(tmp_path).config
    assert load_config(path, clock_ns=later) == RepoConfig(root=tmp_path.resolve())
    assert (path.parent / CONFIG_CACHE_NAME).is_file()
    assert load_config(path) == RepoConfig(root=tmp_path.resolve())


def test_the_cache_serves_while_the_file_is_unchanged_and_not_after_a_write(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 2\nmode: repo\nrunner:\n  sleep_seconds: 0.5\n")
    load_config(path, clock_ns=later)
    cache = path.parent / CONFIG_CACHE_NAME
    cached = json.loads(cache.read_text())
    cached["data"]["runner"]["sleep_seconds"] = 7
    cache.write_text(json.dumps(cached))
    assert load_config(path).runner.sleep_seconds == 7  # served from the cache
    path.write_text("version: 2\nmode: repo\nrunner:\n  sleep_seconds: 0.25\n")
    assert load_config(path).runner.sleep_seconds == 0.25
    cached["data"]["runner"]["sleep_seconds"] = "soon"  # data this car rejects: the YAML decides
    cache.write_text(json.dumps(cached))
    assert load_config(path).runner.sleep_seconds == 0.25


def test_a_config_written_within_the_last_second_is_not_cached(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 2\nmode: repo\n")
    load_config(path)
    assert not (path.parent / CONFIG_CACHE_NAME).exists()


@pytest.mark.parametrize("junk", ["", "{", "[]", '{"car": "0.0.0", "stamp": [], "data": {}}'])
def test_a_broken_or_foreign_cache_is_ignored_and_replaced(tmp_path: Path, junk: str) -> None:
    path = write(tmp_path, "version: 2\nmode: repo\nrunner:\n  sleep_seconds: 0.5\n")
    cache = path.parent / CONFIG_CACHE_NAME
    cache.write_text(junk)
    assert load_config(path, clock_ns=later).runner.sleep_seconds == 0.5
    assert json.loads(cache.read_text())["data"]["runner"]["sleep_seconds"] == 0.5


@pytest.mark.parametrize("extra", ["extra: 2024-01-01\n", "extra:\n  1: one\n"])
def test_a_config_json_cannot_hold_is_parsed_every_time(tmp_path: Path, extra: str) -> None:
    path = write(tmp_path, "version: 2\nmode: repo\n" + extra)
    assert any("unknown key extra" in w for w in load_config(path, clock_ns=later).warnings)
    assert not (path.parent / CONFIG_CACHE_NAME).exists()


def test_errors_are_not_cached(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 2\nmode: repo\nrunner:\n  sleep_seconds: soon\n")
    for _ in range(2):
        with pytest.raises(ConfigError, match=r"config.yml:4: runner.sleep_seconds: expected a number"):
            load_config(path, clock_ns=later)
    assert not (path.parent / CONFIG_CACHE_NAME).exists()
