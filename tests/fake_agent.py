#!/usr/bin/env python3
"""A stand-in for a coding agent: reads the prompt on stdin, ticks one TODO item, prints lines.

Behaviour comes from environment variables (the tests set them; the child inherits them):
FAKE_AGENT_MODE  ok (default) | noop | fail | hang | slow | flood | blocked | silent
FAKE_AGENT_SLEEP seconds per line (slow) or before finishing (ok)
FAKE_AGENT_WAIT_FOR  (ok) finish only once this file exists (at most 60 s): the test says when
FAKE_AGENT_LINES how many lines (slow, flood)
FAKE_AGENT_EXIT  exit code for fail (default 3)
FAKE_AGENT_PIDFILE  append this process's pid (and, in hang mode, its child's) to this file
FAKE_AGENT_PROMPT_OUT  write the prompt it read to this file
FAKE_AGENT_IGNORE_INT  ignore SIGINT (so ending it needs SIGTERM)
"""

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

env = os.environ.get
mode = env("FAKE_AGENT_MODE", "ok")
if env("FAKE_AGENT_IGNORE_INT"):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
prompt = sys.stdin.read()
if env("FAKE_AGENT_PROMPT_OUT"):
    pathlib.Path(env("FAKE_AGENT_PROMPT_OUT")).write_text(prompt)
pidfile = env("FAKE_AGENT_PIDFILE")


def record_pid(pid):
    if pidfile:
        with open(pidfile, "a") as fh:
            fh.write(f"{pid}\n")


record_pid(os.getpid())
print(f"fake-agent: read {len(prompt)} chars of prompt", flush=True)
sleep = float(env("FAKE_AGENT_SLEEP", "0"))
lines = int(env("FAKE_AGENT_LINES", "5"))

if mode == "hang":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    record_pid(child.pid)
    print(f"fake-agent: started child {child.pid}, now hanging", flush=True)
    time.sleep(300)
elif mode == "silent":
    time.sleep(300)
elif mode == "slow":
    for i in range(lines):
        print(f"fake-agent: working {i}", flush=True)
        time.sleep(sleep)
elif mode == "flood":
    for i in range(lines):
        print(f"fake-agent: line {i} " + "x" * 200)
    sys.stdout.flush()
elif mode == "fail":
    print("fake-agent: error: the build is broken", flush=True)
    sys.exit(int(env("FAKE_AGENT_EXIT", "3")))
elif mode == "blocked":
    print("BLOCKED: I need the API key for the staging server", flush=True)
    sys.exit(0)
elif mode == "noop":
    print("fake-agent: nothing to do", flush=True)
    sys.exit(0)
else:
    time.sleep(sleep)
    go = env("FAKE_AGENT_WAIT_FOR")
    deadline = time.monotonic() + 60  # a test that never says go fails; it does not hang
    while go and not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.02)

todo = pathlib.Path(".codex-autorunner/TODO.md")
text = todo.read_text()
item = re.search(r"^(\s*[-*] )\[ \] (.*)$", text, re.M)
if item:
    todo.write_text(text[: item.start()] + f"{item.group(1)}[x] {item.group(2)}" + text[item.end():])
    with open(".codex-autorunner/PROGRESS.md", "a") as fh:
        fh.write(f"- did: {item.group(2)}\n")
    pathlib.Path("work.txt").open("a").write(f"{item.group(2)}\n")
    print(f"fake-agent: checked off '{item.group(2)}'", flush=True)
else:
    print("fake-agent: no open item", flush=True)
