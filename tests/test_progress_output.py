"""QA: an agent whose only output for a while is a progress bar redrawn with \\r (no line end) was
ended as idle, though it printed all along: its line was not done, so nothing reached the loop."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from car.layout import RepoLayout

from support import make_repo, run_car, update_config

# redraws one line for ~5 s, ending it only at the finish, as a progress bar does
PROGRESS = """\
import sys, time
for i in range(20):
    sys.stdout.write(f"\\\\rprogress {i}/20")
    sys.stdout.flush()
    time.sleep(0.25)
print("\\\\rprogress done")
"""


def test_a_progress_bar_redrawn_with_carriage_returns_is_not_idle(tmp_path: Path) -> None:
    script = tmp_path / "progress.py"
    script.write_text(PROGRESS)
    repo = make_repo(tmp_path / "repo", items=("never ticked",))
    update_config(repo, codex={"binary": sys.executable, "args": [str(script)]},
                  runner={"idle_timeout_seconds": 2.5, "kill_grace_seconds": 1})
    done = run_car("once", cwd=repo, timeout=60)
    state = json.loads(RepoLayout(repo).state.read_text())
    assert state["stop_reason"] == "stop_after_runs" and state["last_exit_code"] == 0, done.stdout + done.stderr
    shown = run_car("log", "--run", "1", cwd=repo).stdout
    # the log shows a \r inside a line as the two characters \ and r
    assert "idle" not in shown and "progress 19/20\\rprogress done" in shown, shown


def test_an_agent_silent_past_the_idle_limit_is_still_ended(tmp_path: Path) -> None:
    """The same limit, an agent that prints nothing at all: ended as idle (PART is output, not time)."""
    script = tmp_path / "silent.py"
    script.write_text("import time\ntime.sleep(30)\n")
    repo = make_repo(tmp_path / "repo", items=("never ticked",))
    update_config(repo, codex={"binary": sys.executable, "args": [str(script)]},
                  runner={"idle_timeout_seconds": 1.5, "kill_grace_seconds": 1})
    run_car("once", cwd=repo, timeout=60)
    assert json.loads(RepoLayout(repo).state.read_text())["stop_reason"] == "idle_timeout"
