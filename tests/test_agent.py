"""car.agent's marker sweep: SIGTERM first (so shells run their EXIT traps), SIGKILL after."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

from car.agent import TOKEN_VAR, pids_with_token, sweep_token

from support import wait_until


def start_marked_shell(tmp_path: Path, script: str) -> tuple:
    """`bash -c script` in a session of its own carrying a fresh run marker, like a Codex
    tool command or its shell snapshot; returns (popen, token) once it wrote `ready`."""
    token = "test-" + secrets.token_hex(8)
    proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, start_new_session=True,
                            env={**os.environ, TOKEN_VAR: token})
    wait_until((tmp_path / "ready").exists, timeout=10, what="the marked shell to start")
    return proc, token


def test_sweep_lets_a_shell_release_its_lock(tmp_path: Path) -> None:
    # What Codex's shell snapshot looked like when car swept it with SIGKILL: `pyenv rehash`
    # holding its lock file, which then blocked every later login shell for 60 s.
    proc, token = start_marked_shell(
        tmp_path, 'trap "rm -f held.lock" EXIT; touch held.lock ready; while :; do sleep 0.1; done')
    try:
        sweep_token(token)
        assert proc.wait(timeout=5) is not None
        assert not (tmp_path / "held.lock").exists(), "SIGKILL came before the EXIT trap ran"
        assert pids_with_token(token) == []
    finally:
        proc.kill()
        proc.wait(timeout=5)


def test_sweep_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    proc, token = start_marked_shell(tmp_path, "trap '' TERM; touch ready; while :; do sleep 0.1; done")
    try:
        started = time.monotonic()
        sweep_token(token, grace_seconds=0.3)
        assert proc.wait(timeout=5) == -9
        assert pids_with_token(token) == []
        assert time.monotonic() - started < 3
    finally:
        proc.kill()
        proc.wait(timeout=5)


def test_sweep_without_grace_is_sigkill_at_once(tmp_path: Path) -> None:
    proc, token = start_marked_shell(
        tmp_path, 'trap "rm -f held.lock" EXIT; touch held.lock ready; while :; do sleep 0.1; done')
    try:
        sweep_token(token, grace_seconds=0)
        assert proc.wait(timeout=5) == -9
        assert (tmp_path / "held.lock").exists()  # the cost of skipping SIGTERM
    finally:
        proc.kill()
        proc.wait(timeout=5)
