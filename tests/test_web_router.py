"""The routing table, request parsing, SSE encoding and streaming, and the log file cursor."""

from __future__ import annotations

import threading

import pytest

from car.errors import BadRequest, NotFound, UsageError
from car.feed import Feed
from car.web.api_hub import hub_routes
from car.web.api_repo import repo_routes
from car.web.router import MethodNotAllowed, Request, body_field, error_response, resolve, route
from car.web.server import normalize_base_path
from car.web.sse import EventStream, Streams, encode_event, encode_lines, feed_chunks


def handler_named(name):
    def handler(req, **params):
        return name, params
    return handler


ROUTES = [
    route("GET", "/api/state", handler_named("state")),
    route("GET", "/api/docs/{kind}", handler_named("get_doc")),
    route("PUT", "/api/docs/{kind}", handler_named("put_doc")),
    route("POST", "/repos/{repo_id}/api/run/start", handler_named("start")),
]


def test_resolve_returns_the_handler_and_decoded_params():
    handler, params = resolve(ROUTES, "GET", "/api/docs/todo")
    assert handler(None, **params) == ("get_doc", {"kind": "todo"})
    handler, params = resolve(ROUTES, "POST", "/repos/my%20repo/api/run/start")
    assert params == {"repo_id": "my repo"}


def test_an_encoded_slash_never_makes_a_new_segment():
    _, params = resolve(ROUTES, "POST", "/repos/..%2F..%2Fetc/api/run/start")
    assert params == {"repo_id": "../../etc"}  # a value looked up in the manifest, never a path
    with pytest.raises(NotFound):
        resolve(ROUTES, "POST", "/repos/../../etc/api/run/start")


def test_unknown_path_is_404_and_wrong_method_is_405_with_allowed():
    with pytest.raises(NotFound):
        resolve(ROUTES, "GET", "/api/nope")
    with pytest.raises(NotFound):
        resolve(ROUTES, "GET", "/api/state/extra")
    with pytest.raises(MethodNotAllowed) as caught:
        resolve(ROUTES, "DELETE", "/api/docs/todo")
    assert caught.value.allowed == ["GET", "PUT"]
    resp = error_response(caught.value)
    assert resp.status == 405 and resp.headers["Allow"] == "GET, PUT"
    assert b'"code":"method_not_allowed"' in resp.body


def test_templates_are_literal_except_for_names():
    r = route("GET", "/a.b/{x}", handler_named("x"))
    assert r.pattern.match("/a.b/1") and not r.pattern.match("/aXb/1")


def test_one_factory_serves_both_mounts():
    single = [(r.method, r.template) for r in repo_routes("/api", lambda: None)]
    hub = [(r.method, r.template) for r in hub_routes(type("Hub", (), {"runner": None})())]
    for method, template in single:
        assert (method, template.replace("/api", "/repos/{repo_id}/api", 1)) in hub
    assert ("GET", "/api/logs/stream") in single and ("GET", "/hub/events") in hub


def test_request_json_and_fields():
    assert Request("POST", "/", body=b"").json() == {}
    assert Request("POST", "/", body=b'{"once": true}').json() == {"once": True}
    for bad in (b"{nope", b"[1, 2]", b"\xff\xfe", b'"text"'):
        with pytest.raises(BadRequest):
            Request("POST", "/", body=bad).json()
    assert body_field({"once": True}, "once", bool, False) is True
    assert body_field({}, "once", bool, False) is False
    assert body_field({"etag": None}, "etag", str, nullable=True) is None
    for data, name, kind in (({"once": 1}, "once", bool), ({"content": 3}, "content", str),
                             ({"n": True}, "n", int), ({"etag": None}, "etag", str)):
        with pytest.raises(BadRequest):
            body_field(data, name, kind)


def test_base_path_normalization():
    assert normalize_base_path("") == "" and normalize_base_path("/") == ""
    assert normalize_base_path("car/") == "/car" and normalize_base_path("/a/b") == "/a/b"
    with pytest.raises(UsageError):
        normalize_base_path("/a b")


def test_sse_encoding_splits_lines_and_drops_cr():
    assert encode_event("repo", '{"a":1}') == b'event: repo\ndata: {"a":1}\n\n'
    assert encode_lines(["one", "two\r"]) == b"data: one\ndata: two\n\n"
    assert encode_lines([]) is None


def test_a_client_that_breaks_the_pipe_ends_the_stream_and_is_not_counted():
    streams, feed = Streams(heartbeat_seconds=0.05, tick_seconds=0.02), Feed()
    writes = []

    def write(data: bytes) -> None:
        if len(writes) >= 2:
            raise BrokenPipeError
        writes.append(data)

    stream = EventStream(lambda s: feed_chunks(feed, s, lambda items: encode_lines(items)))
    t = threading.Thread(target=streams.serve, args=(stream, write))
    t.start()
    for i in range(20):
        feed.publish(f"line {i}")
    t.join(5)
    assert not t.is_alive() and streams.active == 0


def test_heartbeats_while_quiet_and_close_ends_streams():
    streams, feed = Streams(heartbeat_seconds=0.05, tick_seconds=0.02), Feed()
    writes = []
    stream = EventStream(lambda s: feed_chunks(feed, s, encode_lines))
    t = threading.Thread(target=streams.serve, args=(stream, writes.append))
    t.start()
    threading.Event().wait(0.3)
    assert b": keep-alive\n\n" in writes
    assert streams.close(timeout=5) and not t.join(5) and not t.is_alive()


def test_a_gone_client_is_noticed_without_a_write():
    streams, feed = Streams(heartbeat_seconds=60, tick_seconds=0.02), Feed()
    gone = threading.Event()
    stream = EventStream(lambda s: feed_chunks(feed, s, encode_lines))
    t = threading.Thread(target=streams.serve, args=(stream, lambda b: None, gone.is_set))
    t.start()
    gone.set()
    t.join(5)
    assert not t.is_alive()


class FakeHub:
    """Just what HubApi's list cache touches: events.seq and snapshot()."""

    def __init__(self) -> None:
        self.events, self.builds = Feed(), 0

    def snapshot(self):
        self.builds += 1
        n = self.builds
        return type("Snapshot", (), {"to_json": lambda self: {"repos": [], "build": n}})()


def test_the_hub_list_is_rebuilt_on_events_invalidation_and_age_only():
    from car.web.api_hub import LIST_MAX_AGE_SECONDS, HubApi

    now = [100.0]
    hub = FakeHub()
    api = HubApi(hub, clock=lambda: now[0])
    assert api.repos_body() == api.repos_body() == b'{"repos":[],"build":1}'
    hub.events.publish(("repo", {}))  # a change the hub published
    assert b'"build":2' in api.repos_body()
    api.invalidate()  # this server changed something
    assert b'"build":3' in api.repos_body()
    now[0] += LIST_MAX_AGE_SECONDS + 0.1  # what another process changed: at most this late
    assert b'"build":4' in api.repos_body() and hub.builds == 4


def test_the_hub_list_is_built_once_for_many_concurrent_readers():
    from car.web.api_hub import HubApi

    hub = FakeHub()
    slow = hub.snapshot
    gate = threading.Event()

    def snapshot():
        gate.wait(5)
        return slow()

    hub.snapshot = snapshot
    api = HubApi(hub)
    bodies = []
    threads = [threading.Thread(target=lambda: bodies.append(api.repos_body())) for _ in range(8)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(5)
    assert len(bodies) == 8 and hub.builds == 1
