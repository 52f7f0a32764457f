from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from car.bootstrap import init_hub, init_repo
from car.config import load_config
from car.errors import ConfigError, InitError, UsageError
from car.layout import HubLayout, RepoLayout
from car.prompt import DEFAULT_TEMPLATE

from support import make_git_repo

FILES = [".gitignore", "config.yml", "TODO.md", "PROGRESS.md", "OPINIONS.md", "SPEC.md", "prompt.txt",
         "state.json", "codex-autorunner.log"]


def snapshot(root: Path) -> dict:
    d = root / ".codex-autorunner"
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in d.iterdir()}


def test_init_creates_everything(tmp_path: Path) -> None:
    root = make_git_repo(tmp_path / "r")
    init_repo(root)
    d = root / ".codex-autorunner"
    assert sorted(p.name for p in d.iterdir()) == sorted(FILES)
    assert (d / ".gitignore").read_bytes() == b"*\n!/.gitignore\n"
    config = yaml.safe_load((d / "config.yml").read_text())
    assert config["version"] == 2 and config["mode"] == "repo"
    assert "- [ ]" in (d / "TODO.md").read_text()
    assert (d / "prompt.txt").read_text() == DEFAULT_TEMPLATE
    assert load_config(d / "config.yml").runner.sleep_seconds == 5


def test_second_init_changes_nothing(tmp_path: Path) -> None:
    root = make_git_repo(tmp_path / "r")
    init_repo(root)
    (root / ".codex-autorunner" / "TODO.md").write_text("- [ ] mine\n")
    before = snapshot(root)
    report = init_repo(root)
    assert snapshot(root) == before
    assert all(a.startswith("kept") for a in report.actions)


def test_force_rewrites_templates_but_never_docs(tmp_path: Path) -> None:
    root = make_git_repo(tmp_path / "r")
    init_repo(root)
    d = root / ".codex-autorunner"
    (d / "TODO.md").write_text("- [ ] my own todo\n")
    (d / "prompt.txt").write_text("my template {{TODO}}\n")
    (d / ".gitignore").write_text("oops\n")
    (d / "config.yml").write_text("version: 2\nmode: repo\nrunner:\n  sleep_seconds: 1\nmine: kept\n")
    report = init_repo(root, force=True)
    assert (d / "TODO.md").read_text() == "- [ ] my own todo\n"
    assert (d / "prompt.txt").read_text() == DEFAULT_TEMPLATE
    assert (d / "prompt.txt.bak").read_text() == "my template {{TODO}}\n"  # nothing lost
    assert (d / ".gitignore").read_bytes() == b"*\n!/.gitignore\n"
    config = yaml.safe_load((d / "config.yml").read_text())
    assert config["runner"]["sleep_seconds"] == 1 and config["mine"] == "kept"
    assert config["runner"]["kill_grace_seconds"] == 10
    assert any("TODO.md" in a and "never rewritten" in a for a in report.actions)


def test_broken_config_is_an_error_without_force_and_saved_with_it(tmp_path: Path) -> None:
    root = make_git_repo(tmp_path / "r")
    init_repo(root)
    cfg = root / ".codex-autorunner" / "config.yml"
    cfg.write_text("runner: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        init_repo(root)
    assert cfg.read_text() == "runner: [\n"
    init_repo(root, force=True)
    assert (root / ".codex-autorunner" / "config.yml.bak").read_text() == "runner: [\n"
    load_config(cfg)


@pytest.mark.parametrize("broken", ["version: 2\nmode: hub\nhub: [\n", "hub: [\n"],
                         ids=["says hub", "beside hub state"])
def test_force_never_makes_a_hub_whose_config_is_broken_a_repo(tmp_path: Path, broken: str) -> None:
    """QA: `car init --force` at a hub root with broken YAML wrote a repo's config, docs and state
    there; the hub was gone (hub serve: "a repo config"), and `car hub init` refused."""
    root = tmp_path / "hub"
    init_hub(root)
    HubLayout(root).hub_state.write_text("{}")
    cfg = HubLayout(root).config
    cfg.write_text(broken)
    before = sorted(p.name for p in cfg.parent.iterdir())
    with pytest.raises(UsageError, match=r"is a hub's config .* `car init --force` would make this hub root a "
                                         r"repo: fix the file, or move it away and run `car hub init`$"):
        init_repo(root, force=True)
    assert cfg.read_text() == broken and sorted(p.name for p in cfg.parent.iterdir()) == before


def test_git_init_flag(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    root.mkdir()
    init_repo(root, git_init=True)
    assert (root / ".git").is_dir()


def test_car_dir_that_is_a_file_is_an_init_error(tmp_path: Path) -> None:
    root = make_git_repo(tmp_path / "r")
    (root / ".codex-autorunner").write_text("not a dir")
    with pytest.raises(InitError, match="is not a directory"):
        init_repo(root)
    assert (root / ".codex-autorunner").read_text() == "not a dir"


def test_a_directory_where_a_doc_goes_is_an_init_error_not_kept(tmp_path: Path) -> None:
    root = make_git_repo(tmp_path / "r")
    (root / ".codex-autorunner" / "TODO.md").mkdir(parents=True)
    with pytest.raises(InitError) as err:
        init_repo(root)
    assert str(err.value) == (f"{root / '.codex-autorunner' / 'TODO.md'} is not a file (a directory?); move it "
                              f"away and init again, or set docs.todo in {root / '.codex-autorunner' / 'config.yml'} "
                              "to a file")
    (root / ".codex-autorunner" / "TODO.md").rmdir()
    assert init_repo(root)  # once it is moved away, init goes on where it stopped
    assert (root / ".codex-autorunner" / "TODO.md").is_file()


def test_unwritable_file_is_an_init_error_naming_it(tmp_path: Path) -> None:
    # works as root too (chmod would not stop root): a directory where a file must go
    root = make_git_repo(tmp_path / "r")
    (root / ".codex-autorunner" / "prompt.txt").mkdir(parents=True)
    with pytest.raises(InitError, match=r"cannot initialize .*prompt.txt"):
        init_repo(root)


def test_force_keeps_a_copy_of_a_config_it_rewrites(tmp_path: Path) -> None:
    root = make_git_repo(tmp_path / "repo")
    init_repo(root)
    config = RepoLayout(root).config
    text = "# my notes on this repo\nversion: 2\nmode: repo\nrunner:\n  sleep_seconds: 1  # fast\n"
    config.write_text(text)
    init_repo(root, force=True)
    assert config.with_name("config.yml.bak").read_text() == text  # comments and all
    assert "sleep_seconds: 1" in config.read_text() and "kill_grace_seconds" in config.read_text()
