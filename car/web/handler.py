"""One request handler for every method: guards (Host, token, Origin, size), routing, JSON out."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import select
import socket
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Callable, FrozenSet, List, Optional
from urllib.parse import parse_qs, urlsplit

from car.errors import BadRequest, CarError
from car.web.router import (
    Forbidden,
    MethodNotAllowed,
    PayloadTooLarge,
    Request,
    Response,
    Route,
    Unauthorized,
    Unavailable,
    error_response,
    json_response,
    resolve,
)
from car.web.sse import EventStream, Streams

MAX_BODY_BYTES = 5 * 1024 * 1024
STATE_CHANGING = frozenset({"POST", "PUT", "DELETE", "PATCH"})
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; "
                               "form-action 'self'",
    "X-Frame-Options": "DENY",
}


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::", "[::]")


def url_netloc(host: str, port: int) -> str:
    """host:port as a URL writes it ([::1]:4173); a wildcard bind is reached at 127.0.0.1."""
    host = "127.0.0.1" if is_wildcard(host) else host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def host_names(host: str, port: int, allow_remote: bool, bound: str = "") -> Optional[FrozenSet[str]]:
    """The Host header values this server answers to; None means any (a wildcard remote bind,
    where the token is the guard because we cannot know every name that reaches us)."""
    if allow_remote and is_wildcard(host):
        return None
    names = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
    # the address asked for and the one bound: check_bind lets every loopback address through
    # (127.0.0.2, ::1), and the URL printed at start names the bound one; a rebinding page sends
    # its own name, never these
    names.update(url_netloc(name, port) for name in (host, bound) if name)
    return frozenset(n.lower() for n in names)


@dataclass
class App:
    """What a request needs from its server (reached as `self.server.app`)."""

    routes: List[Route]
    log: logging.Logger
    streams: Streams
    page: Callable[[], bytes]
    token: Optional[str] = None
    base_path: str = ""
    max_body_bytes: int = MAX_BODY_BYTES
    hosts: Optional[FrozenSet[str]] = field(default_factory=frozenset)
    home: str = ""  # host:port of the URL printed at start: the one a refused Host is pointed to
    closed: bool = False  # set at shutdown: a kept-alive connection gets no more work done


def _origin_netloc(origin: str) -> str:
    parts = urlsplit(origin)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    try:
        port = parts.port
    except ValueError:
        return "invalid"
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port or default}".lower()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "car"
    timeout = 30  # an idle keep-alive or a stuck SSE reader frees its thread after this
    # a request line that does not parse keeps this version; the base class's default, HTTP/0.9,
    # would make every reply (400 included) a bare body without status line or headers
    default_request_version = "HTTP/1.0"
    disable_nagle_algorithm = True  # SSE lines and small answers go out at once

    @property
    def app(self) -> App:
        return self.server.app  # type: ignore[attr-defined]

    def _dispatch(self) -> None:
        self._body_read = False
        try:
            result = self._handle()
        except CarError as exc:
            result = error_response(exc)
        except Exception:  # a bug: the traceback goes to the log, the client gets JSON
            self.app.log.exception("web: %s %s failed", self.command, self.path)
            result = json_response({"error": {"code": "internal_error", "message":
                                    "internal server error; the traceback is in the server log"}}, 500)
        if not self._body_read and (self.headers.get("Content-Length", "0").strip() != "0"
                                    or self.headers.get("Transfer-Encoding")):
            self.close_connection = True  # refused before reading its body: the stream is out of step
        if isinstance(result, EventStream):
            self._stream(result)
        else:
            self._send(result)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch  # noqa: N815

    def _handle(self):
        app = self.app
        if app.closed:
            self.close_connection = True
            raise Unavailable("the server is shutting down")
        url = urlsplit(self.path)
        self._check_host()
        path = url.path or "/"
        if app.base_path and (path == app.base_path or path.startswith(app.base_path + "/")):
            if path == app.base_path:  # the page's relative URLs need the trailing slash
                return Response(308, headers={"Location": app.base_path + "/"})
            path = path[len(app.base_path):]
        if path in ("/", "/index.html"):
            if self.command not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{self.command} is not allowed on {path}; allowed: GET", ["GET"])
            return Response(200, app.page(), "text/html; charset=utf-8", dict(PAGE_HEADERS))
        query = parse_qs(url.query, keep_blank_values=True)
        self._check_token(query)
        if self.command in STATE_CHANGING:
            self._check_origin()
        body = self._read_body()
        # HEAD is GET without the body (_send and _stream leave it out); DESIGN names no HEAD routes
        handler, params = resolve(app.routes, "GET" if self.command == "HEAD" else self.command, path)
        return handler(Request(self.command, path, query, self.headers, body), **params)

    # guards -----------------------------------------------------------------------------
    def _check_host(self) -> None:
        """DNS rebinding: a page of evil.example resolving to 127.0.0.1 still sends its own Host."""
        hosts = self.app.hosts
        host = (self.headers.get("Host") or "").strip().lower()
        if hosts is not None and host not in hosts:
            raise Forbidden(f"Host '{host[:100]}' is not this server's name; "
                            f"use http://{self.app.home or sorted(hosts)[0]}/ (DNS-rebinding guard)")

    def _check_origin(self) -> None:
        """CSRF: a state-changing request from another site's page is refused (curl sends none)."""
        origin = self.headers.get("Origin")
        if origin is None:
            return
        host = (self.headers.get("Host") or "").strip().lower()
        if ":" not in host.rsplit("]", 1)[-1]:
            host += ":80"
        if origin == "null" or _origin_netloc(origin) != host:
            raise Forbidden(f"Origin '{origin[:100]}' is not this server; cross-site requests are refused")

    def _check_token(self, query: dict) -> None:
        token = self.app.token
        if not token:
            return
        header = self.headers.get("Authorization") or ""
        given = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not given and self.command == "GET":  # EventSource cannot send headers
            given = (query.get("token") or [""])[-1]
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            raise Unauthorized("missing or wrong token: send 'Authorization: Bearer <token>' "
                               "(the token was printed when the server started)")

    def handle_expect_100(self) -> bool:
        """`Expect: 100-continue` (curl sends it for a large body): a body over the limit is refused now,
        before the client is told to send it; the base class says 100 Continue to every one."""
        raw = (self.headers.get("Content-Length") or "").strip()
        if raw.isdigit() and int(raw) > self.app.max_body_bytes:
            self.close_connection = True
            self._send(error_response(self._too_large(int(raw))))
            return False
        return super().handle_expect_100()

    def _too_large(self, length: int) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body of {length} bytes is over the limit of {self.app.max_body_bytes} bytes")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise BadRequest("chunked request bodies are not supported; send Content-Length")
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
            if length < 0:
                raise ValueError(raw)
        except ValueError:
            self.close_connection = True
            raise BadRequest(f"bad Content-Length '{raw[:40]}'") from None
        if length > self.app.max_body_bytes:
            self.close_connection = True  # the body stays unread: this connection is done
            raise self._too_large(length)
        self._body_read = True
        chunks: List[bytes] = []
        got, how = 0, "ended"
        while got < length:
            try:  # read1 by read1: what had arrived is counted even when the next read times out
                chunk = self.rfile.read1(length - got)
            except socket.timeout:  # TimeoutError from Python 3.10
                how = f"stalled (nothing more for {self.timeout} s)"
                break
            except OSError:  # the client dropped the connection: nobody reads the answer
                break
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got != length:
            self.close_connection = True
            raise BadRequest(f"request body {how} after {got} of {length} bytes")
        return b"".join(chunks)

    # output -----------------------------------------------------------------------------
    def _send(self, resp: Response) -> None:
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if "Cache-Control" not in resp.headers:
            self.send_header("Cache-Control", "no-store")
        for name, value in resp.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        # end_headers() without its flush: head and body leave in one write (one TCP segment
        # for small answers, so Nagle and delayed ACKs never add 40 ms between them)
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(resp.body)
        try:
            self.flush_headers()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _stream(self, stream: EventStream) -> None:
        self.close_connection = True  # no Content-Length: the stream ends with the connection
        self.send_response(200)
        for name, value in (("Content-Type", "text/event-stream; charset=utf-8"),
                            ("Cache-Control", "no-store"), ("Connection", "close"),
                            ("X-Accel-Buffering", "no"), ("X-Content-Type-Options", "nosniff")):
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return

        def write(data: bytes) -> None:
            self.wfile.write(data)

        try:
            self.app.streams.serve(stream, write, self._client_gone)
        except Exception:  # a bug in a stream: the headers are out, so only the log can tell
            self.app.log.exception("web: stream %s failed", self.path)

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """The base class's own refusals (bad request line, headers too long, 501) as JSON too."""
        self.close_connection = True
        short = self.responses.get(code, ("error",))[0]
        self._send(json_response({"error": {"code": f"http_{code}", "message": message or short}}, code))

    def _client_gone(self) -> bool:
        """A client that closed its end makes the socket readable with EOF (no write needed)."""
        sock = self.connection
        try:
            ready, _, _ = select.select([sock], [], [], 0)
            return bool(ready) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    # logging: access lines to the hub/repo logger, never stderr ----------------------------
    def log_request(self, code: object = "-", size: object = "-") -> None:
        status = int(code) if isinstance(code, int) or str(code).isdigit() else 0
        quiet = self.command in ("GET", "HEAD") and 200 <= status < 400
        self.app.log.log(logging.DEBUG if quiet else logging.INFO, 'web: %s "%s" %s',
                         self.address_string(), self.requestline, code)

    def log_error(self, format: str, *args: object) -> None:
        self.app.log.info("web: %s %s", self.address_string(), format % args)

    def log_message(self, format: str, *args: object) -> None:
        self.app.log.debug("web: %s %s", self.address_string(), format % args)
