"""HubSupervisor: many repos from one process: scan, init, one RepoRunner per repo, hub_state.json."""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

from car.bootstrap import init_repo
from car.config import HubConfig, RepoConfig, load_config
from car.discovery import find_repos, new_repos
from car.errors import CarError, ConfigError, Conflict, InitError, LockError, error_line
from car.feed import Feed
from car.hub_listing import RepoListing, RepoSlot
from car.hub_state import HubSnapshot, HubStateFile, RepoEntry
from car.hub_worker import HubWorker
from car.layout import HubLayout, RepoLayout
from car.lock import acquire_lock, clear_stale_lock, inspect_lock, release_lock
from car.manifest import Manifest, add_repos, escaping, read_manifest, save_manifest
from car.recovery import OrphanedRun, reconcile
from car.runner import RepoRunner
from car.service_log import close_logger, make_logger
from car.state import utc_now
from car.status import LockStatus, RepoStatus, RunStatus

HUB_LOCKED = ("a hub (pid {pid}, since {since}) already serves {root}; stop it first (Ctrl-C in its "
              "terminal, or `kill {pid}`), or scan through it (the page's Scan, POST /hub/repos/scan)")
NOT_RUNNABLE = {
    RepoStatus.MISSING: "{id}: {path} is missing on disk; restore it, or remove the entry from {manifest}",
    RepoStatus.UNINITIALIZED: "{id} is not initialized; init it first (`car hub scan` or POST "
                              "/hub/repos/{id}/init)",
    RepoStatus.INIT_ERROR: "{id}: init failed: {error}",  # every init error says its own fix
    RepoStatus.INITIALIZING: "{id} is being initialized; try again in a moment",
}

_MISSING, _NEEDS_INIT = RepoStatus.MISSING, (RepoStatus.UNINITIALIZED, RepoStatus.INIT_ERROR)
_RUNNING = RunStatus.RUNNING.value


class HubSupervisor:
    """Runs any number of repo loops in parallel (no global throttle) and lists their status.

    hub = HubSupervisor(load_config(path)); hub.start(); hub.run("repo-a"); ...; hub.shutdown()
    """

    def __init__(self, config: HubConfig, *, poll_seconds: float = 3.0, flush_seconds: float = 1.0,
                 max_workers: int = 1024) -> None:
        self.config, self.layout = config, HubLayout(config.root)
        # ("repo", RepoEntry) on each change, ("repos", HubSnapshot) per scan: immutable records,
        # turned into JSON by whoever sends them on (most scans have no listener at all)
        self.events = Feed()
        self.log = logging.getLogger("car.hub")  # its file handler comes at start()
        # threads are made only as loops start: a large bound lets every repo run at once
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="car-repo")
        self._guard = threading.RLock()  # listing and runners; a scan holds _scan_lock first
        self._scan_lock = threading.Lock()
        # by the directory each runs in (as its manifest path names it), not by id: the manifest may point
        # an id at another directory while a loop runs, and each row must show the loop in the one it names
        self._runners: Dict[str, RepoRunner] = {}
        self._closing: Set[str] = set()  # directories whose crashed run is being closed (_reconcile)
        self._listing = RepoListing(config.root, self._runner_facts)
        self._worker = HubWorker(self._publish, self._repo_ids, self._flush, self.log,
                                 poll_seconds=poll_seconds, flush_seconds=flush_seconds)
        self._state = HubStateFile(self.layout)
        self._last_scan_at: Optional[str] = None
        self.last_scan: Optional[HubSnapshot] = None  # what the last scan() returned (`hub scan` prints it)
        self._closed = self._locked = self._loaded = False

    # lifecycle ---------------------------------------------------------------------------
    def start(self, auto_run: bool = True, watch: bool = True) -> None:
        """Take the hub lock, open the hub log, load hub_cache.bin, scan, start auto_run repos.

        watch=False is for a one-shot command (`hub scan`): no background thread publishes changes or
        flushes hub_state.json; shutdown() flushes."""
        self._take_lock()
        try:
            hub_log = self.config.hub.log
            make_logger("car.hub", self.config.log_path, hub_log.backup_count, max_bytes=hub_log.max_bytes)
            self.log.info("hub starting in %s (pid %d)", self.config.root, os.getpid())
            self._load()
            if watch:
                self._worker.start()
            self.scan()
        except BaseException:
            self.shutdown()
            raise
        for entry in self._listing.manifest.repos if auto_run else ():
            if entry.auto_run and entry.enabled:
                try:
                    self.run(entry.id)
                except CarError as exc:
                    self.log.warning("auto_run %s not started: %s", entry.id, exc)

    def shutdown(self) -> None:
        """End every loop (its agent's group), release locks, flush hub_state.json; idempotent."""
        with self._guard:
            if self._closed:
                return
            self._closed = True
            runners = list(self._runners.items())
        for _, runner in runners:  # kill all first, so their grace periods run in parallel
            if runner.active:
                try:
                    runner.kill()
                except CarError:
                    pass
        for _, runner in runners:
            runner.close()
        self._executor.shutdown(wait=True)
        self._worker.stop()
        try:
            if self._locked and self._loaded:
                self._publish(set(self._listing.ids_at(d for d, _ in runners)))  # their final state
                self._flush()
        finally:  # a flush that failed (a full disk) still lets the next hub start
            if self._locked:
                self.log.info("hub stopped")
                release_lock(self.layout.lock)
                self._locked = False
            self.events.close()
            close_logger(self.log)

    def _take_lock(self) -> None:
        path = self.layout.lock
        try:
            acquire_lock(path)
        except LockError:
            info = inspect_lock(path)
            if info.status is LockStatus.LOCKED_ALIVE:
                raise LockError(HUB_LOCKED.format(pid=info.pid, since=info.started_at,
                                                  root=self.config.root)) from None
            clear_stale_lock(path)  # a dead hub's lock guards no run: take it over
            acquire_lock(path)
        self._locked = True

    def _load(self) -> None:
        """hub_cache.bin (or hub_state.json: init errors, last scan) and the manifest, without discovery."""
        cache = self._state.load()
        self._last_scan_at = cache.last_scan_at
        manifest = read_manifest(self.config.manifest_path, self.config.root, cache.manifest)
        with self._guard:
            self._listing.load(manifest, cache)
            self._state.remember(self._listing.rereads())  # the probes export what they were seeded with
        self._loaded = True

    # discovery ---------------------------------------------------------------------------
    def scan(self) -> HubSnapshot:
        """Discover, append new repos to the manifest, init what needs it; unchanged tree: no writes."""
        root, path = self.config.root, self.config.manifest_path
        with self._scan_lock:
            self._check_open()
            manifest = read_manifest(path, root, known=self._listing.manifest)
            try:
                found = find_repos(self.config.repos_root, root, {e.path for e in manifest.repos})
            except OSError as exc:
                raise ConfigError(f"{self.layout.config}: hub.repos_root: cannot list {self.config.repos_root} "
                                  f"({exc.strerror}); create it or fix the setting") from exc
            new, escapes = new_repos(found, manifest, root)
            if new:
                manifest = save_manifest(path, add_repos(manifest, [f.rel_path for f in new]))
                self.log.info("scan: added %s", ", ".join(e.id for e in manifest.repos[-len(new):]))
            with self._guard:
                self._listing.escapes = escapes
                repos = self._listing.restore(manifest)  # a new process, and no repo changed since
            if repos is None:
                repos = self._judge_all(manifest)
            with self._guard:
                self._last_scan_at = utc_now()
                snapshot = self.last_scan = HubSnapshot(repos, self._last_scan_at)
        self.events.publish(("repos", snapshot))
        self._worker.schedule_flush()
        return snapshot

    def _judge_all(self, manifest: Manifest) -> Tuple[RepoEntry, ...]:
        """Every repo's entry from its files, once those that need it are settled (init, a crashed run)."""
        with self._guard:
            self._listing.set_manifest(manifest)
            slots = list(self._listing.slots.values())
            entries = [self._listing.entry(slot) for slot in slots]
        acted = [i for i, slot in enumerate(slots) if self._settle(slot, entries[i])]
        with self._guard:
            for i in acted:
                entries[i] = self._listing.entry(slots[i])
            repos = tuple(entries)
            self._listing.mark_published(slots, repos)
        self._end_gone_runs(repos)
        self._end_unlisted_runs(manifest)
        return repos

    def _settle(self, slot: RepoSlot, entry: RepoEntry) -> bool:
        """Init a repo that needs it (auto_init_missing), or close its crashed run; True if it acted."""
        if not slot.entry.enabled or entry.status is _MISSING:
            return False
        if entry.status in _NEEDS_INIT:
            if not self.config.hub.auto_init_missing:
                return False
            try:
                self._init_slot(slot, publish=False)  # the scan publishes the whole list once
            except Conflict:  # an init(repo_id) of it is under way
                return False
            return True
        return self._reconcile(slot)

    def _reconcile(self, slot: RepoSlot) -> bool:
        """A state.json that says running while no live process holds the lock: close that run."""
        files = slot.files
        with self._guard:
            if (files.run_status != _RUNNING or files.lock_status is LockStatus.LOCKED_ALIVE
                    or self._runner_facts(slot.entry.path)[0] or slot.entry.path in self._closing):
                return False
            self._closing.add(slot.entry.path)  # one closing at a time: a scan's and a poll's would both end it
        try:
            config = load_config(RepoLayout(slot.root).config)
            note = partial(self._note_orphan, slot.id)
            if isinstance(config, RepoConfig) and reconcile(config, on_orphan=note):
                self.log.warning("%s: the last run's owner died; closed it as interrupted", slot.id)
                return True
        except (CarError, OSError) as exc:  # an OSError: its files cannot be written (a full disk), for now
            self.log.warning("%s: cannot close its interrupted run: %s", slot.id, error_line(exc))
        finally:
            with self._guard:
                self._closing.discard(slot.entry.path)
        return False

    def _note_orphan(self, repo_id: str, orphan: OrphanedRun) -> None:
        self.log.warning("%s: %s", repo_id, orphan.describe())

    def _init_slot(self, slot: RepoSlot, publish: bool = True) -> Optional[str]:
        """Init the repo; why it failed (also kept as the slot's init_error), or None."""
        with self._guard:
            if slot.initializing:
                raise Conflict(NOT_RUNNABLE[RepoStatus.INITIALIZING].format(id=slot.id))
            slot.initializing = True
        if publish:
            self._worker.touch(slot.id)
        error = None
        try:
            init_repo(slot.root)
        except CarError as exc:
            error = str(exc)
        except OSError as exc:  # init_repo turns most into InitError; this is the rest
            error = f"cannot initialize {slot.root}: {error_line(exc)}"
        with self._guard:
            slot.initializing, slot.init_error = False, error
            slot.probe.forget()
        if error:
            self.log.warning("init %s failed: %s", slot.id, error)
        else:
            self.log.info("initialized %s", slot.id)
        if publish:
            self._worker.touch(slot.id)
        return error

    # the listing -------------------------------------------------------------------------
    def snapshot(self) -> HubSnapshot:
        """Every repo's status from its files and this hub's runners; reads, never writes."""
        with self._guard:
            return HubSnapshot(tuple(self._listing.entries()), self._last_scan_at)

    def repo(self, repo_id: str) -> RepoEntry:
        with self._guard:
            return self._listing.entry(self._listing.slot(repo_id))

    def repo_root(self, repo_id: str) -> Path:
        with self._guard:
            return self._listing.slot(repo_id).root

    def inspect(self) -> HubSnapshot:
        """`hub status` without the hub lock: hub_cache.bin + each repo's files."""
        self._load()
        self._listing.escapes = escaping(self._listing.manifest.repos, self.config.root)
        info = inspect_lock(self.layout.lock)
        if info.status is LockStatus.LOCKED_ALIVE and info.pid != os.getpid():
            self._listing.foreign_hub = info.pid  # its repos' locks carry its pid: those are running
        snapshot = self.snapshot()
        acted = [slot for slot in list(self._listing.slots.values()) if self._reconcile(slot)]
        return self.snapshot() if acted else snapshot

    def _repo_ids(self) -> List[str]:
        """For the worker's poll: the manifest's ids (an immutable list: no lock needed)."""
        return [e.id for e in self._listing.manifest.repos]

    def _runner_facts(self, path: str) -> Tuple[bool, Optional[str]]:
        runner = self._runners.get(path)
        return (runner.active, runner.last_error) if runner is not None else (False, None)

    def _touch_path(self, path: str) -> None:
        """A runner's loop changed its repo: re-read the row that names its directory now (not the id
        it was started through: the manifest may have moved that id elsewhere)."""
        for repo_id in self._listing.ids_at((path,)):
            self._worker.touch(repo_id)

    # per-repo controls -------------------------------------------------------------------
    def runner(self, repo_id: str, starting: bool = False) -> RepoRunner:
        """The one RepoRunner of the directory the id names now (made on first use); Conflict if the repo
        cannot run, or if it is `starting` a loop (run, resume) and the manifest disables it."""
        # a start goes by the manifest as it is now, not as the last scan read it: a repo disabled since
        # must not start (unchanged bytes give back the listing's own copy)
        now = (read_manifest(self.config.manifest_path, self.config.root, known=self._listing.manifest)
               if starting else None)
        with self._guard:
            self._check_open()
            slot = self._listing.slot(repo_id)
            if now is not None:
                entry = next((e for e in now.repos if e.id == repo_id), None)
                if entry is None or entry.path != slot.entry.path:
                    raise Conflict(f"{repo_id} has changed in {self.config.manifest_path} since the last scan; "
                                   f"scan (the page's Scan, or `car hub scan`), then run it")
                if not entry.enabled:
                    raise Conflict(f"{repo_id} is disabled (enabled: false in {self.config.manifest_path}); "
                                   f"set it to true to run it")
            runner = self._runners.get(slot.entry.path)
            if runner is not None and runner.active:
                return runner
            self._listing.judge_escape(slot)  # right before car works in it
            entry = self._listing.entry(slot)
            if entry.status is _MISSING and entry.error:
                raise Conflict(f"{repo_id}: {entry.error}")
            if entry.status in NOT_RUNNABLE:
                raise Conflict(NOT_RUNNABLE[entry.status].format(
                    id=repo_id, path=slot.root, manifest=self.config.manifest_path, error=entry.error))
            if runner is not None and runner.config.root == Path(os.path.realpath(slot.root_str)):
                return runner
            config = load_config(RepoLayout(slot.root).config)
            if not isinstance(config, RepoConfig):
                raise Conflict(f"{repo_id}: {slot.root} holds a hub config, not a repo's")
            if runner is not None:  # the path now leads elsewhere (a symlink changed)
                runner.close()
            runner = RepoRunner(config, self._executor, on_change=partial(self._touch_path, slot.entry.path),
                                errors=self.log)
            self._runners[slot.entry.path] = runner
            return runner

    def run(self, repo_id: str, once: bool = False) -> RepoEntry:
        self.runner(repo_id, starting=True).start(once=once, name=repo_id)
        self.log.info("run %s%s", repo_id, " (once)" if once else "")
        return self.repo(repo_id)

    def stop(self, repo_id: str) -> RepoEntry:
        self.runner(repo_id).request_stop()
        self.log.info("stop %s requested", repo_id)
        return self.repo(repo_id)

    def resume(self, repo_id: str, once: bool = False) -> RepoEntry:
        self.runner(repo_id, starting=True).resume(once=once, name=repo_id)
        self.log.info("resume %s%s", repo_id, " (once)" if once else "")
        return self.repo(repo_id)

    def kill(self, repo_id: str) -> RepoEntry:
        self.runner(repo_id).kill()
        self.log.info("kill %s", repo_id)
        return self.repo(repo_id)

    def init(self, repo_id: str) -> RepoEntry:
        """(Re)create what is missing of the repo's .codex-autorunner/; a failure is an InitError, and the
        entry stays init_error (with the reason) until an init succeeds."""
        with self._guard:
            self._check_open()
            slot = self._listing.slot(repo_id)
            if self._runner_facts(slot.entry.path)[0]:
                raise Conflict(f"{repo_id} is running; stop it before init")
            gone = self._listing.judge_escape(slot)  # right before car works in it
        if gone:
            raise Conflict(f"{repo_id}: {gone}")
        if not slot.root.is_dir():
            raise Conflict(NOT_RUNNABLE[RepoStatus.MISSING].format(
                id=repo_id, path=slot.root, manifest=self.config.manifest_path, error=None))
        error = self._init_slot(slot)
        if error:
            raise InitError(NOT_RUNNABLE[RepoStatus.INIT_ERROR].format(id=repo_id, error=error))
        return self.repo(repo_id)

    def _check_open(self) -> None:
        if self._closed:
            raise Conflict("the hub is shutting down")

    # events and hub_state.json -------------------------------------------------------------
    def _publish(self, repo_ids: Set[str]) -> bool:
        """Re-read these repos and publish the entries that changed; True if any did."""
        with self._guard:
            changed = self._listing.changed(repo_ids)
        for entry in changed:
            self.events.publish(("repo", entry))
        self._end_gone_runs(changed)
        self._close_crashed_runs(changed)
        return bool(changed)

    def _close_crashed_runs(self, entries: Iterable[RepoEntry]) -> None:
        """A loop another process ran died (kill -9, a crash), or one whose last writes failed (a full
        disk), while this hub serves: end what it left running and close its run, as a scan or `car status`
        would (DESIGN.md §3). Else the list shows a run under way that nobody watches (or an idle repo whose
        state says running), and an orphaned agent goes on working. On the executor: ending an orphan may
        take the kill grace, and the worker publishes every repo's changes. _reconcile judges whether there
        is a run to close."""
        for entry in entries:
            if entry.lock_status is LockStatus.LOCKED_ALIVE:  # its loop runs (a stale lock, or none, may be left)
                continue
            with self._guard:
                slot = self._listing.slots.get(entry.id)
            if slot is None or slot.files.run_status != _RUNNING:
                continue
            try:
                self._executor.submit(self._close_crashed_run, slot)
            except RuntimeError:  # shutting down: the next start closes it
                pass

    def _close_crashed_run(self, slot: RepoSlot) -> None:
        if self._reconcile(slot):
            self._worker.touch(slot.id)

    def _end_gone_runs(self, entries: Iterable[RepoEntry]) -> None:
        """A repo moved or deleted while this hub ran it: end the run. Its agent would go on working
        wherever the directory went, with nobody watching, and `kill` could not reach it any more."""
        for entry in entries:
            with self._guard:
                runner = self._runners.get(entry.path) if entry.status is _MISSING else None
            if runner is not None and runner.active:
                self.log.warning("%s: %s is gone (moved or deleted) while it ran; ending its run",
                                 entry.id, runner.config.root)
                runner.kill()

    def _end_unlisted_runs(self, manifest: Manifest) -> None:
        """A repo taken out of the manifest while this hub ran it: end the run. Out of the list, it would
        go on with nobody watching, and no `kill` of the hub's could name it any more."""
        listed = {entry.path for entry in manifest.repos}
        with self._guard:
            unlisted = [r for path, r in self._runners.items() if path not in listed and r.active]
        for runner in unlisted:
            self.log.warning("%s was taken out of %s while it ran; ending its run", runner.config.root,
                             self.config.manifest_path)
            runner.kill()

    def _flush(self) -> None:
        """Write hub_state.json and hub_cache.bin (atomically) where their content changed."""
        with self._guard:  # the entries as last read: the worker re-reads what changes
            snapshot = HubSnapshot(tuple(self._listing.latest()), self._last_scan_at)
            manifest, rereads = self._listing.manifest, self._listing.rereads()
            seeds = self._listing.seeds() if self._state.stale_seeds(rereads) else None
            memo = self._listing.memo()
        self._state.save(snapshot, manifest, rereads, seeds, memo)  # outside the lock: the API never waits on a write
