"""Tests of car.codex_events, pure and (at the end) through `car once`; the event lines were captured from
the real codex 0.169.0."""

from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path

import pytest

from car.codex_events import (
    MAX_LINE_CHARS,
    CodexReader,
    OutputReader,
    TokenUsage,
    display_command,
    make_reader,
)
from car.files import read_jsonl
from car.layout import RepoLayout
from car.logs import run_output

from support import make_repo, run_car, update_config

WARNING = ('{"type":"item.completed","item":{"id":"item_0","type":"error","message":"Model '
           'metadata for `mock-model` not found. Defaulting to fallback metadata; this can degrade '
           'performance and cause issues."}}')
HAPPY = [
    '{"type":"thread.started","thread_id":"01a20dda-bddd-7a82-938e-66da1ae57561"}',
    WARNING,
    '{"type":"turn.started"}',
    '{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"/bin/bash -lc \\"sed -i \'0,/- \\\\\\\\[ \\\\\\\\]/s//- [x]/\' TODO.md && echo ok\\"","aggregated_output":"","exit_code":null,"status":"in_progress"}}',  # noqa: E501
    '{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"/bin/bash -lc \\"sed -i \'0,/- \\\\\\\\[ \\\\\\\\]/s//- [x]/\' TODO.md && echo ok\\"","aggregated_output":"ok\\n","exit_code":0,"status":"completed"}}',  # noqa: E501
    '{"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"Done.\\nTicked one."}}',
    '{"type":"turn.completed","usage":{"input_tokens":1500,"cached_input_tokens":400,"cache_write_input_tokens":0,"output_tokens":100,"reasoning_output_tokens":20}}',
]
FAILED_COMMAND = [
    '{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"/bin/bash -lc \'echo héllo; for i in 1 2 3 4 5 6 7 8 9; do echo line$i; done; exit 2\'","aggregated_output":"","exit_code":null,"status":"in_progress"}}',  # noqa: E501
    '{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"/bin/bash -lc \'echo héllo; for i in 1 2 3 4 5 6 7 8 9; do echo line$i; done; exit 2\'","aggregated_output":"héllo\\nline1\\nline2\\nline3\\nline4\\nline5\\nline6\\nline7\\nline8\\nline9\\n","exit_code":2,"status":"failed"}}',  # noqa: E501
    '{"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"it failed ✗"}}',
]
HTTP_500 = [
    '{"type":"thread.started","thread_id":"01a20dda-ddd8-7572-858a-320f591fdcfa"}',
    WARNING,
    '{"type":"turn.started"}',
    '{"type":"error","message":"We’re currently experiencing high demand, which may cause temporary errors."}',
    '{"type":"turn.failed","error":{"message":"We’re currently experiencing high demand, which may cause temporary errors."}}',  # noqa: E501
]
HIGH_DEMAND = "We’re currently experiencing high demand, which may cause temporary errors."


def feed_all(reader: OutputReader, lines: list[str]) -> list[str]:
    return [text for line in lines for text in reader.feed(line + "\n")]


def test_happy_path_reads_as_a_log() -> None:
    reader = make_reader()
    assert feed_all(reader, HAPPY) == [
        "codex thread 01a20dda-bddd-7a82-938e-66da1ae57561",
        "warning: Model metadata for `mock-model` not found. Defaulting to fallback metadata; "
        "this can degrade performance and cause issues.",
        "$ sed -i '0,/- \\[ \\]/s//- [x]/' TODO.md && echo ok",
        "✓ exit 0: sed -i '0,/- \\[ \\]/s//- [x]/' TODO.md && echo ok",
        "  ok",
        "agent: Done.",
        "agent: Ticked one.",
        "tokens: input=1500 cached=400 output=100 reasoning=20",
    ]
    assert reader.final_message == "Done.\nTicked one."
    assert reader.usage == TokenUsage(1500, 400, 100, 20)
    assert reader.failure is None  # the model-metadata warning is harmless


def test_failed_command_shows_exit_code_and_output_tail() -> None:
    reader = CodexReader()
    assert feed_all(reader, FAILED_COMMAND) == [
        "$ echo héllo; for i in 1 2 3 4 5 6 7 8 9; do echo line$i; done; exit 2",
        "✗ exit 2: echo héllo; for i in 1 2 3 4 5 6 7 8 9; do echo line$i; done; exit 2",
        "  … 5 more lines",
        "  line5", "  line6", "  line7", "  line8", "  line9",
        "agent: it failed ✗",
    ]
    assert reader.failure is None  # a failed tool command is the model's business
    assert reader.usage is None  # no turn.completed seen


def test_http_500_sets_failure() -> None:
    reader = make_reader()
    lines = feed_all(reader, HTTP_500)
    assert lines[-2:] == [f"error: {HIGH_DEMAND}", f"turn failed: {HIGH_DEMAND}"]
    assert reader.failure == HIGH_DEMAND
    assert reader.final_message is None and reader.usage is None


def test_harmless_error_event_is_not_a_failure_but_others_are() -> None:
    reader = CodexReader()
    harmless = json.loads(WARNING)["item"]["message"]
    assert reader.feed(json.dumps({"type": "error", "message": harmless})) == [f"error: {harmless}"]
    assert reader.failure is None
    reader.feed('{"type":"error","message":"stream disconnected before completion: x"}')
    assert reader.failure == "stream disconnected before completion: x"
    reader.feed('{"type":"turn.failed","error":{}}')
    assert reader.failure == "(no message)"  # still truthy


def test_usage_is_summed_over_turns() -> None:
    reader = CodexReader()
    turn = {"type": "turn.completed", "usage": {"input_tokens": 10, "cached_input_tokens": 2,
                                                "output_tokens": 3, "reasoning_output_tokens": 1}}
    assert reader.feed(json.dumps(turn)) == ["tokens: input=10 cached=2 output=3 reasoning=1"]
    reader.feed(json.dumps(turn))
    assert reader.usage is not None
    assert reader.usage.to_json() == {"input_tokens": 20, "cached_input_tokens": 4,
                                      "output_tokens": 6, "reasoning_output_tokens": 2}


def test_token_usage_add() -> None:
    total = TokenUsage()
    total.add(TokenUsage(1, 2, 3, 4))
    total.add(TokenUsage(input_tokens=10))
    assert total == TokenUsage(11, 2, 3, 4)


def test_raw_agent_output_stays_raw() -> None:
    reader = make_reader()
    assert reader.feed("fake-agent: 12 chars of prompt\n") == ["fake-agent: 12 chars of prompt"]
    assert reader.feed('{"progress": 1}') == ['{"progress": 1}']  # first JSON line decides
    assert reader.feed(HAPPY[0]) == [HAPPY[0]]  # raw stays raw
    assert (reader.final_message, reader.usage, reader.failure) == (None, None, None)


STDERR = ('WARNING: proceeding, even though we could not create PATH aliases: Refusing to create helper '
          'binaries under temporary dir "/tmp"')


def test_many_stderr_lines_before_the_first_event_do_not_decide() -> None:
    """QA: after 20 text lines (Codex's merged stderr: warnings, a RUST_LOG trace) the run read as raw
    output: raw JSON in the log, no usage, no final message, and its turn.failed went unnoticed."""
    stderr = [STDERR, "{not json: a trace line", *(f"2026-01-01T00:00:00Z DEBUG codex_core: step {i}"
                                                    for i in range(500))]
    reader = make_reader()
    assert feed_all(reader, stderr) == stderr
    assert feed_all(reader, HAPPY)[0] == "codex thread 01a20dda-bddd-7a82-938e-66da1ae57561"
    assert (reader.final_message, reader.usage) == ("Done.\nTicked one.", TokenUsage(1500, 400, 100, 20))
    failed = make_reader()
    feed_all(failed, stderr + HTTP_500)
    assert failed.failure == HIGH_DEMAND


def test_text_before_the_first_event_is_not_kept() -> None:
    """Text never decides, so the sniffer sees all of a raw agent's output: it must hold none of it."""
    reader = make_reader()
    line = "x" * 1000 + "\n"
    tracemalloc.start()
    try:
        for _ in range(20_000):  # 20 MB of text
            reader.feed(line)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 1_000_000
    assert (reader.final_message, reader.usage, reader.failure) == (None, None, None)


def test_an_error_event_first_is_codex_failing_before_its_thread() -> None:
    reader = make_reader()
    assert feed_all(reader, [STDERR, '{"type":"error","message":"unexpected status 401 Unauthorized"}']) == [
        STDERR, "error: unexpected status 401 Unauthorized"]
    assert reader.failure == "unexpected status 401 Unauthorized"


@pytest.mark.parametrize("first", [
    HTTP_500[-1],  # {"type":"turn.failed",...}
    '{"type":"turn.completed","usage":{"input_tokens":5}}',
    '{"type":"item.completed","item":{"type":"agent_message","text":"hi"}}',
    '{"type":"turn.started"}',
    '{"progress": 1}',
])
def test_a_first_json_line_that_cannot_open_a_codex_stream_is_raw_output(first: str) -> None:
    """QA: an agent of its own whose first JSON line was {"type":"turn.failed",...} ended the loop
    agent_failed although it exited 0: only thread.started or error opens a `codex exec --json` stream."""
    reader = make_reader()
    later = [HTTP_500[-2], HTTP_500[-1], HAPPY[-1]]
    assert feed_all(reader, ["starting", first, *later]) == ["starting", first, *later]
    assert (reader.final_message, reader.usage, reader.failure) == (None, None, None)


def test_stderr_lines_before_the_first_event_do_not_decide() -> None:
    reader = make_reader()
    assert reader.feed("\n") == [""]
    assert reader.feed(STDERR + "\n") == [STDERR]
    feed_all(reader, HAPPY)
    assert reader.final_message == "Done.\nTicked one."


def test_non_json_line_inside_codex_stream_passes_through() -> None:
    reader = make_reader()
    reader.feed(HAPPY[0])
    assert reader.feed("Reading prompt from stdin...\n") == ["Reading prompt from stdin..."]
    assert reader.feed('{"not":"an event"}') == ['{"not":"an event"}']
    assert reader.feed("   \n") == []


@pytest.mark.parametrize("line", [
    '{"type":"item.completed","item":5}',
    '{"type":"item.completed","item":{"type":"command_execution","exit_code":"x",'
    '"aggregated_output":5,"command":["a"]}}',
    '{"type":"item.completed","item":{"type":"agent_message","text":null}}',
    '{"type":"item.completed","item":{"type":"file_change","changes":"nope"}}',
    '{"type":"item.updated","item":{"type":"todo_list","items":[1,{"text":2}]}}',
    '{"type":"turn.completed","usage":"lots"}',
    '{"type":"turn.failed","error":null}',
    '{"type":"error"}',
    '{"type":5}', "[1,2]", "null", '{"type":"item.completed","item":{"ty',
    "\x00\udcff garbage \u2603", '{"type":"thread.started","thread_id":{"a":1}}',
])
def test_malformed_input_never_raises(line: str) -> None:
    reader = make_reader()
    reader.feed(HAPPY[0])
    lines = reader.feed(line)
    assert all(isinstance(text, str) for text in lines)


def test_long_lines_are_clipped() -> None:
    item = {"type": "command_execution", "command": "x" * 1000, "exit_code": 0,
            "aggregated_output": "y" * 1000}
    lines = CodexReader().feed(json.dumps({"type": "item.completed", "item": item}))
    assert [len(text) for text in lines] == [MAX_LINE_CHARS, MAX_LINE_CHARS]


def test_other_items() -> None:
    reader = CodexReader()
    plan = {"type": "item.updated", "item": {"id": "item_3", "type": "todo_list", "items": [
        {"text": "read", "completed": True}, {"text": "write", "completed": False}]}}
    assert reader.feed(json.dumps(plan)) == ["plan:", "  [x] read", "  [ ] write"]
    assert reader.feed(json.dumps(plan)) == []  # unchanged: not repeated
    change = {"type": "item.completed", "item": {"type": "file_change", "status": "completed",
                                                 "changes": [{"path": "a.py", "kind": "add"}]}}
    assert reader.feed(json.dumps(change)) == ["file add: a.py"]
    novel = {"type": "item.completed", "item": {"type": "collab_tool_call"}}
    assert reader.feed(json.dumps(novel)) == ["item collab_tool_call"]
    killed = {"type": "item.completed", "item": {"type": "command_execution", "command": "sleep 9",
                                                 "exit_code": None, "status": "declined"}}
    assert reader.feed(json.dumps(killed)) == ["✗ declined: sleep 9"]


@pytest.mark.parametrize(("command", "shown"), [
    ("/bin/bash -lc 'ls -la'", "ls -la"),
    ('bash -c "echo \\"hi\\""', 'echo "hi"'),
    ("/bin/bash -lc 'cat <<EOF\na\nb\nEOF'", "cat <<EOF … (+3 lines)"),
    ("python3 -V", "python3 -V"),
    ("unbalanced 'quote", "unbalanced 'quote"),
])
def test_display_command(command: str, shown: str) -> None:
    assert display_command(command) == shown


def agent_message(text: str) -> str:
    return json.dumps({"type": "item.completed", "item": {"id": "m", "type": "agent_message", "text": text}})


@pytest.mark.parametrize("lines, blocked", [
    (["working", "BLOCKED: need the staging key"], True),  # a raw agent
    (["  BLOCKED: indented still counts"], True),
    (["the word BLOCKED: inside a sentence does not"], False),
    (['{"type":"thread.started","thread_id":"t"}', agent_message("Done part one.\nBLOCKED: which DB?")], True),
    (['{"type":"thread.started","thread_id":"t"}', agent_message("All done, nothing BLOCKED: here")], False),
    (["BLOCKED: said before the first event", '{"type":"thread.started","thread_id":"t"}'], True),
    ([*(f"stderr {i}" for i in range(30)), "BLOCKED: after many lines", '{"type":"thread.started","thread_id":"t"}',
      agent_message("fine")], True),
    ([*(f"stderr {i}" for i in range(30)), '{"type":"thread.started","thread_id":"t"}',
      agent_message("BLOCKED: after many lines")], True),
    (['{"type":"turn.failed","error":{"message":"x"}}', "BLOCKED: a raw agent after JSON of its own"], True),
    (['{"type":"turn.failed","error":{"message":"x"}}', agent_message("BLOCKED: not Codex: not read")], False),
])
def test_a_blocked_line_from_the_agent_is_noticed(lines: list, blocked: bool) -> None:
    reader = make_reader()
    feed_all(reader, lines)
    assert reader.blocked is blocked


# through `car once`, as a user meets them: a fake agent script prints the lines -----------------------
def car_once_with(tmp_path: Path, script: str) -> tuple:
    """`car once` in a fresh repo whose agent is this Python script; (its end line, the run's log, runs.jsonl)."""
    repo = make_repo(tmp_path / "repo", items=["first", "second"])
    agent = tmp_path / "agent.py"
    agent.write_text("import json, sys\nsys.stdin.read()\n" + script)
    update_config(repo, codex={"binary": sys.executable, "args": [str(agent)]})
    done = run_car("once", cwd=repo)
    assert done.returncode == 0, done.stdout + done.stderr
    end = next(line for line in done.stdout.splitlines() if line.startswith("car: loop ended:"))
    log = run_output(repo / ".codex-autorunner" / "codex-autorunner.log", 3, 1).splitlines()
    return end, log, read_jsonl(RepoLayout(repo).runs)


def test_car_reads_codex_events_after_many_stderr_lines(tmp_path: Path) -> None:
    """QA: 20+ stderr lines first (merged into stdout), and car logged raw JSON and recorded no usage."""
    end, log, runs = car_once_with(tmp_path, f"""
for i in range(40):
    print(f"WARNING: codex warns on stderr {{i}}", file=sys.stderr, flush=True)
for line in {HAPPY!r}:
    print(line, flush=True)
""")
    assert end.startswith("car: loop ended: stop_after_runs (last run 1, exit code 0,")
    assert "codex thread 01a20dda-bddd-7a82-938e-66da1ae57561" in log and "agent: Ticked one." in log
    assert not any(line.startswith("{") for line in log)
    assert (runs[-1]["usage"], runs[-1]["output"]) == (TokenUsage(1500, 400, 100, 20).to_json(), "Done.\nTicked one.")


def test_car_does_not_fail_an_agent_whose_own_first_json_says_turn_failed(tmp_path: Path) -> None:
    """QA: an agent of its own that exited 0 ended the loop agent_failed over its first JSON line."""
    own = json.dumps({"type": "turn.failed", "error": {"message": "one flaky test, retried: passed"}})
    end, log, runs = car_once_with(tmp_path, f"print({own!r})\n")
    assert end.startswith("car: loop ended: stop_after_runs (last run 1, exit code 0,")
    assert own in log and not any("the agent failed" in line for line in log)  # raw, as it said it
    assert runs[-1]["end_reason"] is None  # the run itself ended nothing
