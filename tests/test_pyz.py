"""car.pyz, built once, copied alone to an empty directory, run under every CPython 3.9-3.13 found."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from support import FAKE_AGENT, build_pyz, make_git_repo, unwritable, update_config

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


UNPACK_FIX = "set SHIV_ROOT to a writable directory, or make that one writable"
# what the OS says to root (chattr +i) and to anyone else (chmod) writing in an unwritable directory
DENIED = r"(Permission denied|Operation not permitted)"


def version(pyz: Path, env: dict, stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess:
    """`car.pyz --version` with only `env`: HOME and SHIV_ROOT say where shiv unpacks it."""
    return subprocess.run([sys.executable, str(pyz), "--version"], env={"PATH": os.environ["PATH"], **env},
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120)


def build_id(pyz: Path) -> str:
    """shiv's id of this build: its unpacked copy is <root>/car.pyz_<build id>."""
    return json.loads(zipfile.ZipFile(pyz).read("environment.json"))["build_id"]


def assert_cannot_unpack(out: subprocess.CompletedProcess, where: Path, reason: str, fix: str = UNPACK_FIX) -> None:
    """One line on stderr naming the directory, the OS's reason and the fix; nothing else; exit 1."""
    line = rf"car: cannot unpack car\.pyz into {re.escape(str(where))} \({reason}\); {re.escape(fix)}\n"
    assert (out.returncode, out.stdout) == (1, "") and re.fullmatch(line, out.stderr), out


def assert_runs(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0 and out.stdout.startswith("car ") and not out.stderr, out


def test_a_shiv_root_under_a_file_is_one_line_and_another_root_works(pyz: Path, tmp_path: Path) -> None:
    """A path under a regular file fails for root too (ENOTDIR), where shiv's traceback was all there was."""
    (tmp_path / "file").write_text("")
    under = tmp_path / "file" / "shiv"
    assert_cannot_unpack(version(pyz, {"HOME": str(tmp_path), "SHIV_ROOT": str(under)}), under, "Not a directory")
    assert_runs(version(pyz, {"HOME": str(tmp_path), "SHIV_ROOT": str(tmp_path / "shiv")}))


@pytest.mark.parametrize("setting", ["SHIV_ROOT", "HOME"])
def test_an_unwritable_unpack_directory_is_one_line_and_runs_once_writable(pyz: Path, tmp_path: Path,
                                                                          setting: str) -> None:
    """SHIV_ROOT an unwritable directory, or (the report: HOME=/nonexistent) ~/.shiv under a HOME that
    cannot be made; once it can be written, the same command runs: the failed try left nothing in the way."""
    held = tmp_path / "held"
    held.mkdir()
    env = {"SHIV_ROOT": str(held)} if setting == "SHIV_ROOT" else {"HOME": str(held / "home")}
    where = held if setting == "SHIV_ROOT" else held / "home" / ".shiv"
    with unwritable(held):
        assert_cannot_unpack(version(pyz, env), where, DENIED)
    assert_runs(version(pyz, env))
    assert (where / f"car.pyz_{build_id(pyz)}" / "site-packages").is_dir()


def test_a_shiv_root_under_a_home_that_cannot_be_found_is_one_line(pyz: Path, tmp_path: Path) -> None:
    """`~user` for no such user: pathlib raised RuntimeError (as for ~ with no HOME and no passwd entry)."""
    root = "~car-test-no-such-user/shiv"
    out = version(pyz, {"HOME": str(tmp_path), "SHIV_ROOT": root})
    assert_cannot_unpack(out, Path(root), "Could not determine home directory",
                         "set SHIV_ROOT to a writable directory given in full, or set HOME")


def test_an_error_of_car_itself_on_the_unpacking_run_is_not_called_an_unpack_failure(pyz: Path,
                                                                                     tmp_path: Path) -> None:
    """The guard covers the unpack only: an OSError car raises (stdout on a full disk) stays car's own."""
    root = tmp_path / "shiv"
    with open("/dev/full", "w") as full:
        out = version(pyz, {"HOME": str(tmp_path), "SHIV_ROOT": str(root)}, stdout=full)
    assert out.returncode != 0 and "cannot unpack" not in out.stderr, out.stderr
    assert "\nOSError: [Errno 28] No space left on device\n" in out.stderr, out.stderr
    assert [p.name for p in root.iterdir() if p.is_dir()] == [f"car.pyz_{build_id(pyz)}"]  # this run unpacked
