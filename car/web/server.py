"""The server: make it, run it on a thread, stop it on SIGINT/SIGTERM; the page; the token."""

from __future__ import annotations

import importlib.resources
import logging
import os
import re
import secrets
import socket
import socketserver
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, List, Optional

import car
from car.config import BASE_PATH
from car.errors import CarError, NotFound, UsageError
from car.files import write_atomic
from car.layout import HubLayout, RepoLayout
from car.service_log import close_logger, make_logger
from car.signals import on_stop_signals
from car.web.api_hub import hub_routes
from car.web.api_repo import one_runner, repo_routes
from car.web.handler import App, Handler, host_names, is_loopback, url_netloc
from car.web.router import Route
from car.web.sse import Streams

REMOTE_NEEDS_OPT_IN = ("--host {host} is not a loopback address: the API runs an agent with full "
                       "access to this machine, so listening there needs --allow-remote (which also "
                       "turns on token auth)")
CANNOT_LISTEN = "cannot listen on {host}:{port} ({reason}); pick another --port or stop the other server"


def load_page() -> bytes:
    """ui/index.html: inside the package in car.pyz (build.py copies it to car/web/index.html)."""
    try:
        bundled = importlib.resources.files("car").joinpath("web/index.html")
        if bundled.is_file():
            return bundled.read_bytes()
    except (OSError, ModuleNotFoundError):
        pass
    # A checkout has no car/web/index.html: the page lives once, in ui/ beside the package.
    checkout = Path(car.__file__).resolve().parent.parent / "ui" / "index.html"
    try:
        return checkout.read_bytes()
    except FileNotFoundError:
        raise NotFound("the web page is not bundled in this build (no car/web/index.html); "
                       "the API still works") from None


def check_bind(host: str, allow_remote: bool) -> None:
    if not allow_remote and not is_loopback(host):
        raise UsageError(REMOTE_NEEDS_OPT_IN.format(host=host))


def normalize_base_path(base_path: str) -> str:
    """'car/' -> '/car'; '' and '/' -> ''. The rule is the config's, which checks server.base_path at load."""
    pattern, expected = BASE_PATH
    if not re.fullmatch(pattern, base_path or ""):
        raise UsageError(f"--base-path '{base_path}': expected {expected}")
    base = "/" + (base_path or "").strip().strip("/")
    return "" if base == "/" else base


def load_token(path: Path) -> str:
    """The token kept at `path` (mode 0600), made on first use and reused across restarts."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    if token:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return token
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # the file exists with 0600 first, so write_atomic's replacement keeps that mode
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        os.chmod(path, 0o600)
    write_atomic(path, token + "\n")
    return token


class CarServer(ThreadingHTTPServer):
    daemon_threads = True  # a stream's thread never blocks exit (it still watches Streams.stop)
    request_queue_size = 128

    def __init__(self, address: tuple, app: App) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection's failure goes to the server's log; the base class prints it to stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):  # the client left or stalled
            self.app.log.info("web: %s: %s", client_address[0], exc)
        else:  # a bug: its traceback belongs in the log
            self.app.log.exception("web: connection from %s failed", client_address[0])

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's getfqdn() may wait on DNS
        self.server_name, self.server_port = self.server_address[0], self.server_address[1]


def make_server(routes: List[Route], host: str, port: int, *, log: logging.Logger,
                allow_remote: bool = False, token: Optional[str] = None, base_path: str = "",
                streams: Optional[Streams] = None, page: Callable[[], bytes] = load_page,
                max_body_bytes: Optional[int] = None) -> CarServer:
    check_bind(host, allow_remote)
    if allow_remote and not token:
        raise UsageError("--allow-remote needs a token; none was given")
    app = App(routes, log, streams or Streams(), page, token=token,
              base_path=normalize_base_path(base_path))
    if max_body_bytes is not None:
        app.max_body_bytes = max_body_bytes
    try:
        server = CarServer((host.strip("[]"), port), app)
    except (OSError, OverflowError) as exc:  # OverflowError: a port outside 0-65535
        raise CarError(CANNOT_LISTEN.format(host=host, port=port, reason=exc.strerror or exc)) from exc
    bound, port = server.server_address[0], server.server_address[1]
    app.hosts = host_names(host.strip("[]"), port, allow_remote, bound)
    app.home = url_netloc(bound, port)
    return server


class Running:
    """A server serving on its own thread (tests, and the body of serve_repo/serve_hub)."""

    def __init__(self, server: CarServer, token_path: Optional[Path] = None) -> None:
        self.server, self.token_path = server, token_path
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.25},
                                       name="car-web", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def token(self) -> Optional[str]:
        return self.server.app.token

    @property
    def url(self) -> str:
        return f"http://{self.server.app.home}{self.server.app.base_path}/"

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, end every stream, close the socket (from any thread but the server's)."""
        self.server.app.closed = True
        self.server.shutdown()
        self.server.app.streams.close(timeout)
        self.server.server_close()
        self.thread.join(timeout)

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def start_in_thread(routes: List[Route], host: str = "127.0.0.1", port: int = 0, *,
                    log: Optional[logging.Logger] = None, token_path: Optional[Path] = None,
                    listening: Optional[Callable[[], None]] = None, **options: Any) -> Running:
    """Serve on a thread and return at once; `token_path` (with allow_remote) turns on auth.
    `listening` runs once the socket is bound, before any request is served: a port in use fails
    before that work starts, and that work failing closes the socket."""
    if options.get("allow_remote") and token_path is not None and not options.get("token"):
        options["token"] = load_token(token_path)
    server = make_server(routes, host, port, log=log or logging.getLogger("car.web"), **options)
    try:
        if listening is not None:
            listening()
    except BaseException:
        server.server_close()
        raise
    return Running(server, token_path)


def describe(running: Running) -> List[str]:
    lines = [f"car: serving {running.url}"]
    if running.token:
        lines.append(f"car: token: {running.token}")
        lines.append(f"car: every request needs 'Authorization: Bearer <token>' (the page asks for it "
                     f"once); the token is kept in {running.token_path}")
    return lines


def print_ready(running: Running) -> None:
    for line in describe(running):
        print(line, flush=True)


def _serve(routes: List[Route], host: str, port: int, log: logging.Logger, token_path: Path,
           allow_remote: bool, base_path: str, ready: Optional[Callable[[Running], None]],
           stop: Optional[threading.Event], heartbeat_seconds: float,
           listening: Optional[Callable[[], None]]) -> None:
    """Serve until SIGINT/SIGTERM/SIGHUP (or `stop`)."""
    check_bind(host, allow_remote)
    stop = stop or threading.Event()
    # caught from before `listening` and the ready line: a signal that comes as soon as a caller sees the
    # URL (or while the hub starts its repos) ends the server cleanly; left at its default, it ended the
    # process with no cleanup
    with on_stop_signals(stop.set):
        running = start_in_thread(routes, host, port, log=log, token_path=token_path, listening=listening,
                                  allow_remote=allow_remote, base_path=base_path,
                                  streams=Streams(heartbeat_seconds))
        try:
            if not stop.is_set():  # not asked to end during `listening`
                (ready or print_ready)(running)
                stop.wait()
        finally:
            running.close()


def serve_repo(runner: Any, host: str, port: int, allow_remote: bool = False, base_path: str = "",
               ready: Optional[Callable[[Running], None]] = None,
               stop: Optional[threading.Event] = None, heartbeat_seconds: float = 15.0,
               listening: Optional[Callable[[], None]] = None) -> None:
    """Serve one repo's API at /api and the page until SIGINT/SIGTERM; the caller owns `runner`.

    `listening` runs once the socket is bound, before the first request is served."""
    config = runner.config
    layout = RepoLayout(config.root)
    log = make_logger(f"car.web.{config.root}", layout.web_log, config.log.backup_count,
                      max_bytes=config.log.max_bytes)
    try:
        _serve(repo_routes("/api", one_runner(runner)), host, port, log, layout.token, allow_remote,
               base_path, ready, stop, heartbeat_seconds, listening)
    finally:
        close_logger(log)


def serve_hub(hub: Any, host: str, port: int, allow_remote: bool = False, base_path: str = "",
              ready: Optional[Callable[[Running], None]] = None,
              stop: Optional[threading.Event] = None, heartbeat_seconds: float = 15.0,
              listening: Optional[Callable[[], None]] = None) -> None:
    """Serve the hub until SIGINT/SIGTERM; the caller owns hub.shutdown(), and hub.start() goes in
    `listening` (run once the socket is bound), so a port in use fails before any repo starts."""
    _serve(hub_routes(hub), host, port, hub.log, HubLayout(hub.config.root).token, allow_remote,
           base_path, ready, stop, heartbeat_seconds, listening)
