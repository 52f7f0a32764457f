from __future__ import annotations

import os
from pathlib import Path

import pytest

from support import make_repo


@pytest.fixture(autouse=True)
def _clean_agent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test picks the fake agent's behaviour itself; nothing leaks between tests."""
    for key in list(os.environ):
        if key.startswith("FAKE_AGENT_"):
            monkeypatch.delenv(key)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A temp git repo, initialized, with the fake agent and a two-item TODO."""
    return make_repo(tmp_path / "repo")
