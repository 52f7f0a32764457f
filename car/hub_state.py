"""The hub's records: RepoEntry, HubSnapshot, and hub_state.json (last scan + caches)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

from car.files import write_atomic
from car.manifest import Manifest, ManifestEntry
from car.probe import NOT_INITIALIZED, RepoFiles
from car.status import LockStatus, RepoFacts, RepoStatus, RunStatus, derive_status

STATE_VERSION = 1
_IN_RUN = (RepoStatus.RUNNING, RepoStatus.LOCKED)  # a run may be under way (this hub's or another's)
_RUNNING, _INIT_ERROR = RunStatus.RUNNING.value, RepoStatus.INIT_ERROR.value


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
                runner_error: Optional[str] = None) -> RepoEntry:
    """Judge one repo by DESIGN.md §4 (derive_status) from its files and the hub's own facts."""
    if not exists:
        files = NOT_INITIALIZED
    run_status = files.run_status
    status = _judge(exists, files.initialized, initializing, init_error, runner_active, files.lock_status,
                    run_status if isinstance(run_status, str) else None)  # hashable; only a str says "error"
    in_run = status in _IN_RUN and run_status == _RUNNING and not files.last_run_finished_at
    return RepoEntry(
        entry.id, entry.path, entry.display_name, entry.enabled, entry.auto_run, status, files.lock_status,
        init_error or files.error or runner_error, files.last_run_id, files.last_run_started_at,
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
    """hub_state.json as a dict; missing, broken or of another version reads as empty (it is a cache)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        return {}
    return data


def render_hub_state(snapshot: HubSnapshot, manifest: Optional[Dict[str, Any]],
                     files: Dict[str, Any]) -> Dict[str, Any]:
    """The file's content: the last listing, and the read caches that let the next process skip
    re-reading (and re-parsing) what has not changed."""
    repos = [{"id": r.id, "path": r.path, "display_name": r.display_name, "status": r.status.value,
              "error": r.error} for r in snapshot.repos]
    return {"version": STATE_VERSION, "last_scan_at": snapshot.last_scan_at, "repos": repos,
            "manifest": manifest, "files": files}


def encode_hub_state(data: Dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":")) + "\n"  # compact: it is read at every start


def same_content(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    """Equal but for the scan time: a rescan that found nothing new writes nothing."""
    return {**a, "last_scan_at": None} == {**b, "last_scan_at": None}


def init_errors(data: Dict[str, Any]) -> Dict[str, str]:
    """Repo id -> the message of an init that failed at the last scan (shown until a retry)."""
    return {r["id"]: r.get("error") or "init failed" for r in data.get("repos") or []
            if isinstance(r, dict) and isinstance(r.get("id"), str)
            and r.get("status") == _INIT_ERROR}


class HubStateFile:
    """hub_state.json: read at start, written only when its content (the scan time aside) changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: Dict[str, Any] = {}  # as last read or written
        self._rereads: Any = None  # the listing's rereads() when `data` was read or written
        self._manifest: Tuple[Optional[str], Optional[Dict[str, Any]]] = (None, None)

    def remember(self, data: Dict[str, Any], rereads: Any) -> None:
        """`data` was just read from the file; the listing was seeded from it at `rereads`."""
        self.data, self._rereads = data, rereads

    def manifest_cache(self, manifest: Manifest) -> Optional[Dict[str, Any]]:
        """{sha256, data}: the next start validates this instead of parsing the YAML again."""
        if manifest.sha256 is None:
            return None
        on_disk = self.data.get("manifest")
        if isinstance(on_disk, dict) and on_disk.get("sha256") == manifest.sha256:
            return on_disk
        if self._manifest[0] != manifest.sha256:
            data: Optional[Dict[str, Any]] = {"sha256": manifest.sha256, "data": manifest.to_data()}
            try:
                json.dumps(data)
            except (TypeError, ValueError):
                data = None  # unknown keys holding values JSON cannot hold: parse the YAML each time
            self._manifest = (manifest.sha256, data)
        return self._manifest[1]

    def render(self, snapshot: HubSnapshot, manifest: Manifest, rereads: Any,
               seeds: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
        """The content to store; the probes' seeds are re-exported only if they read anything."""
        files = self.data.get("files")
        if rereads != self._rereads or not isinstance(files, dict):
            files = seeds()
        return render_hub_state(snapshot, self.manifest_cache(manifest), files)

    def save(self, content: Dict[str, Any], rereads: Any) -> bool:
        """Write atomically if the content changed; True if written."""
        written = not same_content(content, self.data)
        if written:
            write_atomic(self.path, encode_hub_state(content))
        self.data, self._rereads = content, rereads
        return written
