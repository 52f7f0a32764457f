"""The hub's repos in manifest order, each judged from its files and the hub's own facts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from car.errors import NotFound
from car.hub_state import RepoEntry, build_entry
from car.manifest import Manifest, ManifestEntry
from car.probe import NOT_INITIALIZED, RepoFiles, RepoProbe
from car.status import LockStatus

# (active, last_error) of this hub's runner for a repo id; (False, None) when it has none
RunnerFacts = Callable[[str], "tuple[bool, Optional[str]]"]


class RepoSlot:
    """What the hub knows about one manifest entry beyond its files."""

    __slots__ = ("cached", "entry", "files", "init_error", "initializing", "key", "probe", "published", "root_str")

    def __init__(self, entry: ManifestEntry, root: str, seed: Any = None,
                 init_error: Optional[str] = None) -> None:
        self.entry, self.root_str = entry, root
        self.probe = RepoProbe(root, seed)
        self.initializing, self.init_error = False, init_error
        self.files: RepoFiles = NOT_INITIALIZED  # as last read
        self.key: Any = None  # the facts `cached` was built from
        self.cached: Optional[RepoEntry] = None
        self.published: Optional[RepoEntry] = None

    @property
    def id(self) -> str:
        return self.entry.id

    @property
    def root(self) -> Path:
        return Path(self.root_str)


class RepoListing:
    """Slots by id, probes cached per repo: a snapshot of unchanged repos costs a few stats each.

    Not thread-safe: the hub calls it under its lock.
    """

    def __init__(self, hub_root: Path, runner_facts: RunnerFacts) -> None:
        self.hub_root, self._runner_facts = hub_root, runner_facts
        self.manifest = Manifest()
        self.slots: Dict[str, RepoSlot] = {}
        self.foreign_hub: Optional[int] = None  # pid of another process serving this hub (`hub status`)
        self._generation = 0  # bumped when slots come or go: probes' read counts restart with them

    def set_manifest(self, manifest: Manifest, seeds: Optional[Dict[str, Any]] = None,
                     init_errors: Optional[Dict[str, str]] = None) -> None:
        """Follow the manifest; a slot whose id and path are unchanged keeps its caches."""
        seeds, init_errors = seeds or {}, init_errors or {}
        prefix = f"{self.hub_root}/"
        slots: Dict[str, RepoSlot] = {}
        for entry in manifest.repos:
            old = self.slots.get(entry.id)
            if old is not None and old.entry.path == entry.path:
                old.entry, slots[entry.id] = entry, old
            else:
                seed = seeds.get(entry.id)
                reads = seed[1] if type(seed) is list and len(seed) == 2 and seed[0] == entry.path else None
                slots[entry.id] = RepoSlot(entry, prefix + entry.path, reads, init_errors.get(entry.id))
        if slots.keys() != self.slots.keys() or any(slots[i] is not self.slots[i] for i in slots):
            self._generation += 1
        self.manifest, self.slots = manifest, slots

    def slot(self, repo_id: str) -> RepoSlot:
        slot = self.slots.get(repo_id)
        if slot is None:
            raise NotFound(f"no repo {repo_id!r} in the hub's manifest; `car hub scan` adds new ones")
        return slot

    def entry(self, slot: RepoSlot) -> RepoEntry:
        """The slot's current entry; rebuilt only when one of the facts it comes from changed."""
        active, runner_error = self._runner_facts(slot.id)
        files = slot.probe.read()
        exists = files.initialized or os.path.isdir(slot.root_str)
        if not exists:
            files = NOT_INITIALIZED
        slot.files = files
        if self.foreign_hub is not None and files.lock_pid == self.foreign_hub:
            active = files.lock_status is LockStatus.LOCKED_ALIVE  # run by the hub serving this root
        key = (files, exists, active, slot.initializing, slot.init_error, slot.entry, runner_error)
        if key != slot.key or slot.cached is None:
            slot.key, slot.cached = key, build_entry(
                slot.entry, exists, files, initializing=slot.initializing, init_error=slot.init_error,
                runner_active=active, runner_error=runner_error)
        return slot.cached

    def entries(self) -> List[RepoEntry]:
        return [self.entry(slot) for slot in self.slots.values()]

    def latest(self) -> List[RepoEntry]:
        """The entries as last built, without re-reading (a slot never read is read now)."""
        return [slot.cached if slot.cached is not None else self.entry(slot) for slot in self.slots.values()]

    def changed(self, repo_ids: Any) -> List[RepoEntry]:
        """Entries that differ from what was last published (and now count as published)."""
        out = []
        for repo_id in repo_ids:
            slot = self.slots.get(repo_id)
            if slot is None:
                continue
            entry = self.entry(slot)
            if entry != slot.published:
                slot.published = entry
                out.append(entry)
        return out

    def mark_published(self, slots: List[RepoSlot], entries: Iterable[RepoEntry]) -> None:
        """These entries of these slots went out in one list (a scan's)."""
        for slot, entry in zip(slots, entries):
            slot.published = entry

    def rereads(self) -> Tuple[int, int]:
        """Changes when a probe reads a file (not just stats it): unchanged means the same seeds."""
        return self._generation, sum(slot.probe.rereads for slot in self.slots.values())

    def seeds(self) -> Dict[str, Any]:
        """Per repo: [path, its probe's trusted reads], so the next process starts warm."""
        out = {}
        for repo_id, slot in self.slots.items():
            reads = slot.probe.export()
            if reads is not None:
                out[repo_id] = [slot.entry.path, reads]
        return out
