"""Where every file of a repo's and a hub's .codex-autorunner/ lives (the one place)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CAR_DIR = ".codex-autorunner"
CONFIG_NAME = "config.yml"
GITIGNORE_TEXT = "*\n!/.gitignore\n"


@dataclass(frozen=True)
class RepoLayout:
    """Fixed files of one repo; docs, prompt template and log paths come from its config."""

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
    def state(self) -> Path:
        return self.dir / "state.json"

    @property
    def lock(self) -> Path:
        return self.dir / "lock"

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
    def token(self) -> Path:
        """`car serve --allow-remote`'s access token (mode 0600, reused across restarts)."""
        return self.dir / "token"

    @property
    def web_log(self) -> Path:
        """`car serve`'s access log: one writer per file, so not the run log."""
        return self.dir / "codex-autorunner-web.log"


@dataclass(frozen=True)
class HubLayout:
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
    def hub_state(self) -> Path:
        return self.dir / "hub_state.json"

    @property
    def lock(self) -> Path:
        return self.dir / "lock"

    @property
    def token(self) -> Path:
        return self.dir / "token"
