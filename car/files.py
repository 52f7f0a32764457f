"""Atomic file writes and the JSON/YAML readers; the only caller of os.replace."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Tuple, Type, Union

from car.errors import CarError


def write_atomic(path: Path, data: Union[str, bytes], *, durable: bool = True, exclusive: bool = False,
                 check: Optional[Callable[[], None]] = None) -> None:
    """Write via a temp file in the same dir + os.replace: readers never see half a file.

    durable=False skips the fsync, for files a crash makes moot (the lock's updates, the run's prompt).
    exclusive=True never replaces: FileExistsError if `path` exists (O_EXCL, but never seen empty).
    check, called last before the replace, may raise to leave `path` as it is (written meanwhile)."""
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
        if check is not None:
            check()
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.filename is None:  # a write or flush that failed names no file
            exc.filename = str(path)
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


# how docs are decoded, by read_text and by the hub's probe: a leading BOM (Windows editors write one)
# is dropped, else it would glue itself to the first line and hide a first `- [ ]` item from the counts
DOC_ENCODING = "utf-8-sig"
# Notepad's "Unicode" and "Unicode big endian"; no UTF-8 text starts with these bytes (neither is UTF-8)
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def read_text(path: Path, missing: str = "") -> str:
    """The file's text as decode_doc makes it; `missing` when there is no such file; a CarError
    naming it when it cannot be read."""
    raw = read_bytes(path)
    return missing if raw is None else decode_doc(raw, path)


def read_bytes(path: Path) -> Optional[bytes]:
    """The file's bytes; None when there is no such file; a CarError naming it when it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise read_error(path, exc) from exc


def read_error(path: Path, exc: OSError) -> CarError:
    """A doc (or other file config.yml names) that cannot be read, as one line for the user."""
    return CarError(f"{path}: cannot read ({exc.strerror}); fix the file, or the setting in "
                    f".codex-autorunner/config.yml that names it")


def decode_doc(raw: bytes, path: Path) -> str:
    """A doc's text: no BOM, every line end a \\n, bytes that are not UTF-8 as U+FFFD (an agent may
    write any); a UTF-16 doc is a CarError naming it and the fix."""
    if raw[:2] in UTF16_BOMS:
        raise _utf16_error(path, raw[:2])
    return newlines_as_lf(raw.decode(DOC_ENCODING, "replace"))


def newlines_as_lf(text: str) -> str:
    """Every line end a \n, as open()'s universal newlines make them: the counts, the prompt and the etag
    see one text, whichever line ends the file (or a client) used."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _utf16_error(path: Path, bom: bytes) -> CarError:
    """Refused, not decoded: the agent's tools and the page's saves write UTF-8, so a UTF-16 doc would
    end up half one, half the other; refused, nothing in it is lost or miscounted."""
    return CarError(f"{path}: saved as UTF-16 (it starts with the bytes {bom.hex(' ').upper()}); car reads "
                    f"its files as UTF-8 only: save it as UTF-8 (Notepad: Save As, Encoding: UTF-8), then try again")


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


def write_error(path: Path, exc: OSError) -> CarError:
    """A failed write of one of car's files as one line for the user. write_atomic itself raises the
    OSError: some callers act on its kind (a directory gone, a lock that exists)."""
    return CarError(f"{path}: cannot write ({exc.strerror or exc}); check the permissions of {path.parent} "
                    f"and the free disk space, then run again")


def dump_yaml(data: Any) -> str:
    import yaml  # here, not at the top: PyYAML is pure Python, slow to import, and seldom needed

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def write_yaml(path: Path, data: Any) -> None:
    write_atomic(path, dump_yaml(data))


def load_yaml(text: Union[str, bytes], path: Path, error: Type[CarError] = CarError, advice: str = "keep one",
              *, fast: bool = False) -> Tuple[Any, Any]:
    """The data of a YAML text and its node tree (for line numbers); car's one YAML reader.

    A key twice in one mapping is `error` naming the file, the key and both lines: PyYAML would keep
    the last value without a word, and a second `runner:` would drop the first one's settings. Any
    other problem is PyYAML's own yaml.YAMLError, for the caller to word. `fast` parses with libyaml
    where it is installed (~10x faster), whose messages word the same errors differently."""
    loader = _unique_key_loader(fast)(text)
    try:
        node = loader.get_single_node()
        return (None if node is None else loader.construct_document(node)), node
    except _DuplicateKey as dup:
        raise error(f"{path}:{dup.line}: key {dup.key!r} appears twice (first at line {dup.first_line}); "
                    f"{advice}") from None
    finally:
        loader.dispose()


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first_line: int, line: int) -> None:
        super().__init__(key)
        self.key, self.first_line, self.line = key, first_line, line


@functools.lru_cache(maxsize=None)
def _unique_key_loader(fast: bool) -> type:
    """PyYAML's safe loader, refusing a duplicate key; built on first use, so PyYAML loads only then."""
    import yaml  # here, not at the top: PyYAML is pure Python, slow to import, and seldom needed

    merge_tag = "tag:yaml.org,2002:merge"
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader) if fast else yaml.SafeLoader

    class UniqueKeyLoader(base):  # type: ignore[misc,valid-type]
        def __init__(self, stream: Union[str, bytes]) -> None:
            super().__init__(stream)
            self.checked: set = set()

        # every mapping passes here before it is built, and before `<<:` merges (whose keys an
        # explicit one may override) are copied into it: the one place that sees the keys as written
        def flatten_mapping(self, node: Any) -> None:
            if id(node) not in self.checked:
                self.checked.add(id(node))
                seen: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == merge_tag or not isinstance(key_node, yaml.ScalarNode):
                        continue  # a non-scalar key is unhashable: the constructor refuses it anyway
                    first = seen.setdefault(self.construct_object(key_node), key_node)
                    if first is not key_node:
                        raise _DuplicateKey(self.construct_object(key_node), first.start_mark.line + 1,
                                            key_node.start_mark.line + 1)
            super().flatten_mapping(node)

    return UniqueKeyLoader


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
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return parse_jsonl(text.splitlines())


def parse_jsonl(lines: Iterable[str]) -> list:
    """The records of some JSONL lines (all of a file, or only its last: logs.tail); bad lines are skipped."""
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
