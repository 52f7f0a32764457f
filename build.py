#!/usr/bin/env python3
"""Build dist/car.pyz: the car package, the page, and pure-Python PyYAML in one shiv file.

Usage: python3 build.py [--output dist/car.pyz]. Installs shiv into this interpreter if missing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def ensure_build_tools() -> None:
    """shiv, and setuptools + wheel to build car itself (no build isolation: works offline)."""
    missing = []
    for module, package in (("shiv", "shiv"), ("setuptools", "setuptools"), ("wheel", "wheel")):
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
                        "--entry-point", "car.launch:main", "--python", "/usr/bin/env python3",
                        "--output-file", str(partial), "--reproducible", "--compressed", "--compile-pyc",
                        str(project), "--no-deps", "--no-build-isolation", "--quiet"], check=True)
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
