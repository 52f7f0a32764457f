"""Token usage per run (from runs.jsonl), summed per repo and over a hub's repos."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Tuple

from car.codex_events import TokenUsage
from car.config import RepoConfig
from car.errors import CarError, StateError
from car.files import read_jsonl
from car.layout import RepoLayout


@dataclass(frozen=True)
class RunUsage:
    """One finished run; `usage` is None when the agent reported no tokens (not Codex --json)."""

    run_id: int
    started_at: Optional[str]
    finished_at: Optional[str]
    exit_code: Optional[int]
    usage: Optional[TokenUsage]

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "started_at": self.started_at, "finished_at": self.finished_at,
                "exit_code": self.exit_code, "usage": self.usage.to_json() if self.usage else None}


@dataclass(frozen=True)
class UsageReport:
    """A repo's runs and their token total (runs without usage count as zero)."""

    root: Path
    runs: Tuple[RunUsage, ...]
    total: TokenUsage

    @property
    def runs_with_usage(self) -> int:
        return sum(1 for r in self.runs if r.usage is not None)

    def to_json(self) -> dict[str, Any]:
        return {"repo": str(self.root), "runs": [r.to_json() for r in self.runs],
                "run_count": len(self.runs), "runs_with_usage": self.runs_with_usage,
                "total": self.total.to_json()}


@dataclass(frozen=True)
class HubUsageEntry:
    """One repo's totals; `error` says why its runs could not be read (then it counts zero)."""

    repo_id: str
    report: UsageReport
    error: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        r = self.report
        return {"id": self.repo_id, "path": str(r.root), "run_count": len(r.runs),
                "runs_with_usage": r.runs_with_usage, "total": r.total.to_json(), "error": self.error}


@dataclass(frozen=True)
class HubUsageReport:
    """Per-repo totals (no per-run lists: a hub holds many repos) and the sum over them."""

    repos: Tuple[HubUsageEntry, ...]
    total: TokenUsage

    def to_json(self) -> dict[str, Any]:
        return {"repos": [e.to_json() for e in self.repos],
                "run_count": sum(len(e.report.runs) for e in self.repos),
                "runs_with_usage": sum(e.report.runs_with_usage for e in self.repos),
                "total": self.total.to_json()}


def parse_runs(records: Iterable[Any]) -> Tuple[RunUsage, ...]:
    """runs.jsonl records → RunUsage, in file order; records without an integer id are skipped."""
    runs = []
    for rec in records:
        if not isinstance(rec, dict) or not _is_int(rec.get("id")):
            continue
        raw = rec.get("usage")
        runs.append(RunUsage(run_id=rec["id"], started_at=_opt_str(rec.get("started_at")),
                             finished_at=_opt_str(rec.get("finished_at")),
                             exit_code=rec.get("exit_code") if _is_int(rec.get("exit_code")) else None,
                             usage=TokenUsage.from_json(raw) if isinstance(raw, dict) else None))
    return tuple(runs)


def sum_usage(usages: Iterable[Optional[TokenUsage]]) -> TokenUsage:
    total = TokenUsage()
    for usage in usages:
        if usage is not None:
            total.add(usage)
    return total


def load_usage(root: Path) -> UsageReport:
    """Read `root`'s runs.jsonl (missing file: no runs); an unreadable one is a StateError."""
    path = RepoLayout(root).runs
    try:
        runs = parse_runs(read_jsonl(path))
    except OSError as exc:  # .codex-autorunner is a file, runs.jsonl a directory, no permission
        raise StateError(f"cannot read {path} ({exc.strerror or exc})") from None
    return UsageReport(root=root, runs=runs, total=sum_usage(r.usage for r in runs))


def repo_usage(config: RepoConfig) -> UsageReport:
    return load_usage(config.root)


def hub_usage(repos: Iterable[Tuple[str, Path]]) -> HubUsageReport:
    """Sum over (repo id, repo root) pairs; a repo without runs.jsonl counts as zero, and so does
    one whose runs cannot be read (its entry says why): one broken repo never hides the others."""
    entries = tuple(_hub_entry(repo_id, root) for repo_id, root in repos)
    return HubUsageReport(repos=entries, total=sum_usage(e.report.total for e in entries))


def _hub_entry(repo_id: str, root: Path) -> HubUsageEntry:
    try:
        return HubUsageEntry(repo_id, load_usage(root))
    except CarError as exc:
        return HubUsageEntry(repo_id, UsageReport(root=root, runs=(), total=TokenUsage()), str(exc))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _opt_str(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None
