"""probe.py: a repo's files read once, re-read when their stat changes, trusted only when settled."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from car.bootstrap import init_repo
from car.layout import RepoLayout
from car.probe import NOT_INITIALIZED, RepoProbe
from car.state import RepoState, save_state

from hub_fixtures import git_repos
from support import backdate, make_git_repo, run_car, update_config, write_todo


def make(tmp_path: Path) -> Path:
    root = make_git_repo(tmp_path / "repo")
    init_repo(root)
    write_todo(root, ["a", "b"], done=["c"])
    return root


def test_an_uninitialized_repo(tmp_path: Path):
    assert RepoProbe(str(make_git_repo(tmp_path / "repo"))).read() is NOT_INITIALIZED


def test_facts_come_from_state_lock_and_todo(tmp_path: Path):
    root = make(tmp_path)
    save_state(RepoLayout(root).state, RepoState(status="error", last_run_id=3, last_exit_code=2,
                                                 stop_reason="agent_failed"))
    files = RepoProbe(str(root)).read()
    assert (files.run_status, files.last_run_id, files.last_exit_code, files.stop_reason) == (
        "error", 3, 2, "agent_failed")
    assert (files.todo_done, files.todo_total, files.lock_status.value) == (1, 3, "unlocked")


def test_settled_files_are_stat_ed_not_read_and_the_same_object_comes_back(tmp_path: Path):
    root = make(tmp_path)
    backdate(root)
    probe = RepoProbe(str(root))
    first = probe.read()
    reads = probe.rereads
    assert probe.read() is first and probe.rereads == reads


def test_a_same_size_edit_right_after_a_read_is_seen(tmp_path: Path):
    root = make(tmp_path)
    probe = RepoProbe(str(root))
    assert probe.read().todo_done == 1
    todo = root / ".codex-autorunner" / "TODO.md"
    todo.write_text(todo.read_text().replace("- [ ] a", "- [x] a"))  # in place, same size, same tick
    assert probe.read().todo_done == 2


def test_a_custom_todo_path_is_followed(tmp_path: Path):
    root = make(tmp_path)
    (root / "PLAN.md").write_text("- [x] one\n- [x] two\n- [ ] three\n")
    update_config(root, docs={"todo": "PLAN.md"})
    files = RepoProbe(str(root)).read()
    assert (files.todo_done, files.todo_total) == (2, 3)


def test_a_bom_before_the_first_item_hides_nothing_from_the_hub(tmp_path: Path):
    root = make(tmp_path)
    (root / ".codex-autorunner" / "TODO.md").write_bytes(b"\xef\xbb\xbf- [ ] one\n- [x] two\n")
    files = RepoProbe(str(root)).read()
    assert (files.todo_done, files.todo_total) == (1, 2)


def test_a_fresh_probe_seeded_with_an_export_reads_nothing(tmp_path: Path):
    root = make(tmp_path)
    update_config(root, codex={"binary": "my-agent"})  # not the default text: a YAML parse to skip
    backdate(root)
    probe = RepoProbe(str(root))
    files = probe.read()
    seed = json.loads(json.dumps(probe.export()))  # as hub_state.json stores it
    fresh = RepoProbe(str(root), seed)
    assert fresh.read() == files and fresh.rereads == 0
    save_state(RepoLayout(root).state, RepoState(status="error"))
    assert fresh.read().run_status == "error" and fresh.rereads == 1


def test_a_bad_seed_is_ignored(tmp_path: Path):
    root = make(tmp_path)
    expected = RepoProbe(str(root)).read()
    seed = {"state": ["x", [1, 2, 3], [["only one"], None]], "todo": "nonsense", "other": [1, 2, 3]}
    assert RepoProbe(str(root), seed).read() == expected
    for seed in ([[1, 2, 3, 4], "x", []], [[1, 2, 3, 7, None], None, None]):
        assert RepoProbe(str(root), seed).read() == expected
    bare = make_git_repo(tmp_path / "bare")  # a seed that says "no config here, yet initialized"
    seed = [[None, 0, 0, ".codex-autorunner/TODO.md", None], None, None]
    assert RepoProbe(str(bare), seed).read() is NOT_INITIALIZED


def test_a_lock_is_judged_on_every_read(tmp_path: Path):
    root = make(tmp_path)
    probe = RepoProbe(str(root))
    child = subprocess.Popen(["sleep", "30"])
    try:
        RepoLayout(root).lock.write_text(json.dumps({"pid": child.pid}))
        assert probe.read().lock_status.value == "locked_alive"
    finally:
        child.kill()
        child.wait()
    assert probe.read().lock_status.value == "locked_stale"
    RepoLayout(root).lock.unlink()
    assert probe.read().lock_status.value == "unlocked"


def test_a_todo_that_cannot_be_read_is_the_repos_error_and_is_read_again_once_fixed(tmp_path: Path):
    root = make(tmp_path)
    todo = root / ".codex-autorunner" / "TODO.md"
    todo.unlink()
    todo.symlink_to(todo.name)  # a loop: ELOOP, an OSError other than "not there", even for root
    probe = RepoProbe(str(root))
    files = probe.read()
    assert files.error.startswith(f"{root}/.codex-autorunner/TODO.md: cannot read (Too many levels of symbolic "
                                  "links); fix the file, or the setting in .codex-autorunner/config.yml")
    assert (files.todo_done, files.todo_total) == (0, 0)
    todo.unlink()
    todo.write_text("- [x] a\n- [ ] b\n")
    files = probe.read()
    assert (files.error, files.todo_done, files.todo_total) == (None, 1, 2)


def test_a_car_dir_that_cannot_be_searched_is_an_error_not_a_stale_lock(tmp_path: Path):
    """QA: a repo whose .codex-autorunner could not be read (chmod 000, as a user) was listed
    `locked_stale`, pointing at `car resume`. A symlink loop fails the same way, even for root."""
    git_repos(tmp_path, "alpha")
    assert run_car("hub", "scan", cwd=tmp_path).returncode == 0
    car_dir = tmp_path / "alpha" / ".codex-autorunner"
    car_dir.rename(tmp_path / "alpha" / "kept")
    car_dir.symlink_to(car_dir.name)
    files = RepoProbe(str(tmp_path / "alpha")).read()
    assert files.lock_status.value == "unlocked"
    assert files.error.startswith(f"{car_dir}/config.yml: cannot read config (Too many levels of symbolic links); "
                                  "make it a readable file")
    done = run_car("hub", "status", "--json", cwd=tmp_path)
    entry = json.loads(done.stdout)["repos"][0]
    assert (entry["status"], entry["lock_status"]) == ("error", "unlocked"), entry
    assert "cannot read config (Too many levels of symbolic links)" in entry["error"]
