"""Atomic file writes and the JSON/YAML readers; the only caller of os.replace."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, List, Optional, Union

from car.errors import CarError


def write_atomic(path: Path, data: Union[str, bytes], *, durable: bool = True, exclusive: bool = False) -> None:
    """Write via a temp file in the same dir + os.replace: readers never see half a file.

    durable=False skips the fsync, for files a crash makes moot (the lock's updates, the run's prompt).
    exclusive=True never replaces: FileExistsError if `path` exists (O_EXCL, but never seen empty)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    # the directory is never made here: a repo deleted while car works in it must stay deleted
    # a random name opened O_EXCL: tempfile.mkstemp's way, without importing tempfile (~4 ms)
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        if exclusive:
            os.chmod(tmp, 0o644)
            _link_new(tmp, path, raw)
            os.unlink(tmp)  # `path` is the file's other name now
            return
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


def _link_new(tmp: Path, path: Path, raw: bytes) -> None:
    """Give the written file its name unless the name is taken (a link never replaces)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this filesystem (FAT, some FUSE mounts): O_EXCL, briefly empty
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)


def read_text(path: Path, missing: str = "") -> str:
    """The file's text (bytes that are not UTF-8 read as U+FFFD: an agent may write any); `missing`
    when there is no such file; a CarError naming it when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return missing
    except OSError as exc:
        raise CarError(f"{path}: cannot read ({exc.strerror}); fix the file, or the setting in "
                       f".codex-autorunner/config.yml that names it") from exc


def file_stamp(path: Path) -> Optional[List[int]]:
    """[inode, size, mtime_ns, ctime_ns], or None if it cannot be stat'ed: any write changes ctime,
    and nothing sets it back, so an equal stamp means the file car last saw."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def read_json(path: Path) -> Any:
    """Parse a JSON file; a broken one is a CarError naming it (the file is left alone)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CarError(f"{path}: not valid JSON ({exc}); fix or delete the file") from exc


def write_json(path: Path, data: Any, *, durable: bool = True) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n", durable=durable)


def dump_yaml(data: Any) -> str:
    import yaml  # here, not at the top: PyYAML is pure Python, slow to import, and seldom needed

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
