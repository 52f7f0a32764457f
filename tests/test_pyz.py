"""car.pyz, built once, copied alone to an empty directory, run under every CPython 3.9-3.13 found."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import FAKE_AGENT, build_pyz, make_git_repo, update_config

pytestmark = pytest.mark.slow


def interpreters() -> dict:
    """One python per minor version 3.9..3.13: this one plus pyenv's (the machine has them all)."""
    found = {f"{sys.version_info.major}.{sys.version_info.minor}": sys.executable}
    root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    for exe in sorted(glob.glob(f"{root}/versions/3.*/bin/python3")):
        m = re.search(r"/versions/(3\.(\d+))\.\d+/", exe)
        if m and 9 <= int(m.group(2)) <= 13:
            found.setdefault(m.group(1), exe)
    return found


@pytest.fixture(scope="session")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pyz(tmp_path_factory.mktemp("dist") / "car.pyz")


def test_the_pyz_holds_the_page_and_no_compiled_code(pyz: Path) -> None:
    import zipfile
    names = zipfile.ZipFile(pyz).namelist()
    assert "site-packages/car/web/index.html" in names
    assert "site-packages/yaml/__init__.py" in names
    assert not [n for n in names if n.endswith((".so", ".pyd"))]


@pytest.mark.parametrize("minor", sorted(interpreters()))
def test_pyz_alone_runs_version_init_once(pyz: Path, tmp_path: Path, minor: str) -> None:
    python = interpreters()[minor]
    work = tmp_path / "empty"
    work.mkdir()
    local = work / "car.pyz"
    shutil.copy2(pyz, local)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SHIV_ROOT": str(tmp_path / "shiv")}

    def car(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run([python, str(local), *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=120)

    version = car("--version", cwd=work)
    assert version.returncode == 0 and version.stdout.startswith("car "), version.stderr
    repo = make_git_repo(work / "repo")
    assert car("init", cwd=repo).returncode == 0
    update_config(repo, codex={"binary": python, "args": [str(FAKE_AGENT)]}, runner={"sleep_seconds": 0})
    once = car("once", cwd=repo)
    assert once.returncode == 0, once.stdout + once.stderr
    state = json.loads((repo / ".codex-autorunner" / "state.json").read_text())
    assert state["last_run_id"] == 1 and state["last_exit_code"] == 0
    assert "- [x]" in (repo / ".codex-autorunner" / "TODO.md").read_text()


def test_once_unpacked_the_pyz_starts_without_shivs_bootstrap(pyz: Path, tmp_path: Path) -> None:
    """build.py's __main__.py: shiv's bootstrap unpacks on the first run only (or when forced)."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SHIV_ROOT": str(tmp_path / "shiv")}

    def bootstrapped(**extra: str) -> bool:
        out = subprocess.run([sys.executable, "-X", "importtime", str(pyz), "--version"], env={**env, **extra},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.startswith("car "), out.stderr[-2000:]
        return bool(re.search(r"\| _bootstrap$", out.stderr, re.M))

    assert bootstrapped()  # the first run unpacks
    assert not bootstrapped()
    assert bootstrapped(SHIV_FORCE_EXTRACT="1")  # a SHIV_* setting: shiv does it all, as before
