"""no_progress ends a loop whose agent changes nothing, and never one whose agent works (real git, real car)."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest

from car import git as car_git

from support import git, make_git_repo, make_repo, run_car, update_config

# names git status C-quotes, or that a naive split of its lines would cut
ODD_NAMES = ["with space.txt", 'q"uote\nnew\tline é.txt', "back\\slash -> arrow.txt"]


def shell_agent(repo: Path, script: str) -> None:
    """The agent is `sh -c SCRIPT` that reads its prompt and never ticks the one open TODO item."""
    update_config(repo, codex={"binary": shutil.which("sh"), "args": ["-c", f"cat >/dev/null; {script}"]})


def loop_end(repo: Path) -> str:
    """`car run` to its end; why it ended and its last run, e.g. "no_progress (last run 3"."""
    done = run_car("run", cwd=repo)
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("car: loop ended: "))
    return line[len("car: loop ended: "):].split(",")[0]


@pytest.mark.parametrize("name", ["f.txt", *ODD_NAMES])
@pytest.mark.parametrize("tracked", [False, True], ids=["untracked", "tracked"])
def test_an_agent_that_edits_the_same_file_every_run_makes_progress(tmp_path: Path, name: str,
                                                                   tracked: bool) -> None:
    """QA: ended no_progress after run 4 although the file grew every run: from run 2 on, git status
    listed it the same ("? f.txt" / "1 .M ... f.txt") and the fingerprint stayed put."""
    repo = make_repo(tmp_path / "repo", items=["never ticked"], stop_after_runs=6)
    if tracked:
        (repo / name).write_text("committed\n")
        git(repo, "add", "--", name)
        git(repo, "commit", "-q", "-m", "base")
    shell_agent(repo, f"echo x >> {shlex.quote(name)}")
    assert loop_end(repo) == "stop_after_runs (last run 6"
    assert (repo / name).read_text().count("x\n") == 6


def test_an_agent_that_changes_nothing_ends_no_progress_beside_changed_files(tmp_path: Path) -> None:
    """Untracked, modified and deleted files stay as they are; car writes its state, log and runs.jsonl
    every run, here with no .gitignore hiding them from git status: none of that is the agent's progress."""
    repo = make_repo(tmp_path / "repo", items=["never ticked"], stop_after_runs=10)
    for name in ["kept.txt", "gone.txt"]:
        (repo / name).write_text("committed\n")
    git(repo, "add", "kept.txt", "gone.txt")
    git(repo, "commit", "-q", "-m", "base")
    (repo / "kept.txt").write_text("modified before the loop\n")
    (repo / "gone.txt").unlink()
    for name in ["untracked.txt", *ODD_NAMES]:
        (repo / name).write_text("untracked\n")
    (repo / ".codex-autorunner" / ".gitignore").unlink()
    shell_agent(repo, "true")
    listed = git(repo, "status", "--porcelain", "--untracked-files=all")
    assert ".codex-autorunner/state.json" in listed or ".codex-autorunner/config.yml" in listed
    assert loop_end(repo) == "no_progress (last run 3"


@pytest.mark.parametrize("log_path", ["logs/car.log", "car.log"])
def test_a_run_log_kept_outside_car_dir_is_not_progress(tmp_path: Path, log_path: str) -> None:
    """log.path outside .codex-autorunner/, where no .gitignore hides it: car writes it every run (and
    rotates it, with max_bytes this small), which must not keep a loop that does nothing going."""
    repo = make_repo(tmp_path / "repo", items=["never ticked"], stop_after_runs=8)
    update_config(repo, log={"path": log_path, "max_bytes": 2000, "backup_count": 3})
    shell_agent(repo, "seq 1 100")  # enough output for the log to rotate
    assert loop_end(repo) == "no_progress (last run 3"
    assert (repo / (log_path + ".1")).exists()  # it did rotate


def monorepo_dir(tmp_path: Path) -> Path:
    """A car repo in a directory of a larger work tree (no .git of its own), one file there modified."""
    mono = make_git_repo(tmp_path / "mono")
    sub = make_repo(mono / "sub", items=["never ticked"], stop_after_runs=6)
    shutil.rmtree(sub / ".git")
    (mono / "outside.txt").write_text("committed\n")
    (sub / "work.txt").write_text("committed\n")
    git(mono, "add", "outside.txt", "sub/work.txt")
    git(mono, "commit", "-q", "-m", "base")
    (sub / "work.txt").write_text("modified\n")
    return sub


@pytest.mark.parametrize(("target", "end"), [("work.txt", "stop_after_runs (last run 6"),
                                             ("../outside.txt", "no_progress (last run 3")])
def test_in_a_monorepo_directory_only_its_own_files_count(tmp_path: Path, target: str, end: str) -> None:
    sub = monorepo_dir(tmp_path)
    shell_agent(sub, f"echo x >> {target}")
    assert loop_end(sub) == end


def test_the_fingerprint_follows_each_edit_of_a_changed_file_and_nothing_else(tmp_path: Path) -> None:
    """git.fingerprint itself: every further edit of a listed path changes it, a look does not, and
    car's own directory never does (not even when git lists it)."""
    repo = make_repo(tmp_path / "repo")
    (repo / ".codex-autorunner" / ".gitignore").unlink()
    names = ["f.txt", *ODD_NAMES]
    for name in names:
        (repo / name).write_text("first\n")
    seen = {car_git.fingerprint(repo)}
    assert car_git.fingerprint(repo) in seen  # nothing changed: the same
    for name in names:
        with (repo / name).open("a") as fh:
            fh.write("again\n")
        seen.add(car_git.fingerprint(repo))
    (repo / names[0]).unlink()
    seen.add(car_git.fingerprint(repo))
    assert len(seen) == len(names) + 2
    last = car_git.fingerprint(repo)
    with (repo / ".codex-autorunner" / "state.json").open("a") as fh:
        fh.write("\n")
    (repo / ".codex-autorunner" / "codex-autorunner.log").write_text("a run\n")
    assert car_git.fingerprint(repo) == last
