"""`car usage` and `car hub usage`: tokens per run and per repo, from runs.jsonl."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Tuple

from car.layout import RepoLayout

if TYPE_CHECKING:  # car.usage loads only for the usage commands: the others start faster
    from car.codex_events import TokenUsage
    from car.usage import HubUsageReport, UsageReport

NO_RUNS = "no runs recorded yet ({path} is missing or empty)"


def render_tokens(usage: TokenUsage) -> str:
    return (f"input={usage.input_tokens} cached={usage.cached_input_tokens} "
            f"output={usage.output_tokens} reasoning={usage.reasoning_output_tokens}")


def render_repo_usage(report: UsageReport, runs_path: Path) -> List[str]:
    if not report.runs:
        return [f"repo:   {report.root}", NO_RUNS.format(path=runs_path)]
    lines = [f"repo:   {report.root}",
             f"runs:   {len(report.runs)} ({report.runs_with_usage} with token counts)",
             f"total:  {render_tokens(report.total)}"]
    for run in report.runs:
        tokens = render_tokens(run.usage) if run.usage else "no token counts"
        lines.append(f"run {run.run_id:<4} {run.started_at or '-':<24} exit {run.exit_code}  {tokens}")
    return lines


def render_hub_usage(report: HubUsageReport) -> List[str]:
    width = max([len(e.repo_id) for e in report.repos] + [4])
    lines = [f"{e.repo_id:<{width}}  runs {len(e.report.runs):<4} {render_tokens(e.report.total)}"
             + (f"  (not counted: {e.error})" if e.error else "") for e in report.repos]
    lines.append(f"{'all':<{width}}  runs {sum(len(e.report.runs) for e in report.repos):<4} "
                 f"{render_tokens(report.total)}")
    return lines


def cmd_usage(args: argparse.Namespace) -> int:
    from car.cli import repo_config  # here, not at the top: car.cli imports this module
    from car.usage import repo_usage

    report = repo_usage(repo_config(args))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(render_repo_usage(report, RepoLayout(report.root).runs)))
    return 0


def cmd_hub_usage(args: argparse.Namespace) -> int:
    from car.usage import hub_usage

    report = hub_usage(hub_repo_roots(args))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(render_hub_usage(report)))
    return 0


def hub_repo_roots(args: argparse.Namespace) -> List[Tuple[str, Path]]:
    """(id, root) of every repo in the hub's manifest, missing ones included (they count zero)."""
    from car.cli_hub import hub_config  # here, not at the top: car.cli_hub imports this module
    from car.manifest import load_manifest

    config = hub_config(args)
    manifest = load_manifest(config.manifest_path, config.root)
    return [(entry.id, config.root / entry.path) for entry in manifest.repos]


def add_usage_command(commands: Any) -> argparse.ArgumentParser:
    """`car usage [--json]` on `commands` (car.cli's sub-parsers)."""
    about = "show tokens used per run and in total (Codex --json runs)"
    p = commands.add_parser("usage", help=about, description=about)
    p.add_argument("--repo", type=Path, default=argparse.SUPPRESS,
                   help="repo root (default: nearest .codex-autorunner/ upward from here)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_usage)
    return p


def add_hub_usage_command(hub_commands: Any) -> argparse.ArgumentParser:
    """`car hub usage [--json]` on `hub_commands` (car.cli_hub's sub-parsers)."""
    about = "show tokens used per repo and summed over the hub's repos"
    p = hub_commands.add_parser("usage", help=about, description=about)
    p.add_argument("--hub", type=Path, default=argparse.SUPPRESS, metavar="PATH",
                   help="hub root (default: nearest .codex-autorunner/ upward from here)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_hub_usage)
    return p
