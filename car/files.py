"""Atomic file writes and the JSON/YAML readers; the only caller of os.replace."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Union

import yaml

from car.errors import CarError


def write_atomic(path: Path, data: Union[str, bytes]) -> None:
    """Write via a temp file in the same dir + os.replace: readers never see half a file."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_json(path: Path) -> Any:
    """Parse a JSON file; a broken one is a CarError naming it (the file is left alone)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CarError(f"{path}: not valid JSON ({exc}); fix or delete the file") from exc


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def write_yaml(path: Path, data: Any) -> None:
    write_atomic(path, dump_yaml(data))


def append_jsonl(path: Path, record: Any) -> None:
    """Append one JSON line; a single small O_APPEND write is never interleaved or torn."""
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list:
    """Every parseable line of a JSONL file; a torn or hand-broken line is skipped."""
    out = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
