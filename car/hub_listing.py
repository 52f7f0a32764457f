"""The hub's repos in manifest order, each judged from its files and the hub's own facts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from car.errors import NotFound
from car.hub_cache import HubCache, Memo
from car.hub_state import RepoEntry, build_entry, entries_from_rows, entry_row
from car.manifest import Manifest, ManifestEntry, escaping
from car.probe import NOT_INITIALIZED, RepoFiles, RepoProbe, stamp_repos
from car.status import LockStatus, RepoStatus, RunStatus

# (active, last_error) of this hub's runner in a directory, by its manifest path; (False, None) when it has
# none. By directory, not id: an edited manifest may point an id at another directory while a loop runs
RunnerFacts = Callable[[str], "tuple[bool, Optional[str]]"]
# An entry judged from its files alone (no lock, runner, init or crashed run in it) can be memoized:
# a new process judging the same files finds the same, and a scan has nothing to settle for it
_MEMOIZABLE = (RepoStatus.IDLE, RepoStatus.ERROR)
_RUNNING = RunStatus.RUNNING.value


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

    Slots are made when first needed: until then a scan may find the cache's memo still true
    (restore), and then builds nothing at all. Not thread-safe: the hub calls it under its lock.
    """

    def __init__(self, hub_root: Path, runner_facts: RunnerFacts) -> None:
        self.hub_root, self._runner_facts = hub_root, runner_facts
        self.manifest = Manifest()
        self._slots: Dict[str, RepoSlot] = {}
        self._cache: Optional[HubCache] = None  # loaded, and no slot made from it yet
        self._restored: Optional[Tuple[RepoEntry, ...]] = None  # the cache's memo, found true by restore()
        self.foreign_hub: Optional[int] = None  # pid of another process serving this hub (`hub status`)
        self.escapes: Dict[str, str] = {}  # repo id -> why its path is not followed (manifest.escaping)
        self._generation = 0  # bumped when slots come or go: probes' read counts restart with them

    @property
    def slots(self) -> Dict[str, RepoSlot]:
        if self._cache is not None:
            self._make_slots()
        return self._slots

    def load(self, manifest: Manifest, cache: HubCache) -> None:
        """Start from the cache: its reads seed the probes, its memo may spare the first scan."""
        self.manifest, self._slots, self._cache, self._restored = manifest, {}, cache, None
        self._generation += 1

    def _make_slots(self) -> None:
        cache, self._cache = self._cache, None
        assert cache is not None
        generation = self._generation  # slots seeded from the cache export what it holds: not a change
        self.set_manifest(self.manifest, cache.decode_seeds(), cache.init_errors())
        self._generation = generation
        if self._restored is not None:  # what restore() returned went out as the scan's list
            self.mark_published(list(self._slots.values()), self._restored)
            self._restored = None

    def restore(self, manifest: Manifest) -> Optional[Tuple[RepoEntry, ...]]:
        """The cache's memo as the entries, if no slot is made yet, `manifest` is the one loaded and
        every repo's files stat as the memo says; else None (judge them)."""
        memo = self._cache.memo if self._cache is not None else None
        if memo is None or manifest is not self.manifest or memo[0] != manifest.sha256 or self.escapes:
            return None
        _, todo_rels, stamps, rows = memo
        repos = manifest.repos
        if len(todo_rels) != len(repos):
            return None
        prefix = f"{self.hub_root}/"
        try:
            if stamp_repos([prefix + e.path for e in repos], todo_rels) != stamps:
                return None
        except TypeError:  # not a str where a TODO path goes
            return None
        self._restored = entries_from_rows(rows, manifest)
        return self._restored

    def memo(self) -> Optional[Memo]:
        """For hub_cache.bin: the entries as last built and the stamps they were judged from; None
        when one of them says more than its files (a lock, this hub's runner, an init, a crashed run)."""
        if self._cache is not None:
            return self._cache.memo
        if self.manifest.sha256 is None or self.foreign_hub is not None:
            return None
        todo_rels, stamps, rows = [], [], []
        for slot in self._slots.values():
            entry = slot.cached
            # a runner's error is in the entry, and a new process would not know it
            if (entry is None or entry.status not in _MEMOIZABLE or self._runner_facts(slot.entry.path)[1] is not None
                    or slot.files.run_status == _RUNNING):
                return None
            stamp = slot.probe.stamp()  # the stats behind slot.files, the read `entry` was built from
            if stamp is None:
                return None
            todo_rels.append(slot.probe.todo_rel)
            stamps.extend(stamp)
            rows.append(entry_row(entry))
        return (self.manifest.sha256, todo_rels, stamps, rows)

    def set_manifest(self, manifest: Manifest, seeds: Optional[Dict[str, Any]] = None,
                     init_errors: Optional[Dict[str, str]] = None) -> None:
        """Follow the manifest; a slot whose id and path are unchanged keeps its caches."""
        seeds, init_errors = seeds or {}, init_errors or {}
        prefix = f"{self.hub_root}/"
        current = self.slots
        slots: Dict[str, RepoSlot] = {}
        for entry in manifest.repos:
            old = current.get(entry.id)
            if old is not None and old.entry.path == entry.path:
                old.entry, slots[entry.id] = entry, old
            else:
                seed = seeds.get(entry.id)
                reads = seed[1] if type(seed) is list and len(seed) == 2 and seed[0] == entry.path else None
                slots[entry.id] = RepoSlot(entry, prefix + entry.path, reads, init_errors.get(entry.id))
        if slots.keys() != current.keys() or any(slots[i] is not current[i] for i in slots):
            self._generation += 1
        self.manifest, self._slots = manifest, slots

    def ids_at(self, paths: Iterable[str]) -> List[str]:
        """The ids whose manifest entries name these paths now (the manifest is immutable: no lock needed)."""
        wanted = set(paths)
        return [e.id for e in self.manifest.repos if e.path in wanted]

    def slot(self, repo_id: str) -> RepoSlot:
        slot = self.slots.get(repo_id)
        if slot is None:
            raise NotFound(f"no repo {repo_id!r} in the hub's manifest; `car hub scan` adds new ones")
        return slot

    def entry(self, slot: RepoSlot) -> RepoEntry:
        """The slot's current entry; rebuilt only when one of the facts it comes from changed."""
        active, runner_error = self._runner_facts(slot.entry.path)
        gone = self.escapes.get(slot.id)
        if gone is None and os.path.islink(slot.root_str):  # a link made since the scan: read nothing through
            gone = self.judge_escape(slot)  # it if it leaves the hub (QA)
        files = NOT_INITIALIZED if gone else slot.probe.read()  # nothing is read through a link out of the hub
        exists = not gone and (files.initialized or os.path.isdir(slot.root_str))
        if not exists:
            files = NOT_INITIALIZED
        slot.files = files
        if self.foreign_hub is not None and files.lock_pid == self.foreign_hub:
            active = files.lock_status is LockStatus.LOCKED_ALIVE  # run by the hub serving this root
        key = (files, exists, active, slot.initializing, slot.init_error, slot.entry, runner_error, gone)
        if key != slot.key or slot.cached is None:
            slot.key, slot.cached = key, build_entry(
                slot.entry, exists, files, initializing=slot.initializing, init_error=slot.init_error,
                runner_active=active, runner_error=runner_error, gone=gone)
        return slot.cached

    def judge_escape(self, slot: RepoSlot) -> Optional[str]:
        """Look again whether the slot's path leaves the hub through a symlink (made since the last
        scan), and keep the answer for its entry: why it does, or None."""
        gone = escaping([slot.entry], self.hub_root).get(slot.id)
        if gone is not None:
            self.escapes[slot.id] = gone
        else:
            self.escapes.pop(slot.id, None)
        return gone

    def entries(self) -> List[RepoEntry]:
        return [self.entry(slot) for slot in self.slots.values()]

    def latest(self) -> List[RepoEntry]:
        """The entries as last built, without re-reading (a slot never read is read now)."""
        if self._cache is not None and self._restored is not None:
            return list(self._restored)
        return [slot.cached if slot.cached is not None else self.entry(slot) for slot in self.slots.values()]

    def changed(self, repo_ids: Any) -> List[RepoEntry]:
        """Entries that differ from what was last published (and now count as published)."""
        if not repo_ids:
            return []
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
        if self._cache is not None:
            return self._generation, 0
        return self._generation, sum(slot.probe.rereads for slot in self.slots.values())

    def seeds(self) -> Dict[str, Any]:
        """Per repo: [path, its probe's trusted reads], so the next process starts warm."""
        out = {}
        for repo_id, slot in self.slots.items():
            reads = slot.probe.export()
            if reads is not None:
                out[repo_id] = [slot.entry.path, reads]
        return out
