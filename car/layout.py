"""Where every file of a repo's and a hub's .codex-autorunner/ lives (the one place)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

CAR_DIR = ".codex-autorunner"
CONFIG_NAME = "config.yml"
CONFIG_CACHE_NAME = ".config.json"  # config.yml parsed, next to it (car.config)
STATE_NAME, LOCK_NAME = "state.json", "lock"
GITIGNORE_TEXT = "*\n!/.gitignore\n"


@dataclass(frozen=True)
class CarDir:
    """What a repo's and a hub's .codex-autorunner/ both hold."""

    root: Path

    @property
    def dir(self) -> Path:
        return self.root / CAR_DIR

    @property
    def config(self) -> Path:
        return self.dir / CONFIG_NAME

    @property
    def gitignore(self) -> Path:
        return self.dir / ".gitignore"

    @property
    def lock(self) -> Path:
        return self.dir / LOCK_NAME

    @property
    def token(self) -> Path:
        """The API token for --allow-remote (mode 0600, reused across restarts)."""
        return self.dir / "token"

    def own_files(self) -> Tuple[Path, ...]:
        """car's fixed files here, which a configured path (a log) must never name."""
        return self.config, self.dir / CONFIG_CACHE_NAME, self.gitignore, self.lock, self.token


@dataclass(frozen=True)
class RepoLayout(CarDir):
    """Fixed files of one repo; docs, prompt template and log paths come from its config."""

    @property
    def state(self) -> Path:
        return self.dir / STATE_NAME

    @property
    def stop(self) -> Path:
        return self.dir / "stop"

    @property
    def rendered_prompt(self) -> Path:
        """The prompt of the current run, fed to the agent's stdin."""
        return self.dir / "prompt.last.txt"

    @property
    def runs(self) -> Path:
        """One JSON line per finished run (tokens, outcome): survives log rotation."""
        return self.dir / "runs.jsonl"

    @property
    def web_log(self) -> Path:
        """`car serve`'s access log: the run log has one writer, the engine."""
        return self.dir / "codex-autorunner-web.log"

    def own_files(self) -> Tuple[Path, ...]:
        return (*super().own_files(), self.state, self.stop, self.rendered_prompt, self.runs, self.web_log)


@dataclass(frozen=True)
class HubLayout(CarDir):
    @property
    def hub_state(self) -> Path:
        return self.dir / "hub_state.json"

    @property
    def hub_cache(self) -> Path:
        """What a new hub process starts from (car.hub_cache); deleting it only slows one start."""
        return self.dir / "hub_cache.bin"

    def own_files(self) -> Tuple[Path, ...]:
        return (*super().own_files(), self.hub_state, self.hub_cache)
