"""Docs at their edges: `<!--` that is not a comment, UTF-16 docs, and saves that keep a file's bytes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from car.docs import parse_todos

from support import PROJECT, run_car
from web_fixtures import Served, repo_server

TODO_PATH = Path(".codex-autorunner") / "TODO.md"


@pytest.fixture
def served(repo: Path) -> Iterator[Served]:
    with repo_server(repo) as s:
        yield s


def todo_of(repo: Path) -> Path:
    return repo / TODO_PATH


# 1. `<!--` hides items only where CommonMark makes it a comment ---------------------------------
QA_TODO = ("- [ ] strip the `<!--` comment markers from the README\n- [ ] second real item\n"
           "- [ ] third real item\n")


@pytest.mark.parametrize("text, done, outstanding", [
    (QA_TODO, 0, 3),  # QA: in backticks, mid-line, unclosed: text
    ("- [ ] one\n```html\n<!-- template start\n<div>\n```\n- [ ] two\n- [ ] three\n", 0, 3),  # in a fence: text
    ("Comments start with <!-- and end later\n- [ ] a\n- [x] b\n", 1, 1),  # mid-line in prose: text
    ("Some text\n    <!-- four spaces in: not a block\n- [ ] a\n", 0, 1),
    ("<!-->\n- [ ] a\n", 0, 1),  # `<!-->` is a whole comment (CommonMark 0.31)
    ("```bash``` is inline code, not a fence\n- [ ] a\n", 0, 1),
    ("- [ ] a <!-- an inline note --> b\n- [ ] c <!-- unclosed on an item line\n- [ ] d\n", 0, 3),
    # real comment blocks still hide their example items
    ("- [ ] real\n<!-- example:\n- [ ] ex1\n- [x] ex2\n-->\n- [x] done\n", 1, 1),
    ("   <!-- three spaces in is still a block\n- [ ] hidden\n-->\n- [ ] shown\n", 0, 1),
    # an item after `-->` on its line is counted (CommonMark would make it raw HTML): a missed one ends the loop
    ("<!-- a\n- [ ] hidden\n--> - [ ] after the close\n- [ ] shown\n", 0, 2),
    ("<!-- note --> - [x] after a one-line comment\n<!--> * [ ] b\n", 1, 1),
    ("<!--\n- [ ] an unclosed block runs to the end (CommonMark)\n- [ ] hidden\n", 0, 0),
    ("<!--\n```\n-->\n- [ ] a fence inside a comment opens nothing\n", 0, 1),
    ("<!--\r\n- [ ] hidden\r\n-->\r\n- [ ] shown\r\n", 0, 1),
    # blocks inside list items: indented under the item, and ending with it
    ("- [ ] parent\n  <!--\n  - [ ] hidden\n  -->\n- [ ] next\n", 0, 2),
    ("- [ ] parent\n    - [ ] child\n    <!--\n    - [ ] hidden\n    -->\n", 0, 2),
    ("- [ ] a\n  <!-- unclosed inside the item\n- [ ] b: a new item ends it\n", 0, 2),
    ("- <!-- an item whose content is a comment\n  - [ ] hidden\n  -->\n- [ ] shown\n", 0, 1),
    ("- [ ] a\nlazy text -->\n\n  <!-- in item a, after its lazy line\n* [ ] c\n", 0, 2),
    # fences follow the same rules: inside an item they end with it, and only a bare fence closes one
    ("- [ ] a\n  ```\n- [ ] b: an unclosed fence in item a ends with it\n", 0, 2),
    ("```\n```python\n```\n- [ ] after the real closing fence\n", 0, 1),
    ("```\n    ```\n```\n- [ ] after the real closing fence\n", 0, 1),
    ("- ```\n  - [ ] code in the item's fence\n- [ ] b\n", 0, 1),
])
def test_only_commonmark_comments_hide_items(text: str, done: int, outstanding: int) -> None:
    counts = parse_todos(text)
    assert (counts.done, counts.outstanding) == (done, outstanding)


def test_the_starter_todo_still_counts_its_one_item(tmp_path: Path) -> None:
    from car.bootstrap import STARTER_DOCS
    from car.docs import DocKind

    assert parse_todos(STARTER_DOCS[DocKind.TODO]).outstanding == 1


def test_a_10_mb_todo_of_unclosed_comment_starts_is_counted_in_seconds() -> None:
    """The old regex read from each unclosed `<!--` to the end of the text: hours for 10 MB."""
    script = textwrap.dedent("""\
        import sys, time
        sys.path.insert(0, sys.argv[1])
        from car.docs import parse_todos
        text = "- [ ] strip `<!--` here\\n" * 420_000 + "```\\n" + "- [ ] in a fence\\n" * 10
        started = time.perf_counter()
        counts = parse_todos(text)
        print(len(text), counts.outstanding, time.perf_counter() - started)
        """)
    try:  # a child, so the old code's hours end at the timeout (run() kills it)
        done = subprocess.run([sys.executable, "-c", script, str(PROJECT)], capture_output=True, text=True,
                              timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("parse_todos took over 20 s on a 10 MB TODO")
    size, outstanding, seconds = done.stdout.split()
    assert int(size) > 10_000_000 and int(outstanding) == 420_000, done.stderr
    assert float(seconds) < 10


def test_car_status_and_run_see_every_item_after_a_mid_line_comment_start(repo: Path) -> None:
    """QA: `car status` said 0/1 and `car run` ended todo_done with two items unchecked."""
    todo_of(repo).write_text(QA_TODO)
    status = json.loads(run_car("status", "--json", cwd=repo).stdout)
    assert (status["done_todos"], status["outstanding_todos"]) == (0, 3)
    done = run_car("run", cwd=repo)
    assert done.returncode == 0, done.stderr
    text = todo_of(repo).read_text()
    assert "- [ ]" not in text and text.count("- [x]") == 3, text
    state = json.loads(run_car("status", "--json", cwd=repo).stdout)
    assert state["stop_reason"] == "todo_done" and state["last_run_id"] == 3
