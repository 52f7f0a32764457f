"""HTTP vocabulary: requests, responses, web errors, and the routing table (first match wins)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple
from urllib.parse import unquote

from car.errors import BadRequest, CarError, NotFound


class MethodNotAllowed(CarError):
    http_status, code = 405, "method_not_allowed"

    def __init__(self, message: str, allowed: List[str]) -> None:
        super().__init__(message)
        self.allowed = allowed


class Unauthorized(CarError):
    http_status, code = 401, "unauthorized"


class Forbidden(CarError):
    http_status, code = 403, "forbidden"


class PayloadTooLarge(CarError):
    http_status, code = 413, "payload_too_large"


class Unavailable(CarError):
    http_status, code = 503, "unavailable"


@dataclass
class Request:
    method: str
    path: str
    query: Dict[str, List[str]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def arg(self, name: str) -> Optional[str]:
        """The last value of a query parameter, or None."""
        values = self.query.get(name)
        return values[-1] if values else None

    def json(self) -> Dict[str, Any]:
        """The body as a JSON object; an empty body is {}; anything else is BadRequest."""
        if not self.body.strip():
            return {}
        try:
            data = json.loads(self.body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the request body is not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise BadRequest(f"the request body must be a JSON object, got {type(data).__name__}")
        return data


def body_field(data: Dict[str, Any], name: str, kind: type, default: Any = None,
               nullable: bool = False) -> Any:
    """One field of a JSON body, type-checked (bool is not an int here); BadRequest otherwise."""
    if name not in data:
        return default
    value = data[name]
    if value is None and nullable:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = {bool: "true or false", str: "a string", int: "a whole number"}.get(kind, kind.__name__)
        raise BadRequest(f"field '{name}': expected {expected}, got {json.dumps(value)[:60]}")
    if kind is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON's "\ud800" escape: a lone surrogate no file can hold as UTF-8
            raise BadRequest(f"field '{name}': not valid Unicode text (a lone surrogate "
                             f"U+{ord(value[exc.start]):04X} at character {exc.start}); send UTF-8 text") from None
    return value


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: Dict[str, str] = field(default_factory=dict)


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data, separators=(",", ":")).encode("utf-8"))


def error_response(exc: CarError) -> Response:
    resp = json_response({"error": {"code": exc.code, "message": str(exc)}}, exc.http_status)
    if isinstance(exc, MethodNotAllowed):
        resp.headers["Allow"] = ", ".join(exc.allowed)
    if isinstance(exc, Unauthorized):
        resp.headers["WWW-Authenticate"] = 'Bearer realm="car"'
    return resp


Handler = Callable[..., Any]  # handler(request, **params) -> Response | sse.EventStream


@dataclass(frozen=True)
class Route:
    method: str
    pattern: "re.Pattern[str]"
    handler: Handler
    template: str = ""


def route(method: str, template: str, handler: Handler) -> Route:
    """'/repos/{repo_id}/api/state' -> an anchored regex with one named group per segment."""
    regex = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$"
    return Route(method, re.compile(regex), handler, template)


def resolve(routes: List[Route], method: str, path: str) -> Tuple[Handler, Dict[str, str]]:
    """Match the raw (still %-encoded) path, so an encoded '/' never makes a new segment."""
    allowed: List[str] = []
    for r in routes:
        m = r.pattern.match(path)
        if m is None:
            continue
        if r.method == method:
            return r.handler, {k: unquote(v) for k, v in m.groupdict().items()}
        if r.method not in allowed:
            allowed.append(r.method)
    if allowed:
        raise MethodNotAllowed(f"{method} is not allowed on {path}; allowed: {', '.join(allowed)}", allowed)
    raise NotFound(f"no route for {method} {path}")
