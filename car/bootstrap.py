"""Creating a repo's .codex-autorunner/ (init): idempotent, and never loses what a user wrote."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from car import git
from car.config import (
    HubConfig,
    RepoConfig,
    default_data,
    default_text,
    load_config,
    parse_config,
    read_config_text,
    says_hub_mode,
)
from car.docs import DocKind
from car.errors import ConfigError, InitError, UsageError
from car.files import dump_yaml, load_yaml, write_atomic
from car.layout import GITIGNORE_TEXT, HubLayout, RepoLayout
from car.prompt import DEFAULT_TEMPLATE
from car.state import RepoState, save_state

STARTER_DOCS = {
    DocKind.TODO: """\
# TODO

The agent works on the first unchecked item each run and ticks it when done.
The loop stops when no unchecked item is left. Items in code blocks or HTML comments don't count.

- [ ] Read SPEC.md and the code, then replace this list with the real steps of the work
""",
    DocKind.PROGRESS: """\
# Progress

What each run did and learned, newest last. The agent appends here; you can too.
""",
    DocKind.OPINIONS: """\
# Opinions

Conventions and decisions the agent must follow (style, libraries, what not to touch).
""",
    DocKind.SPEC: """\
# Spec

What this repository should become: the goal, constraints, and how to check the work.
""",
}


@dataclass
class InitReport:
    root: Path
    actions: List[str] = field(default_factory=list)

    def note(self, path: Path, what: str) -> None:
        try:
            shown = path.relative_to(self.root)
        except ValueError:
            shown = path
        self.actions.append(f"{what}: {shown}")


def _merge(defaults: Any, user: Any) -> Any:
    """User values win; defaults fill the gaps; unknown user keys are kept."""
    if isinstance(defaults, dict) and isinstance(user, dict):
        out = {k: _merge(v, user[k]) if k in user else v for k, v in defaults.items()}
        out.update({k: v for k, v in user.items() if k not in defaults})
        return out
    return user


def _write_config(layout: RepoLayout, force: bool, report: InitReport) -> None:
    path = layout.config
    if not path.exists():
        write_atomic(path, default_text("repo"))
        report.note(path, "created")
        return
    text = read_config_text(path)
    import yaml  # here, as in car.config: hub commands import this module, and most never parse YAML

    try:
        # a key twice stays a ConfigError even with force: which value was meant is for the user to say
        user = load_yaml(text, path, ConfigError)[0] or {}
    except yaml.YAMLError:
        if not force:
            load_config(path)  # raises the ConfigError with the line
        if says_hub_mode(path) or HubLayout(layout.root).hub_state.exists():
            # rewritten with a repo's defaults, the hub's root would become a repo (QA)
            raise UsageError(f"{path} is a hub's config (mode: hub, or hub_state.json beside it) that YAML cannot "
                             f"read; `car init --force` would make this hub root a repo: fix the file, or move "
                             f"it away and run `car hub init`") from None
        backup = path.with_name(path.name + ".bak")
        write_atomic(backup, text)
        write_atomic(path, default_text("repo"))
        report.note(backup, "invalid YAML saved as")
        report.note(path, "rewritten with defaults")
        return
    if isinstance(user, dict) and user.get("mode") == "hub":
        raise UsageError(f"{path} is a hub config (mode: hub); `car init` sets up a repo: run it in a "
                         f"repo directory, or `car hub scan` here")
    if not force:
        report.note(path, "kept")
        return
    merged = _merge(default_data("repo"), user if isinstance(user, dict) else {})
    parse_config(merged, path)  # a wrong type stays an error: we don't silently replace values
    new_text = dump_yaml(merged)
    if new_text != text:  # rewritten from its data: comments and layout go, so the file is kept
        backup = path.with_name(path.name + ".bak")
        write_atomic(backup, text)
        report.note(backup, "your version saved as")
        write_atomic(path, new_text)
        report.note(path, "completed with defaults (your values kept)")
    else:
        report.note(path, "kept")


def _write_template(path: Path, text: str, force: bool, report: InitReport) -> None:
    """Create a template file; with force, rewrite it, saving a changed one as .bak first."""
    if path.exists():
        current = path.read_text(encoding="utf-8", errors="replace")
        if not force or current == text:
            report.note(path, "kept")
            return
        backup = path.with_name(path.name + ".bak")
        write_atomic(backup, current)
        report.note(backup, "your version saved as")
        write_atomic(path, text)
        report.note(path, "rewritten")
        return
    write_atomic(path, text)
    report.note(path, "created")


def init_repo(root: Path, force: bool = False, git_init: bool = False) -> InitReport:
    """Create or complete `root`/.codex-autorunner/; an OSError becomes an InitError."""
    root = root.resolve()
    layout = RepoLayout(root)
    report = InitReport(root)
    try:
        if not root.is_dir():
            raise InitError(f"{root} is not a directory; init a directory (a git repository)")
        if layout.dir.exists() and not layout.dir.is_dir():
            raise InitError(f"{layout.dir} exists and is not a directory; move it away and init again")
        if git_init and not (root / ".git").exists():
            _git_init(root, report)
        layout.dir.mkdir(exist_ok=True)
        _write_template(layout.gitignore, GITIGNORE_TEXT, force, report)
        _write_config(layout, force, report)
        config = load_config(layout.config)
        assert isinstance(config, RepoConfig)
        for kind, text in STARTER_DOCS.items():
            path = config.doc_path(kind.value)
            if path.exists() and not path.is_file():  # kept, it would stop every run that reads it
                raise InitError(f"{path} is not a file (a directory?); move it away and init again, "
                                f"or set docs.{kind.value} in {layout.config} to a file")
            if path.exists():
                report.note(path, "kept (docs are never rewritten)" if force else "kept")
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, text)
            report.note(path, "created")
        _write_template(config.template_path, DEFAULT_TEMPLATE, force, report)
        if not layout.state.exists():
            save_state(layout.state, RepoState())
            report.note(layout.state, "created")
        if not config.log_path.exists():
            config.log_path.parent.mkdir(parents=True, exist_ok=True)
            config.log_path.touch()
            report.note(config.log_path, "created")
    except OSError as exc:
        where = exc.filename or root
        raise InitError(f"cannot initialize {root}: {exc.strerror} ({where}); "
                        f"fix the permissions or path and init again") from exc
    except ConfigError:
        raise
    return report


def init_hub(root: Path) -> InitReport:
    """Make `root` a hub root: hub config (mode: hub), an empty manifest, the .gitignore; idempotent."""
    from car.manifest import Manifest, save_manifest  # here: repo commands need not load it

    root = root.resolve()
    layout = HubLayout(root)
    report = InitReport(root)
    try:
        if layout.dir.exists() and not layout.dir.is_dir():
            raise InitError(f"{layout.dir} exists and is not a directory; move it away and init again")
        layout.dir.mkdir(parents=True, exist_ok=True)
        _write_template(layout.gitignore, GITIGNORE_TEXT, False, report)
        if layout.config.exists():
            report.note(layout.config, "kept")
        else:
            write_atomic(layout.config, default_text("hub"))
            report.note(layout.config, "created")
        config = load_config(layout.config)
        if not isinstance(config, HubConfig):
            raise UsageError(f"{layout.config} is a repo config (mode: repo); `car hub init` sets up a hub: "
                             f"run it in the directory above the repos")
        if config.manifest_path.exists():
            report.note(config.manifest_path, "kept")
        else:
            save_manifest(config.manifest_path, Manifest())
            report.note(config.manifest_path, "created")
    except OSError as exc:
        raise InitError(f"cannot initialize the hub at {root}: {exc.strerror} ({exc.filename or root}); "
                        f"fix the permissions or path and init again") from exc
    return report


def _git_init(root: Path, report: InitReport) -> None:
    """`git init` in `root`, unless it is a directory of a larger work tree (a monorepo), which a nested
    repository would hide it from."""
    top = git.inspect_git(root).top
    if top is not None:
        report.actions.append(f"git init skipped: already in the git work tree at {top}")
        return
    err = git.git_init(root)
    if err:
        raise InitError(f"git init failed in {root}: {err}; fix that, or run `git init` there yourself, "
                        "then init again")
    report.note(root / ".git", "created")


def describe_git(root: Path, facts: Optional[git.GitFacts] = None) -> Optional[str]:
    """A warning when the repo is not under git (car works, but progress and commits are weaker)."""
    facts = facts or git.inspect_git(root)
    if facts.top is not None:  # its own repository, or a directory of a larger one's work tree (a monorepo)
        return None
    if not git.has_git():
        return f"{facts.problem}: progress is judged by file times and git.auto_commit commits nothing; install git"
    if (root / ".git").exists():  # `car init --git-init` would leave it as it is
        return f"{root}/.git is there, but git does not read it as a repository ({facts.problem}); fix or remove it"
    return f"{root} is not a git repository; `car init --git-init` creates one"
