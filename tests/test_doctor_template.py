"""`car doctor` reads the prompt template as a run reads it: it said `all checks passed` for one every run
refused, and nothing of a mistyped prompt.template (the runs silently used the built-in one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import make_repo, run_car, update_config

UTF16_TEMPLATE = "\ufeff{{TODO}}\n".encode("utf-16-le")


def template_of(repo: Path) -> Path:
    return repo / ".codex-autorunner" / "prompt.txt"


def unreadable(template: Path, how: str) -> Path:
    """`template` made into something a run cannot read; the path a run then reads (config.yml names it)."""
    template.unlink()
    if how == "directory":
        template.mkdir()
    elif how == "utf-16":
        template.write_bytes(UTF16_TEMPLATE)
    else:  # a path under a regular file: the OS says ENOTDIR, not "no such file"
        template.write_text("{{TODO}}\n")
        return template / "prompt.txt"
    return template


@pytest.mark.parametrize("how", ["directory", "utf-16", "under a file"])
def test_doctor_fails_a_template_a_run_cannot_read_with_the_runs_own_line(tmp_path: Path, how: str) -> None:
    """QA: prompt.txt a directory, `car once` failed (`cannot read (Is a directory)`), doctor passed it."""
    repo = make_repo(tmp_path / "repo")
    path = unreadable(template_of(repo), how)
    if path != template_of(repo):
        update_config(repo, prompt={"template": str(path)})
    doctor = run_car("doctor", cwd=repo)
    once = run_car("once", cwd=repo)
    assert once.returncode != 0 and once.stderr.startswith("car: ") and str(path) in once.stderr, once
    reason = once.stderr[len("car: "):].rstrip("\n")
    assert "\n" not in reason and "Traceback" not in doctor.stdout + doctor.stderr, once.stderr
    assert doctor.returncode == 1 and f"FAIL  {reason}\n" in doctor.stdout, doctor.stdout + doctor.stderr
    assert "ok    git repository" in doctor.stdout and doctor.stdout.endswith("1 problem(s) found\n"), doctor.stdout


@pytest.mark.parametrize("setting", [None, "./.codex-autorunner/../.codex-autorunner/prompt.txt"])
def test_doctor_says_a_missing_default_template_means_the_built_in_one(tmp_path: Path, setting: str) -> None:
    """The default path (however it is spelt) missing is no fault: `car init` wrote it, the run uses that text."""
    repo = make_repo(tmp_path / "repo")
    if setting:
        update_config(repo, prompt={"template": setting})
    template_of(repo).unlink()
    doctor = run_car("doctor", cwd=repo)
    line = (f"ok    prompt template: {template_of(repo)} missing; runs use the built-in one (`car init` writes a "
            "copy to edit)\n")
    assert doctor.returncode == 0 and line in doctor.stdout, doctor.stdout + doctor.stderr
    assert doctor.stdout.endswith("all checks passed\n"), doctor.stdout


def test_doctor_fails_a_missing_template_that_the_config_names_until_it_is_there(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    update_config(repo, prompt={"template": "prompts/mine.txt"})
    mine = repo / "prompts" / "mine.txt"
    doctor = run_car("doctor", cwd=repo)
    line = (f"FAIL  prompt template missing: {mine} (runs fall back to the built-in template); create it, or fix "
            "prompt.template\n")
    assert doctor.returncode == 1 and line in doctor.stdout, doctor.stdout + doctor.stderr
    assert doctor.stdout.endswith("1 problem(s) found\n"), doctor.stdout
    mine.parent.mkdir()
    mine.write_text("{{TODO}}\n")
    again = run_car("doctor", cwd=repo)
    assert again.returncode == 0 and f"ok    prompt template: {mine}\n" in again.stdout, again.stdout + again.stderr
