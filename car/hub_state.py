"""The hub's records: RepoEntry, HubSnapshot, and the files they persist in (hub_state.json, hub_cache.bin)."""

from __future__ import annotations

import json
import marshal
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from car.errors import CarError
from car.files import file_stamp, write_atomic
from car.hub_cache import HubCache, Memo, encode, read_hub_cache, write_hub_cache
from car.layout import HubLayout
from car.manifest import Manifest, ManifestCache, ManifestEntry
from car.probe import NOT_INITIALIZED, RepoFiles
from car.status import LockStatus, RepoFacts, RepoStatus, RunStatus, derive_status

STATE_VERSION = 1
_STATE_KEYS = {"version", "last_scan_at", "repos"}
_IN_RUN = (RepoStatus.RUNNING, RepoStatus.LOCKED)  # a run may be under way (this hub's or another's)
_RUNNING, _ERROR = RunStatus.RUNNING.value, RunStatus.ERROR.value
_STATUSES = {s.value: s for s in RepoStatus}
_LOCKS = {s.value: s for s in LockStatus}


class RepoEntry(NamedTuple):
    """One repo as the hub lists it (DESIGN.md §4, GET /hub/repos). A NamedTuple, as FoundRepo: a
    scan builds one per repo, and a frozen dataclass of 17 fields costs six times as much to build."""

    id: str
    path: str
    display_name: str
    enabled: bool
    auto_run: bool
    status: RepoStatus
    lock_status: LockStatus
    error: Optional[str]
    last_run_id: Optional[int]
    last_run_started_at: Optional[str]
    last_run_finished_at: Optional[str]
    last_exit_code: Optional[int]
    stop_reason: Optional[str]
    todo_done: int
    todo_total: int
    current_run_id: Optional[int] = None
    current_run_started_at: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        return {
            "id": self.id, "path": self.path, "display_name": self.display_name,
            "enabled": self.enabled, "auto_run": self.auto_run, "status": self.status.value,
            "lock_status": self.lock_status.value, "error": self.error, "last_run_id": self.last_run_id,
            "last_run_started_at": self.last_run_started_at,
            "last_run_finished_at": self.last_run_finished_at, "last_exit_code": self.last_exit_code,
            "stop_reason": self.stop_reason, "todo_done": self.todo_done, "todo_total": self.todo_total,
            "current_run_id": self.current_run_id, "current_run_started_at": self.current_run_started_at,
        }


def entry_row(entry: RepoEntry) -> tuple:
    """The entry as marshal can hold it: the enums by value."""
    return (*entry[:5], entry.status.value, entry.lock_status.value, *entry[7:])


def entries_from_rows(rows: List[Any], manifest: Manifest) -> Optional[Tuple[RepoEntry, ...]]:
    """entry_row's rows back as entries, one per manifest entry and in its order; None if they are not."""
    repos = manifest.repos
    if len(rows) != len(repos):
        return None
    make = RepoEntry._make
    try:
        entries = tuple([make((*row[:5], _STATUSES[row[5]], _LOCKS[row[6]], *row[7:])) for row in rows])
    except (KeyError, TypeError, IndexError):
        return None
    if any(e.id != m.id or e.path != m.path for e, m in zip(entries, repos)):
        return None
    return entries


@dataclass(frozen=True)
class HubSnapshot:
    repos: Tuple[RepoEntry, ...]
    last_scan_at: Optional[str]

    def to_json(self) -> Dict[str, Any]:
        return {"repos": [r.to_json() for r in self.repos], "last_scan_at": self.last_scan_at}

    def get(self, repo_id: str) -> Optional[RepoEntry]:
        return next((r for r in self.repos if r.id == repo_id), None)


def build_entry(entry: ManifestEntry, exists: bool, files: RepoFiles, *, initializing: bool = False,
                init_error: Optional[str] = None, runner_active: bool = False,
                runner_error: Optional[str] = None, gone: Optional[str] = None) -> RepoEntry:
    """Judge one repo by DESIGN.md §4 (derive_status) from its files and the hub's own facts;
    `gone` says why a directory that is there does not count (a symlink out of the hub)."""
    if not exists or gone:
        exists, files = False, NOT_INITIALIZED
    run_status = files.run_status
    # a config or state.json that cannot be read says "error" as plainly as a failed run: the repo
    # cannot run as it is, and its entry's error says why
    last_state = _ERROR if files.error else run_status if isinstance(run_status, str) else None  # hashable
    status = _judge(exists, files.initialized, initializing, init_error, runner_active, files.lock_status,
                    last_state)
    in_run = status in _IN_RUN and run_status == _RUNNING and not files.last_run_finished_at
    return RepoEntry(
        entry.id, entry.path, entry.display_name, entry.enabled, entry.auto_run, status, files.lock_status,
        gone or init_error or files.error or runner_error, files.last_run_id, files.last_run_started_at,
        files.last_run_finished_at, files.last_exit_code, files.stop_reason, files.todo_done,
        files.todo_total, files.last_run_id if in_run else None, files.last_run_started_at if in_run else None)


@lru_cache(maxsize=256)
def _judge(exists: bool, initialized: bool, initializing: bool, init_error: Optional[str],
           runner_active: bool, lock: LockStatus, last_state: Optional[str]) -> RepoStatus:
    """derive_status, remembered: a scan judges hundreds of repos from a handful of distinct facts."""
    return derive_status(RepoFacts(exists=exists, initialized=initialized, initializing=initializing,
                                   init_error=init_error, runner_active=runner_active, lock=lock,
                                   last_state=last_state))


def load_hub_state(path: Path) -> Dict[str, Any]:
    """hub_state.json as a dict; missing, broken or of another version reads as empty."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        return {}
    return data


def render_hub_state(snapshot: HubSnapshot) -> str:
    """The file's content: the last listing (DESIGN.md §1), for people and tools."""
    repos = [{"id": r.id, "path": r.path, "display_name": r.display_name, "status": r.status.value,
              "error": r.error} for r in snapshot.repos]
    data = {"version": STATE_VERSION, "last_scan_at": snapshot.last_scan_at, "repos": repos}
    return json.dumps(data, indent=1) + "\n"


def cache_from_hub_state(path: Path) -> HubCache:
    """What a start without hub_cache.bin knows: hub_state.json's listing (init errors, last scan)."""
    before = file_stamp(path)
    data = load_hub_state(path)
    listing = [(r["id"], r.get("path"), r.get("display_name"), r.get("status"), _text(r.get("error")))
               for r in data.get("repos") or [] if isinstance(r, dict) and isinstance(r.get("id"), str)]
    if data.keys() - _STATE_KEYS:  # an older car's file, with caches in it: rewritten at the next flush
        before = None
    last_scan_at = data.get("last_scan_at")
    return HubCache(last_scan_at if isinstance(last_scan_at, str) else None, listing, before)


def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


class HubStateFile:
    """hub_state.json (the last listing) and hub_cache.bin (a new process's head start): read at
    start, each written atomically and only when its content (the scan time aside) changes."""

    def __init__(self, layout: HubLayout) -> None:
        self.state_path, self.cache_path = layout.hub_state, layout.hub_cache
        self.cache = HubCache()  # as last read or written
        self._rereads: Any = None  # the listing's rereads() when `cache.seeds` were read or made
        self._manifest: Tuple[Optional[str], Optional[ManifestCache]] = (None, None)

    def load(self) -> HubCache:
        """The cache, or (none usable: a first start, another Python...) what hub_state.json says."""
        self.cache = read_hub_cache(self.cache_path) or cache_from_hub_state(self.state_path)
        return self.cache

    def remember(self, rereads: Any) -> None:
        """The listing was seeded from the loaded cache at `rereads`."""
        self._rereads = rereads

    def stale_seeds(self, rereads: Any) -> bool:
        """The probes read something since their seeds were loaded or saved: save() needs new ones."""
        return rereads != self._rereads

    def save(self, snapshot: HubSnapshot, manifest: Manifest, rereads: Any,
             seeds: Optional[Dict[str, Any]], memo: Optional[Memo]) -> bool:
        """Write what changed (seeds None: as last loaded or saved); True if anything was written.
        Called by one thread at a time, without the hub's lock: it may wait on fsync."""
        old = self.cache
        listing = [(r.id, r.path, r.display_name, r.status.value, r.error) for r in snapshot.repos]
        state_stamp = old.state_stamp
        written = listing != old.listing or state_stamp is None or file_stamp(self.state_path) != state_stamp
        if written:
            try:
                write_atomic(self.state_path, render_hub_state(snapshot))
            except OSError as exc:
                raise CarError(f"{self.state_path}: cannot write the hub's listing ({exc.strerror}); "
                               f"fix its permissions (it is rewritten at the next scan)") from exc
            state_stamp = file_stamp(self.state_path)
        new = HubCache(snapshot.last_scan_at, listing, state_stamp, self._manifest_cache(manifest),
                       old.seeds if seeds is None else marshal.dumps(seeds), memo)
        if written or not new.same_content(old):
            try:
                write_hub_cache(self.cache_path, new)
            except OSError:  # only a cache, checked at every start: a stale one costs a slower start
                pass
            written = True
        self.cache, self._rereads = new, rereads
        return written

    def _manifest_cache(self, manifest: Manifest) -> Optional[ManifestCache]:
        """Manifest.to_cache, once per manifest; None if marshal cannot hold it (a YAML date in an
        extra key): then each start parses the YAML."""
        if self._manifest[0] != manifest.sha256:
            cached = self.cache.manifest
            if cached is None or cached[0] != manifest.sha256:
                cached = manifest.to_cache()
                try:
                    encode(HubCache(manifest=cached))
                except ValueError:
                    cached = None
            self._manifest = (manifest.sha256, cached)
        return self._manifest[1]
