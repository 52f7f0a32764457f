"""The hub's manifest: the repos it knows, append-only, paths relative to the hub root."""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from car.errors import ManifestError
from car.files import dump_yaml, load_yaml, write_atomic
from car.layout import CAR_DIR

MANIFEST_VERSION = 1
ENTRY_KEYS = ("id", "path", "enabled", "auto_run")
_ENTRY_KEY_SET = frozenset(ENTRY_KEYS)
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")  # fullmatch: safe as one URL path segment and one file name
_NOT_ID = re.compile(r"[^A-Za-z0-9._-]+")
_PLAIN_NAME = re.compile(r"[^/\\\0]+")  # fullmatch: one directory name, nothing to normalize
_DOTS = (".", "..")
# no repo lives in car's own directory or in git's: an agent run there would work on their files
_RESERVED = frozenset((*_DOTS, CAR_DIR, ".git"))
# the same two, NUL-joined: no id or name can hold a NUL, so each piece between two is one of them
_IDS = re.compile(rf"{_ID.pattern}(?:\0{_ID.pattern})*")
_NAMES = re.compile(rf"{_PLAIN_NAME.pattern}(?:\0{_PLAIN_NAME.pattern})*")
_STR, _BOOL, _EXTRA = {str}, {bool}, {dict, type(None)}
# one entry as the checks see it, and as hub_cache.bin keeps it: (id, path, enabled, auto_run, extra or None)
Row = Tuple[Any, Any, Any, Any, Optional[Dict[str, Any]]]
# the checked manifest read from the bytes of this sha256: (sha256, top-level extra keys, rows)
ManifestCache = Tuple[str, Dict[str, Any], List[Row]]
_EMPTY_REPOS = re.compile(r"^repos:[ \t]*\[\][ \t]*\n?\Z", re.MULTILINE)  # `hub init`'s last line
NOT_REWRITTEN = "car never rewrites a manifest it cannot read"
NEVER_REWRITTEN = f"fix the file by hand ({NOT_REWRITTEN})"


class ManifestEntry(NamedTuple):
    """One repo of the manifest (a NamedTuple: a hub start makes one per repo, from a cached row)."""

    id: str
    path: str  # relative to the hub root, POSIX separators, normalized
    enabled: bool = True
    auto_run: bool = False
    extra: Optional[Dict[str, Any]] = None  # unknown keys, kept as they were

    @property
    def display_name(self) -> str:
        return self.path.rpartition("/")[2]  # posixpath.basename of a normalized path, cheaper

    def to_data(self) -> Dict[str, Any]:
        return {"id": self.id, "path": self.path, "enabled": self.enabled, "auto_run": self.auto_run,
                **(self.extra or {})}


@dataclass(frozen=True)
class Manifest:
    repos: Tuple[ManifestEntry, ...] = ()
    extra: Dict[str, Any] = field(default_factory=dict, compare=False)
    sha256: Optional[str] = field(default=None, compare=False)  # of the bytes it was read from

    def get(self, repo_id: str) -> Optional[ManifestEntry]:
        return next((e for e in self.repos if e.id == repo_id), None)

    def to_data(self) -> Dict[str, Any]:
        return {"version": MANIFEST_VERSION, "repos": [e.to_data() for e in self.repos], **self.extra}

    def to_text(self) -> str:
        return dump_yaml(self.to_data())

    def to_cache(self) -> Optional[ManifestCache]:
        """What hub_cache.bin keeps of it (None if it was not read from a file)."""
        if self.sha256 is None:
            return None
        return self.sha256, self.extra, [tuple(e) for e in self.repos]


def make_id(name: str, taken: Iterable[str]) -> str:
    """A URL-safe id from a directory name, made unique with -2, -3, ..."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    base = _NOT_ID.sub("-", ascii_name).strip("-.") or "repo"
    if not _ID.fullmatch(base):
        base = f"repo-{base}"
    taken = set(taken)
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}-{n}", n + 1
    return candidate


def add_repos(manifest: Manifest, paths: Iterable[str]) -> Manifest:
    """Append entries (enabled, not auto_run) for new relative paths; existing entries stay as they are."""
    repos = list(manifest.repos)
    taken = {e.id for e in repos}
    for rel in paths:
        entry = ManifestEntry(id=make_id(posixpath.basename(rel), taken), path=rel)
        taken.add(entry.id)
        repos.append(entry)
    return Manifest(tuple(repos), manifest.extra, manifest.sha256)


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def read_manifest(path: Path, hub_root: Path, cached: Optional[ManifestCache] = None,
                  known: Optional[Manifest] = None) -> Manifest:
    """Load and check the manifest (missing = empty). Unchanged bytes skip work: `known` (read
    before from the same bytes) is returned as is; `cached` (Manifest.to_cache) skips the YAML parse."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Manifest()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc.strerror}); fix its permissions") from exc
    sha = digest(raw)
    if known is not None and known.sha256 == sha:
        return known
    if cached is not None and cached[0] == sha:
        try:
            return manifest_from_rows(cached[2], cached[1], path, hub_root, sha)
        except ManifestError:  # a cache that does not check out: the file itself decides
            pass
    return manifest_from_data(parse_yaml(raw, path), path, hub_root, sha)


def parse_yaml(raw: bytes, path: Path) -> Any:
    # PyYAML loads only here: a manifest whose bytes match hub_cache.bin's copy is never parsed,
    # and car.pyz's pure-Python PyYAML costs ~16 ms to import
    import yaml

    try:
        return load_yaml(raw, path, ManifestError, f"keep one ({NOT_REWRITTEN})", fast=True)[0]  # libyaml: ~10x faster
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ManifestError(f"{where}: invalid YAML: {problem}; {NEVER_REWRITTEN}") from exc


def manifest_from_data(data: Any, path: Path, hub_root: Path, sha: Optional[str] = None) -> Manifest:
    """Check the parsed YAML: its shape, then every entry (manifest_from_rows)."""
    if data is None:
        return Manifest(sha256=sha)
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a mapping with `version: 1` and `repos:`; {NEVER_REWRITTEN}")
    if data.get("version", MANIFEST_VERSION) != MANIFEST_VERSION:
        raise ManifestError(f"{path}: version: expected {MANIFEST_VERSION}, got {data.get('version')!r}; "
                            f"{NEVER_REWRITTEN}")
    items = data.get("repos") or []
    if not isinstance(items, list):
        raise ManifestError(f"{path}: repos: expected a list of entries; {NEVER_REWRITTEN}")
    rows = [_row(item, i, path) for i, item in enumerate(items)]
    extra = {k: v for k, v in data.items() if k not in ("version", "repos")}
    return manifest_from_rows(rows, extra, path, hub_root, sha)


def _row(item: Any, i: int, path: Path) -> Row:
    if not isinstance(item, dict):
        raise ManifestError(f"{path}: repos[{i}]: expected a mapping with id and path; {NEVER_REWRITTEN}")
    extra = None if item.keys() <= _ENTRY_KEY_SET else {k: v for k, v in item.items() if k not in ENTRY_KEYS}
    return item.get("id"), item.get("path"), item.get("enabled", True), item.get("auto_run", False), extra


def manifest_from_rows(rows: Sequence[Row], extra: Dict[str, Any], path: Path, hub_root: Path,
                       sha: Optional[str] = None) -> Manifest:
    """Check every entry: types, unique ids and paths, paths inside the hub root (lexically)."""
    if not _all_plain(rows):  # one by one: normalizes paths, and names the first entry that is wrong
        rows = [_checked(row, i, path, hub_root) for i, row in enumerate(rows)]
        _no_duplicates(rows, path)
    return Manifest(tuple(map(ManifestEntry._make, rows)), extra, sha)


def _all_plain(rows: Sequence[Row]) -> bool:
    """Every row right as it is, each path one plain name, no id or path twice: the usual manifest,
    checked a column at a time rather than entry by entry (a hub start checks hundreds)."""
    if not rows:
        return True
    ids, paths, enabled, auto_run, extras = zip(*rows)
    if (set(map(type, ids)) != _STR or set(map(type, paths)) != _STR or set(map(type, enabled + auto_run)) != _BOOL
            or not set(map(type, extras)) <= _EXTRA):
        return False
    unique, joined_ids, joined_paths = set(paths), "\0".join(ids), "\0".join(paths)
    # no id or name can hold a NUL: the counts tell that each piece is one of them
    return (len(set(ids)) == len(unique) == len(rows) and unique.isdisjoint(_RESERVED)
            and not any(map(str.isspace, paths)) and joined_ids.count("\0") == joined_paths.count("\0") == len(rows) - 1
            and _IDS.fullmatch(joined_ids) is not None and _NAMES.fullmatch(joined_paths) is not None)


def _checked(row: Row, i: int, path: Path, hub_root: Path) -> Row:
    repo_id, rel, enabled, auto_run, extra = row
    if not isinstance(repo_id, str) or not _ID.fullmatch(repo_id):
        raise ManifestError(f"{path}: repos[{i}]: id: expected a name of letters, digits, '.', '_' or '-', "
                            f"got {repo_id!r}; {NEVER_REWRITTEN}")
    normal = inside_root(rel, hub_root) if isinstance(rel, str) and rel.strip() and "\0" not in rel else ""
    if not normal:
        if normal is None:
            raise ManifestError(f"{path}: repos[{i}] (id {repo_id!r}): path {rel!r} leaves the hub root "
                                f"{hub_root}; point it at a directory under the hub root or remove the entry "
                                f"by hand ({NOT_REWRITTEN})")
        raise ManifestError(f"{path}: repos[{i}] (id {repo_id!r}): path: expected a directory relative to the "
                            f"hub root, got {rel!r}; {NEVER_REWRITTEN}")
    if not _RESERVED.isdisjoint(normal.split("/")):
        raise ManifestError(f"{path}: repos[{i}] (id {repo_id!r}): path {rel!r} goes into a {CAR_DIR} or .git "
                            f"directory, which holds no repo; point it at the repo itself by hand ({NOT_REWRITTEN})")
    if type(enabled) is not bool or type(auto_run) is not bool:
        key, value = ("enabled", enabled) if type(enabled) is not bool else ("auto_run", auto_run)
        raise ManifestError(f"{path}: repos[{i}] (id {repo_id!r}): {key}: expected true or false, got "
                            f"{value!r}; {NEVER_REWRITTEN}")
    if extra is not None and type(extra) is not dict:  # only a cached row can have this wrong
        raise ManifestError(f"{path}: repos[{i}] (id {repo_id!r}): unexpected keys; {NEVER_REWRITTEN}")
    return repo_id, normal, enabled, auto_run, extra


def _no_duplicates(rows: Sequence[Row], path: Path) -> None:
    ids: Dict[str, int] = {}
    paths: Dict[str, int] = {}
    for i, (repo_id, rel, *_) in enumerate(rows):
        if repo_id in ids or rel in paths:
            what, key, seen = ("id", repo_id, ids) if repo_id in ids else ("path", rel, paths)
            raise ManifestError(f"{path}: repos[{i}]: {what} {key!r} is also used by repos[{seen[key]}]; "
                                f"give each entry its own {what} by hand ({NOT_REWRITTEN})")
        ids[repo_id] = paths[rel] = i


def inside_root(rel: str, hub_root: Path) -> Optional[str]:
    """`rel` normalized relative to the hub root, or None if it names the root or leaves it."""
    if _PLAIN_NAME.fullmatch(rel) and rel not in _DOTS:
        return rel  # one plain name: already normal, and inside
    root = str(hub_root)
    full = posixpath.normpath(posixpath.join(root, rel))  # absolute `rel` replaces root here
    if not full.startswith(root.rstrip("/") + "/"):
        return None
    return posixpath.relpath(full, root)


def escapes_root(rel: str, hub_root: Path) -> bool:
    """True when a symlink on the way makes `rel` resolve outside the (resolved) hub root."""
    real = os.path.realpath(os.path.join(str(hub_root), rel))
    return not real.startswith(str(hub_root).rstrip("/") + "/")


def check_links(manifest: Manifest, path: Path, hub_root: Path) -> None:
    """ManifestError for an entry whose path escapes through a symlink (one-shot callers)."""
    for i, entry in enumerate(manifest.repos):
        if escapes_root(entry.path, hub_root):
            raise ManifestError(f"{path}: repos[{i}] (id {entry.id!r}): path {entry.path!r} is a symlink "
                                f"that leaves the hub root {hub_root}; point it at a directory under "
                                f"the hub root or remove the entry by hand ({NOT_REWRITTEN})")


def escaping(entries: Iterable[ManifestEntry], hub_root: Path) -> Dict[str, str]:
    """Repo id -> why, for the entries whose path leaves the hub root through a symlink: the hub
    lists them as missing and never follows them (the other repos go on)."""
    return {e.id: f"{e.path!r} is a symlink that leaves the hub root {hub_root}; car does not follow it: "
                  f"move the repo back under the hub root, or remove the entry from the manifest"
            for e in entries if escapes_root(e.path, hub_root)}


def load_manifest(path: Path, hub_root: Path) -> Manifest:
    """The manifest with every check, symlinks included (one-shot callers)."""
    manifest = read_manifest(path, hub_root)
    check_links(manifest, path, hub_root)
    return manifest


def save_manifest(path: Path, manifest: Manifest) -> Manifest:
    """Write atomically, only when the bytes change; the manifest as saved (with its sha256)."""
    try:
        current: Optional[bytes] = path.read_bytes()
    except FileNotFoundError:
        current = None
    raw = _appended(path, current, manifest)
    if raw is None:
        raw = manifest.to_text().encode("utf-8")
        if current and raw != current:  # the person's comments and layout cannot be kept: keep a copy
            write_atomic(path.with_name(path.name + ".bak"), current)
    if raw != current:
        write_atomic(path, raw)
    return Manifest(manifest.repos, manifest.extra, digest(raw))


def _appended(path: Path, current: Optional[bytes], manifest: Manifest) -> Optional[bytes]:
    """The file's own text with the entries it lacks added at its end, if that reads back as
    `manifest` (a scan only appends: comments, order and layout of what a person wrote stay)."""
    if not current:
        return None
    try:
        data = parse_yaml(current, path)
    except ManifestError:
        return None
    wanted = manifest.to_data()
    have = data.get("repos") if isinstance(data, dict) else None
    if not isinstance(have, list) or _defaulted(data) != {**wanted, "repos": wanted["repos"][:len(have)]}:
        return None
    if len(have) == len(wanted["repos"]):
        return current
    try:
        text = current.decode("utf-8")
    except UnicodeDecodeError:  # YAML read it as UTF-16 or -32: car appends only to UTF-8
        return None
    text = _EMPTY_REPOS.sub("repos:\n", text) if not have else text if text.endswith("\n") else text + "\n"
    added = dump_yaml(wanted["repos"][len(have):])
    for indent in ("", "  "):  # the list's items at column 0 (as car writes them) or indented
        candidate = (text + "".join(indent + line for line in added.splitlines(keepends=True))).encode("utf-8")
        try:
            if _defaulted(parse_yaml(candidate, path)) == wanted:
                return candidate
        except ManifestError:
            continue
    return None


def _defaulted(data: Any) -> Any:
    """Parsed manifest data with each entry's left-out flags filled in, as to_data() writes them."""
    if not isinstance(data, dict) or not isinstance(data.get("repos"), list):
        return data
    repos = [{"enabled": True, "auto_run": False, **e} if isinstance(e, dict) else e for e in data["repos"]]
    return {**data, "repos": repos}
