"""car.usage (tokens per run from runs.jsonl, per repo and per hub) and `car usage` output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from car.cli_usage import add_hub_usage_command, add_usage_command, render_repo_usage
from car.codex_events import TokenUsage
from car.files import append_jsonl
from car.layout import RepoLayout
from car.usage import hub_usage, load_usage, parse_runs

U1 = {"input_tokens": 1000, "cached_input_tokens": 200, "output_tokens": 50, "reasoning_output_tokens": 10}
U2 = {"input_tokens": 3, "cached_input_tokens": 0, "output_tokens": 4, "reasoning_output_tokens": 0}


def write_runs(root: Path, *records: dict) -> Path:
    RepoLayout(root).dir.mkdir(parents=True, exist_ok=True)
    for record in records:
        append_jsonl(RepoLayout(root).runs, record)
    return root


def test_parse_runs_is_lenient() -> None:
    runs = parse_runs([{"id": 1, "usage": U1, "exit_code": 0, "started_at": "t1"},
                       {"id": 2, "usage": None, "exit_code": 1},    # a raw agent: no tokens
                       {"id": "3", "usage": U1}, "junk", None,     # skipped
                       {"id": 4, "usage": {"input_tokens": "many", "output_tokens": 7}}])
    assert [r.run_id for r in runs] == [1, 2, 4]
    assert runs[0].usage == TokenUsage(1000, 200, 50, 10) and runs[0].started_at == "t1"
    assert runs[1].usage is None and runs[1].exit_code == 1
    assert runs[2].usage == TokenUsage(0, 0, 7, 0)


def test_load_usage_sums_runs(tmp_path: Path) -> None:
    root = write_runs(tmp_path, {"id": 1, "usage": U1}, {"id": 2, "usage": None}, {"id": 3, "usage": U2})
    RepoLayout(root).runs.write_text(RepoLayout(root).runs.read_text() + '{"id": 4, "usa')  # torn
    report = load_usage(root)
    assert report.total == TokenUsage(1003, 200, 54, 10)
    data = report.to_json()
    assert data == {"repo": str(root), "run_count": 3, "runs_with_usage": 2,
                    "total": {"input_tokens": 1003, "cached_input_tokens": 200, "output_tokens": 54,
                              "reasoning_output_tokens": 10},
                    "runs": [{"run_id": 1, "started_at": None, "finished_at": None, "exit_code": None,
                              "usage": U1},
                             {"run_id": 2, "started_at": None, "finished_at": None, "exit_code": None,
                              "usage": None},
                             {"run_id": 3, "started_at": None, "finished_at": None, "exit_code": None,
                              "usage": U2}]}
    json.dumps(data)


def test_no_runs_file_is_zero(tmp_path: Path) -> None:
    report = load_usage(tmp_path)
    assert report.runs == () and report.total == TokenUsage()
    assert render_repo_usage(report, RepoLayout(tmp_path).runs)[-1].startswith("no runs recorded yet")


def test_hub_usage_sums_repos(tmp_path: Path) -> None:
    a = write_runs(tmp_path / "a", {"id": 1, "usage": U1}, {"id": 2, "usage": U1})
    b = write_runs(tmp_path / "b", {"id": 1, "usage": U2})
    report = hub_usage([("a", a), ("b", b), ("gone", tmp_path / "gone")])
    data = report.to_json()
    assert [(r["id"], r["run_count"], r["total"]["input_tokens"]) for r in data["repos"]] == \
        [("a", 2, 2000), ("b", 1, 3), ("gone", 0, 0)]
    assert data["total"] == {"input_tokens": 2003, "cached_input_tokens": 400, "output_tokens": 104,
                             "reasoning_output_tokens": 20}
    assert (data["run_count"], data["runs_with_usage"]) == (3, 3)
    assert "runs" not in data["repos"][0]  # per-run lists only in the repo report


def test_usage_commands_parse(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="car")
    parser.add_argument("--repo", type=Path, default=None)
    commands = parser.add_subparsers(dest="command")
    add_usage_command(commands)
    hub = commands.add_parser("hub").add_subparsers(dest="hub_command")
    add_hub_usage_command(hub)
    args = parser.parse_args(["usage", "--json", "--repo", str(tmp_path)])
    assert (args.json, args.repo, args.func.__name__) == (True, tmp_path, "cmd_usage")
    args = parser.parse_args(["hub", "usage"])
    assert (args.json, args.func.__name__) == (False, "cmd_hub_usage")


def test_usage_command_text(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from support import make_repo

    repo = write_runs(make_repo(tmp_path / "repo"), {"id": 1, "usage": U1, "exit_code": 0,
                                                      "started_at": "2026-01-01T00:00:00.000Z"})
    parser = argparse.ArgumentParser(prog="car")
    parser.add_argument("--repo", type=Path, default=None)
    add_usage_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["usage", "--repo", str(repo)])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == ["runs:   1 (1 with token counts)",
                       "total:  input=1000 cached=200 output=50 reasoning=10",
                       "run 1    2026-01-01T00:00:00.000Z exit 0  input=1000 cached=200 output=50 reasoning=10"]
