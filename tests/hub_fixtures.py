"""Helpers for the hub tests: hub roots with real git repos, a started supervisor, file stamps."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Tuple

from car.config import HubConfig, default_data, load_config
from car.files import write_yaml
from car.hub import HubSupervisor
from car.layout import HubLayout

from support import make_git_repo, make_repo, wait_until


def make_hub(root: Path, log: Any = None, **hub: Any) -> HubConfig:
    """A hub root: its config (mode: hub) with `hub:` settings overridden; no manifest yet."""
    data = default_data("hub")
    data["hub"].update(hub)
    if log:
        data["hub"]["log"].update(log)
    HubLayout(root).dir.mkdir(parents=True, exist_ok=True)
    write_yaml(HubLayout(root).config, data)
    return hub_config(root)


def hub_config(root: Path) -> HubConfig:
    config = load_config(HubLayout(root).config)
    assert isinstance(config, HubConfig)
    return config


def git_repos(root: Path, *names: str) -> None:
    for name in names:
        make_git_repo(root / name)


def agent_repos(root: Path, *names: str, **runner: Any) -> None:
    """Initialized git repos wired to the fake agent (two TODO items each)."""
    for name in names:
        make_repo(root / name, **runner)


@contextmanager
def started(config: HubConfig, **kw: Any) -> Iterator[HubSupervisor]:
    kw.setdefault("poll_seconds", 0.2)
    hub = HubSupervisor(config, **kw)
    hub.start()
    try:
        yield hub
    finally:
        hub.shutdown()


def stamp(path: Path) -> Tuple[bytes, int, int]:
    """Bytes, mtime and inode: what must not change when nothing is written."""
    st = os.stat(path)
    return path.read_bytes(), st.st_mtime_ns, st.st_ino


def wait_status(hub: HubSupervisor, repo_id: str, *statuses: str, timeout: float = 20) -> Any:
    def what() -> str:
        return f"{repo_id} to be {' or '.join(statuses)} (now {hub.repo(repo_id).status.value})"

    return wait_until(lambda: hub.repo(repo_id) if hub.repo(repo_id).status.value in statuses else None,
                      timeout, what)
