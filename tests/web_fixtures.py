"""Shared by the web tests: a real server on a free loopback port, an HTTP client, an SSE reader."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from car.config import load_config
from car.runner import RepoRunner
from car.web.api_repo import one_runner, repo_routes
from car.web.server import Running, start_in_thread


@dataclass
class Reply:
    status: int
    headers: Dict[str, str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def error_code(self) -> Optional[str]:
        try:
            return self.json["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None


class Client:
    """http.client against one server, so tests control every header (Host, Origin, ...)."""

    def __init__(self, port: int, token: Optional[str] = None, host: str = "127.0.0.1") -> None:
        self.port, self.token, self.host = port, token, host

    def call(self, method: str, path: str, body: Any = None, headers: Optional[Dict[str, str]] = None,
             raw: Optional[bytes] = None, timeout: float = 20) -> Reply:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            hdrs = {"Accept": "application/json"}
            if self.token:
                hdrs["Authorization"] = f"Bearer {self.token}"
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            if data is not None:
                hdrs["Content-Type"] = "application/json"
            hdrs.update(headers or {})
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", errors="replace")
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, text)
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Reply:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return self.call("POST", path, body if body is not None else {}, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return self.call("PUT", path, body, **kw)


class SseReader:
    """One SSE client on its own socket; read events with a deadline; close() = vanish."""

    def __init__(self, port: int, path: str, headers: Optional[Dict[str, str]] = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.conn.request("GET", path, headers=headers or {})
        self.sock = self.conn.sock  # http.client drops its reference once the response says close
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.comments: List[str] = []

    def events(self, timeout: float = 10) -> Iterator[Dict[str, str]]:
        """Parsed events ({'event', 'data'}) until `timeout` passes or the stream ends."""
        deadline = time.monotonic() + timeout
        event: Dict[str, Any] = {"event": "message", "data": []}
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                raw = self.resp.fp.readline()
            except (socket.timeout, TimeoutError):
                return
            if not raw:
                return
            line = raw.decode("utf-8").rstrip("\n")
            if line == "":
                if event["data"]:
                    yield {"event": event["event"], "data": "\n".join(event["data"])}
                event = {"event": "message", "data": []}
            elif line.startswith(":"):
                self.comments.append(line)
            elif line.startswith("data:"):
                event["data"].append(line[5:].lstrip(" ") if line[5:6] == " " else line[5:])
            elif line.startswith("event:"):
                event["event"] = line[6:].strip()

    def lines_until(self, predicate: Any, timeout: float = 15) -> List[str]:
        """Log lines from message events until one satisfies `predicate` (else AssertionError)."""
        seen: List[str] = []
        for ev in self.events(timeout):
            if ev["event"] != "message":
                continue
            for line in ev["data"].split("\n"):
                seen.append(line)
                if predicate(line):
                    return seen
        raise AssertionError(f"no matching line within {timeout}s; got {seen[-10:]}")

    def at_eof(self, timeout: float = 5) -> bool:
        """True when the server ends the stream within `timeout`."""
        for _ in self.events(timeout):
            pass
        try:
            self.sock.settimeout(0.2)
            return self.resp.fp.readline() == b""
        except (socket.timeout, TimeoutError, OSError, AttributeError):
            return False

    def close(self) -> None:
        """Vanish: close the socket without reading on."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.resp.close()
        self.conn.close()


@dataclass
class Served:
    running: Running
    runner: RepoRunner
    client: Client
    log: logging.Logger

    @property
    def port(self) -> int:
        return self.running.port

    def sse(self, path: str, **kw: Any) -> SseReader:
        return SseReader(self.port, path, **kw)


class ListHandler(logging.Handler):
    """Collects formatted records (the access log in tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))  # with the traceback when there is one


def capture_logger(name: str) -> tuple:
    log = logging.getLogger(name)
    log.propagate = False
    log.setLevel(logging.DEBUG)
    handler = ListHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(handler)
    return log, handler


@contextmanager
def repo_server(root: Path, **options: Any) -> Iterator[Served]:
    """`car serve` in a thread: the repo's RepoRunner on its own executor, the server on port 0."""
    config = load_config(root / ".codex-autorunner" / "config.yml")
    executor = ThreadPoolExecutor(max_workers=1)
    runner = RepoRunner(config, executor)
    log, _ = capture_logger(f"car.test.web.{root}")
    options.setdefault("log", log)
    running = start_in_thread(repo_routes("/api", one_runner(runner)), **options)
    try:
        yield Served(running, runner, Client(running.port, running.token), options["log"])
    finally:
        running.close()
        runner.close()
        executor.shutdown(wait=True)


# the hub ---------------------------------------------------------------------------------
def write_hub_config(root: Path, **hub: Any) -> Path:
    """A hub root's .codex-autorunner/config.yml (mode: hub) with `hub:` settings overridden."""
    from car.config import default_data
    from car.files import write_yaml

    data = default_data("hub")
    data["hub"].update(hub)
    path = root / ".codex-autorunner" / "config.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_yaml(path, data)
    return path


@dataclass
class HubServed:
    hub: Any
    running: Running
    client: Client

    @property
    def port(self) -> int:
        return self.running.port

    def sse(self, path: str, **kw: Any) -> SseReader:
        return SseReader(self.port, path, **kw)

    def entry(self, repo_id: str) -> Dict[str, Any]:
        repos = self.client.get("/hub/repos").json["repos"]
        return next(r for r in repos if r["id"] == repo_id)


@contextmanager
def hub_server(root: Path, poll_seconds: float = 0.5, **options: Any) -> Iterator[HubServed]:
    """`car hub serve` in a thread: HubSupervisor started (lock, scan), the server on port 0."""
    from car.hub import HubSupervisor
    from car.layout import HubLayout
    from car.web.api_hub import hub_routes

    hub = HubSupervisor(load_config(root / ".codex-autorunner" / "config.yml"), poll_seconds=poll_seconds)
    hub.start()
    try:
        if options.get("allow_remote"):
            options.setdefault("token_path", HubLayout(root).token)
        running = start_in_thread(hub_routes(hub), log=hub.log, **options)
        try:
            yield HubServed(hub, running, Client(running.port, running.token))
        finally:
            running.close()
    finally:
        hub.shutdown()


def serve_cmd(*args: str) -> List[str]:
    """`python -m car serve ...` as a subprocess command line."""
    from support import car_cmd

    return car_cmd("serve", *args)


@dataclass
class ServeProcess:
    proc: subprocess.Popen
    client: Client
    lines: List[str]  # what it printed up to and including its URL


@contextmanager
def serve_process(cwd: Path, *args: str) -> Iterator[ServeProcess]:
    """`car serve --port 0 [args]` in `cwd` as a subprocess, once it printed its URL; its client
    speaks to that URL; killed if still alive."""
    from urllib.parse import urlsplit

    from support import car_env

    proc = subprocess.Popen(serve_cmd("--port", "0", *args), cwd=cwd, env=car_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        lines: List[str] = []
        while not lines or "serving http://" not in lines[-1]:
            line = proc.stdout.readline()
            if not line:
                pytest.fail("car serve printed no URL: " + "".join(lines) + proc.stderr.read()[-3000:])
            lines.append(line)
        url = urlsplit(lines[-1].split("serving ", 1)[1].strip())
        yield ServeProcess(proc, Client(url.port, host=url.hostname), lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def make_sample_hub(root: Path, alpha_items: tuple = ("one", "two")) -> Path:
    """alpha idle, beta idle after a loop that ended in error, gamma uninitialized (a git repo,
    no init), delta missing from disk; all four in the manifest."""
    import yaml

    from car.layout import RepoLayout
    from car.state import RepoState, save_state

    from support import make_git_repo, make_repo

    root.mkdir()
    write_hub_config(root, auto_init_missing=False)
    make_repo(root / "alpha", items=alpha_items)
    make_repo(root / "beta")
    save_state(RepoLayout(root / "beta").state, RepoState(status="error", stop_reason="agent_failed"))
    make_git_repo(root / "gamma")
    (root / ".codex-autorunner" / "manifest.yml").write_text(yaml.safe_dump({"version": 1, "repos": [
        {"id": name, "path": name, "enabled": True, "auto_run": False}
        for name in ("alpha", "beta", "gamma", "delta")]}))
    return root
