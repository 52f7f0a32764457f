#!/usr/bin/env python3
"""Build dist/car.pyz: the car package, the page, and pure-Python PyYAML in one shiv file.

Usage: python3 build.py [--output dist/car.pyz]. Installs shiv into this interpreter if missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ENTRY_POINT = "car.launch:main"
# FAST_MAIN reads the environment.json that shiv 1.x writes; a new major is checked before use
SHIV = "shiv>=1.0.4,<2"
# The pyz's __main__.py, in place of shiv's (which always runs shiv's bootstrap: ~15 ms of imports,
# compileall, zipfile, hashlib..., before car starts). Once shiv has unpacked this build, car runs
# straight from there; the first run, and any SHIV_* setting but SHIV_ROOT, still go through shiv.
FAST_MAIN = """\
import os
import sys

BUILD_ID = %(build_id)r  # from shiv's environment.json, read at build time: no json import at start
ROOT = %(root)r  # shiv's unpack root as built (None: ~/.shiv)


def shiv_root():
    \"\"\"The directory shiv unpacks builds into, as its cache_path() finds it (~ left as is if it has no home).\"\"\"
    root = os.environ.get("SHIV_ROOT", ROOT) or "~/.shiv"
    if root.startswith("$"):
        root = os.environ.get(root[1:], root[1:])
    return os.path.expanduser(root)


def unpacked_site_packages():
    \"\"\"Where shiv unpacked this build (its cache_path()), or None if it has not yet.\"\"\"
    if any(name.startswith("SHIV_") and name != "SHIV_ROOT" for name in os.environ):
        return None
    name = os.path.basename(os.path.realpath(sys.argv[0]))
    path = os.path.join(shiv_root(), name + "_" + BUILD_ID, "site-packages")
    return path if os.path.isdir(path) else None


def cannot_unpack(exc):
    \"\"\"Exit 1 with one line for a build shiv could not unpack: the directory, the OS's reason, the fix.\"\"\"
    import errno

    reason = (getattr(exc, "strerror", None) or str(exc)).rstrip(".")
    if isinstance(exc, RuntimeError):  # pathlib's, for a ~ that has no home directory to stand for
        fix = "set SHIV_ROOT to a writable directory given in full, or set HOME"
    elif getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space there, or set SHIV_ROOT to a writable directory with room"
    else:
        fix = "set SHIV_ROOT to a writable directory, or make that one writable"
    name = os.path.basename(sys.argv[0])
    sys.stderr.write(f"car: cannot unpack {name} into {shiv_root()} ({reason}); {fix}\\n")
    raise SystemExit(1)


def bootstrap():
    \"\"\"shiv's bootstrap: it unpacks this build, then runs car. A failure to unpack is one line, not a
    traceback; whatever is raised once car's import has begun is car's own, and passes untouched.\"\"\"
    import _bootstrap

    started = []
    import_string = _bootstrap.import_string

    def import_entry_point(name):
        started.append(name)
        return import_string(name)

    # shiv calls it once the unpack is done, to import car: an error from then on is car's, not the unpack's
    _bootstrap.import_string = import_entry_point
    try:
        _bootstrap.bootstrap()
    except (OSError, RuntimeError) as exc:
        if started:
            raise
        cannot_unpack(exc)


site_packages = unpacked_site_packages()
if site_packages is None:
    bootstrap()
else:
    import site

    # as shiv's bootstrap does it: ours goes before the first site-packages already on sys.path
    length = len(sys.path)
    index = next((i for i, p in enumerate(sys.path)
                  if os.path.basename(p.rstrip("/")) in ("site-packages", "dist-packages")), None) or length
    site.addsitedir(site_packages)
    sys.path = sys.path[:index] + sys.path[length:] + sys.path[index:length]
    from %(module)s import %(function)s

    sys.exit(%(function)s())
"""
# what FAST_MAIN assumes of shiv's environment.json (else the build stops: it would skip a step shiv takes)
UNSUPPORTED = ("no_modify", "preamble", "extend_pythonpath", "prepend_pythonpath", "always_write_cache")


def fast_main(pyz: Path) -> str:
    """FAST_MAIN for this build, with shiv's build id and root in it."""
    with zipfile.ZipFile(pyz) as zf:
        env = json.loads(zf.read("environment.json"))
    used = [key for key in UNSUPPORTED if env.get(key)]
    if env.get("entry_point") != ENTRY_POINT or used:
        raise SystemExit(f"build.py: shiv's environment.json has entry_point {env.get('entry_point')!r} and "
                         f"{used or 'no unsupported keys'}; FAST_MAIN supports {ENTRY_POINT!r} and none of "
                         f"{', '.join(UNSUPPORTED)}")
    module, function = ENTRY_POINT.split(":")
    return FAST_MAIN % {"build_id": env["build_id"], "root": env.get("root"), "module": module,
                        "function": function}


def ensure_build_tools() -> None:
    """shiv, and setuptools + wheel to build car itself (no build isolation: works offline)."""
    missing = []
    for module, package in (("shiv", SHIV), ("setuptools", "setuptools"), ("wheel", "wheel")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        print(f"build: installing build tools: {' '.join(missing)}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *missing], check=True)


def stage_yaml(site: Path) -> None:
    """PyYAML into `site` without its C extension: pure Python runs on every CPython."""
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-compile",
                    "--target", str(site), "PyYAML>=5.4"], check=True)
    for compiled in [*site.rglob("*.so"), *site.rglob("*.pyd")]:
        compiled.unlink()
    shutil.rmtree(site / "_yaml", ignore_errors=True)


def stage_project(project: Path) -> None:
    """A copy of the project with the page inside the package (importlib.resources finds it)."""
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, project / name)
    shutil.copytree(ROOT / "car", project / "car", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(ROOT / "ui" / "index.html", project / "car" / "web" / "index.html")


def replace_main(pyz: Path, main: str) -> None:
    """Rewrite the pyz with `main` as its __main__.py; every other entry and the shebang stay as they are."""
    raw = pyz.read_bytes()
    shebang = raw[:raw.index(b"\n") + 1]  # shiv writes one line before the zip
    with zipfile.ZipFile(pyz) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    with pyz.open("wb") as fh:
        fh.write(shebang)
        with zipfile.ZipFile(fh, "w") as out:
            for info, data in entries:
                out.writestr(info, main.encode("utf-8") if info.filename == "__main__.py" else data)


def build(output: Path) -> Path:
    ensure_build_tools()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="car-build-") as tmp:
        site, project = Path(tmp) / "site", Path(tmp) / "project"
        site.mkdir()
        stage_yaml(site)
        stage_project(project)
        partial = output.with_name(output.name + ".partial")
        subprocess.run([sys.executable, "-m", "shiv", "--site-packages", str(site),
                        "--entry-point", ENTRY_POINT, "--python", "/usr/bin/env python3",
                        "--output-file", str(partial), "--reproducible", "--compressed", "--compile-pyc",
                        str(project), "--no-deps", "--no-build-isolation", "--quiet"], check=True)
        replace_main(partial, fast_main(partial))
        partial.replace(output)  # never leave a half-built car.pyz behind
    return output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "dist" / "car.pyz")
    args = parser.parse_args()
    out = build(args.output.resolve())
    print(f"build: wrote {out} ({out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
