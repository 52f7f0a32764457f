"""The lock: only its owner rewrites or removes it, and clearing a stale lock never removes another's.
Real files, real processes; every wait is bounded."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

from car.config import load_config
from car.errors import LockError
from car.layout import RepoLayout
from car.lock import acquire_lock, clear_stale_lock, inspect_lock, lock_held_message, release_lock, update_lock
from car.recovery import end_orphaned_run
from car.status import LockStatus

from support import make_repo

RACERS, ROUNDS = 3, 300
BARRIER_SECONDS = 20  # a racer that never arrives breaks the barrier: the test fails, it does not hang


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lock_removed_by_hand_is_not_made_again_and_releasing_it_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    acquire_lock(path)
    update_lock(path, None, "aa" * 12)
    assert inspect_lock(path).run_token == "aa" * 12
    path.unlink()  # by hand, while its loop runs
    assert not update_lock(path, None, "bb" * 12) and not path.exists()
    assert not release_lock(path)  # gone: nothing to do, and no error


def test_a_later_lock_of_the_same_process_is_not_the_first_ones_to_rewrite_or_remove(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    first = acquire_lock(path)
    path.unlink()
    second = acquire_lock(path)  # the same pid, as a hub's loops share one, but another acquisition
    assert second.owner_token != first.owner_token
    before = path.read_bytes()
    assert not update_lock(path, None, "cc" * 12, first.owner_token)
    assert not release_lock(path, first.owner_token)
    assert path.read_bytes() == before
    assert release_lock(path, second.owner_token) and not path.exists()


def test_another_live_process_lock_is_neither_rewritten_nor_removed(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path.write_text(json.dumps({"pid": holder.pid, "pid_started": None, "started_at": "then"}))
        before = path.read_bytes()
        assert not update_lock(path, None, "dd" * 12) and not release_lock(path)
        assert path.read_bytes() == before
    finally:
        holder.kill()
        holder.wait()


def race_clear_then_acquire(path: Path, stale: str, barrier, wins, intact) -> None:
    """One racer (its own process): each round, clear the stale lock as `car resume` does, then take it."""
    for round_no in range(ROUNDS):
        barrier.wait(BARRIER_SECONDS)
        with contextlib.suppress(LockError):  # a live lock: another racer's, this round
            clear_stale_lock(path)
        mine = None
        with contextlib.suppress(LockError):
            mine = acquire_lock(path)
        barrier.wait(BARRIER_SECONDS)  # all have cleared and tried: a winner's lock must still be there
        if mine is not None:
            with wins.get_lock():
                wins[round_no] += 1
            if inspect_lock(path).pid == os.getpid():
                with intact.get_lock():
                    intact[round_no] += 1
        barrier.wait(BARRIER_SECONDS)
        if mine is not None:  # the round's winner leaves a stale lock for the next round
            path.write_text(stale)


def test_racing_resumes_never_remove_the_lock_one_of_them_has_just_taken(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    stale = json.dumps({"pid": dead_pid(), "pid_started": "1", "started_at": "then"})
    path.write_text(stale)
    assert inspect_lock(path).status is LockStatus.LOCKED_STALE
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may run threads
    barrier = ctx.Barrier(RACERS)
    wins, intact = ctx.Array("i", ROUNDS), ctx.Array("i", ROUNDS)
    racers = [ctx.Process(target=race_clear_then_acquire, args=(path, stale, barrier, wins, intact))
              for _ in range(RACERS)]
    for racer in racers:
        racer.start()
    try:
        for racer in racers:
            racer.join(120)
    finally:
        for racer in racers:
            if racer.is_alive():
                racer.kill()
                racer.join(10)
    assert [racer.exitcode for racer in racers] == [0] * RACERS
    bad = [(n, wins[n], intact[n]) for n in range(ROUNDS) if (wins[n], intact[n]) != (1, 1)]
    assert not bad, f"rounds (round, winners, winners whose lock survived) that went wrong: {bad[:10]}"


@contextlib.contextmanager
def running_agent(lock: Path):
    """A real agent in its own group, recorded in `lock` (which this process holds) as a loop records it."""
    token = os.urandom(12).hex()
    agent = subprocess.Popen(["sleep", "60"], start_new_session=True, env=dict(os.environ, CAR_RUN_TOKEN=token))
    try:
        assert update_lock(lock, agent.pid, token)
        yield agent
    finally:
        agent.kill()
        agent.wait()


def test_a_copy_of_a_live_lock_is_stale_in_the_copy_and_never_ends_the_originals_run(tmp_path: Path) -> None:
    """QA: a `cp -r` of a running repo showed the copy running, and clearing it could end the original's run."""
    original = make_repo(tmp_path / "original")
    lock = RepoLayout(original).lock
    acquire_lock(lock)
    with running_agent(lock) as agent:
        copy = tmp_path / "copy"
        shutil.copytree(original, copy, symlinks=True)
        copied = inspect_lock(RepoLayout(copy).lock)
        assert copied.status is LockStatus.LOCKED_STALE and copied.copied
        assert copied.made_in == str(original / ".codex-autorunner")
        assert "was carried here from" in lock_held_message(RepoLayout(copy).lock, copied)
        assert end_orphaned_run(load_config(RepoLayout(copy).config)) is None
        assert clear_stale_lock(RepoLayout(copy).lock)
        assert agent.poll() is None and inspect_lock(lock).status is LockStatus.LOCKED_ALIVE  # untouched
    assert release_lock(lock)


def test_a_repo_moved_while_its_agent_runs_stays_locked_until_that_agent_ends(tmp_path: Path) -> None:
    """QA: a repo moved while a hub ran it stayed "running" in its new place for as long as the hub lived."""
    old = tmp_path / "old"
    old.mkdir()
    acquire_lock(old / "lock")
    with running_agent(old / "lock") as agent:
        new = old.rename(tmp_path / "new")
        moved = inspect_lock(new / "lock")  # the owner (this process) lives on, as a hub does
        assert moved.status is LockStatus.LOCKED_ALIVE and moved.made_in == str(old) and not moved.copied
        agent.kill()
        agent.wait()
    assert inspect_lock(new / "lock").status is LockStatus.LOCKED_STALE  # nothing of it runs here now
    assert clear_stale_lock(new / "lock") and not (new / "lock").exists()


def test_a_lock_moved_between_runs_is_stale_and_one_seen_through_a_symlink_is_not_carried(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    acquire_lock(old / "lock")
    (tmp_path / "link").symlink_to(old)
    through_link = inspect_lock(tmp_path / "link" / "lock")
    assert through_link.status is LockStatus.LOCKED_ALIVE and through_link.made_in is None
    new = old.rename(tmp_path / "new")  # its owner lives on, between two runs: no agent
    assert inspect_lock(new / "lock").status is LockStatus.LOCKED_STALE
