"""`car doctor`: checks a repo's config, docs, agent binary, git and lock, and says how to fix each."""

from __future__ import annotations

import errno
import signal
import subprocess
from typing import List, Optional, Tuple

from car.agent import resolve_binary, signal_group
from car.bootstrap import describe_git
from car.config import PromptConfig, RepoConfig
from car.docs import DocKind, parse_todos
from car.errors import AgentError, CarError
from car.files import decode_doc, read_bytes, read_text
from car.git import inspect_git
from car.layout import CAR_DIR, CONFIG_NAME, RepoLayout
from car.lock import inspect_lock
from car.status import LockStatus

VERSION_SECONDS = 5  # `codex --version` answers in ~50 ms; an agent that hangs on it must not hang doctor


def doctor(config: RepoConfig) -> int:
    """Print each check, ok or FAIL with its fix; 0 if all passed, else 1."""
    problems: List[str] = []

    def check(ok: bool, good: str, bad: str) -> None:
        print(("ok    " if ok else "FAIL  ") + (good if ok else bad))
        if not ok:
            problems.append(bad)

    print(f"ok    config {RepoLayout(config.root).config} (version 2, mode repo)")
    for warning in config.warnings:
        print(f"warn  {warning}")
    todos = None
    for kind in DocKind:
        path = config.doc_path(kind.value)
        if not path.is_file():
            check(False, "", f"doc {kind.value}: {path} is not a file (a directory?); move it away and run "
                  "`car init`" if path.exists() else f"doc {kind.value} missing: {path} (run `car init` to "
                  f"create it, or fix docs.{kind.value})")
            continue
        try:  # as a run reads it: a doc a run would refuse (UTF-16, unreadable) fails here; the checks go on
            text = read_text(path)
        except CarError as exc:
            check(False, "", str(exc))
            continue
        check(True, f"doc {kind.value}: {path}", "")
        if kind is DocKind.TODO:
            todos = parse_todos(text)
    if todos is not None:
        print(f"info  TODO: {todos.done} done, {todos.outstanding} outstanding")
    ok, line = _template_check(config)
    check(ok, line, line)
    try:
        binary = resolve_binary(config.codex.binary, config.root)
        version = _agent_version(binary)
        check(True, f"agent {binary}" + (f" ({version})" if version else ""), "")
    except CarError as exc:
        check(False, "", str(exc))
    found = inspect_git(config.root)
    part = f" (part of the work tree at {found.top})" if found.top not in (None, config.root) else ""
    check(found.top is not None, "git repository" + part, describe_git(config.root, found) or "")
    if found.busy:  # a warning: car runs, but git.auto_commit commits nothing until it is over
        print(f"warn  {found.busy}" + ("; until then git.auto_commit commits nothing" if config.git.auto_commit
                                       else ""))
    lock = inspect_lock(RepoLayout(config.root).lock)
    check(lock.status is not LockStatus.LOCKED_STALE, f"lock: {lock.status.value}",
          "stale lock (owner gone): run `car resume` to clear it")
    print("all checks passed" if not problems else f"{len(problems)} problem(s) found")
    return 0 if not problems else 1


def _template_check(config: RepoConfig) -> Tuple[bool, str]:
    """The prompt template read as a run reads it (Engine._template): whether it passes, and the line saying so."""
    path = config.template_path
    try:  # read_text's two steps, apart: there a missing file reads as the built-in text, here it must not
        raw = read_bytes(path)
        if raw is not None:
            decode_doc(raw, path)
    except CarError as exc:  # a directory, UTF-16, unreadable: every run stops on it
        return False, str(exc)
    if raw is not None:
        return True, f"prompt template: {path}"
    if path == config.resolve(PromptConfig().template):  # where `car init` puts the built-in text: nothing is lost
        return True, f"prompt template: {path} missing; runs use the built-in one (`car init` writes a copy to edit)"
    # a path someone set and mistyped: the runs would use the built-in text, and nothing would say so
    return False, (f"prompt template missing: {path} (runs fall back to the built-in template); create it, "
                   "or fix prompt.template")


def _agent_version(binary: str) -> Optional[str]:
    """`binary --version`'s first line, or None; an agent that does not answer within
    VERSION_SECONDS is ended with everything it started (its own session: a child holding the
    pipe would otherwise keep doctor waiting for ever)."""
    try:
        proc = subprocess.Popen([binary, "--version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
    except OSError as exc:  # it exists and is executable (resolve_binary), yet exec refuses it: so would a run
        raise AgentError(_cannot_start(binary, exc)) from exc
    try:
        stdout, stderr = proc.communicate(timeout=VERSION_SECONDS)
    except subprocess.TimeoutExpired:
        signal_group(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None
    lines = (stdout or stderr).strip().splitlines()
    return lines[0] if proc.returncode == 0 and lines else None


def _cannot_start(binary: str, exc: OSError) -> str:
    """Why exec refused an agent that exists, and the fix. ENOENT for an existing file means its #! line
    names an interpreter that is not there: that line is quoted, as the OS names only the script."""
    fix = f"check codex.binary in the repo's {CAR_DIR}/{CONFIG_NAME}"
    try:
        with open(binary, "rb") as f:
            first = f.readline(200).rstrip().decode("utf-8", "replace")
    except OSError:
        first = ""
    if exc.errno == errno.ENOENT and first.startswith("#!"):
        fix = f"its first line `{first}` names an interpreter that is not there: fix that line, or {fix}"
    elif exc.errno == errno.ENOEXEC:
        fix = f"it is neither a program this system runs nor a script starting with #!; {fix}"
    return f"cannot start agent {binary}: {exc.strerror}; {fix}"
