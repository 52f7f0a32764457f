"""The hub's routes (/hub/...) plus every repo's routes at /repos/{repo_id}/api, on one HubSupervisor.

Repo ids are looked up in the hub's manifest (`hub.repo(id)`, NotFound otherwise); they are never
joined into a path.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, List, Optional, Tuple

from car.usage import hub_usage
from car.web.api_repo import repo_routes
from car.web.router import Request, Response, Route, body_field, json_response, route
from car.web.sse import Chunks, EventStream, Streams, encode_event, encode_json_event, feed_chunks

LIST_MAX_AGE_SECONDS = 1.0  # GET /hub/repos may answer from a list this old (see HubApi.repos_body)


def hub_routes(hub: Any) -> List[Route]:
    """`hub` is a car.hub.HubSupervisor (typed loosely: car.web must not need it to import)."""
    api = HubApi(hub)
    per_repo = [r if r.method == "GET" else Route(r.method, r.pattern, api.invalidating(r.handler),
                                                  r.template)
                for r in repo_routes("/repos/{repo_id}/api", hub.runner)]
    return [
        route("GET", "/hub/repos", api.get_repos),
        route("POST", "/hub/repos/scan", api.post_scan),
        route("POST", "/hub/repos/{repo_id}/run", api.post_run),
        route("POST", "/hub/repos/{repo_id}/stop", api.post_stop),
        route("POST", "/hub/repos/{repo_id}/resume", api.post_resume),
        route("POST", "/hub/repos/{repo_id}/kill", api.post_kill),
        route("POST", "/hub/repos/{repo_id}/init", api.post_init),
        route("GET", "/hub/events", api.stream_events),
        route("GET", "/hub/usage", api.get_usage),
        *per_repo,
    ]


def _json(value: Any) -> Any:
    return value.to_json() if hasattr(value, "to_json") else value


class HubApi:
    def __init__(self, hub: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.hub, self._clock = hub, clock
        self._cache_lock, self._build_lock = threading.Lock(), threading.Lock()
        self._generation = 0  # bumped by invalidate(): a list built before it is never kept
        self._cache: Optional[Tuple[int, int, float, bytes]] = None  # (generation, seq, made at, body)

    def repos_body(self) -> bytes:
        """GET /hub/repos' body. hub.snapshot() re-reads every repo's files (ms for hundreds), so
        the encoded list is reused while no hub event was published, this server changed nothing,
        and it is under LIST_MAX_AGE_SECONDS old (what other processes change shows up by then).
        One thread rebuilds it at a time; meanwhile an only-too-old list is still served."""
        cached, current = self._lookup()
        if cached is not None and (current or not self._build_lock.acquire(blocking=False)):
            return cached
        if cached is None:
            self._build_lock.acquire()
        try:
            cached, current = self._lookup()  # another thread may have built it while we waited
            if cached is not None and current:
                return cached
            seq, now = self.hub.events.seq, self._clock()
            with self._cache_lock:
                generation = self._generation
            body = json_response(self.hub.snapshot().to_json()).body
            with self._cache_lock:  # keys read before the snapshot: a change during it misses later
                if self._generation == generation:
                    self._cache = (generation, seq, now, body)
            return body
        finally:
            self._build_lock.release()

    def _lookup(self) -> Tuple[Optional[bytes], bool]:
        """(the cached body if it still shows the current state, whether it is also young enough)."""
        seq, now = self.hub.events.seq, self._clock()
        with self._cache_lock:
            cached, generation = self._cache, self._generation
        if cached is None or cached[:2] != (generation, seq):
            return None, False
        return cached[3], now - cached[2] < LIST_MAX_AGE_SECONDS

    def invalidate(self) -> None:
        with self._cache_lock:
            self._generation += 1
            self._cache = None

    def invalidating(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """A state-changing handler after which the next list is built afresh."""
        def call(req: Request, **params: str) -> Any:
            try:
                return handler(req, **params)
            finally:
                self.invalidate()
        return call

    def get_usage(self, req: Request) -> Response:
        repos = [(entry.id, self.hub.repo_root(entry.id)) for entry in self.hub.snapshot().repos]
        return json_response(hub_usage(repos).to_json())

    def get_repos(self, req: Request) -> Response:
        return Response(200, self.repos_body())

    def post_scan(self, req: Request) -> Response:
        req.json()
        try:
            return json_response(self.hub.scan().to_json())
        finally:
            self.invalidate()

    def _entry(self, entry: Any) -> Response:
        self.invalidate()
        return json_response({"repo": _json(entry)})

    def post_run(self, req: Request, repo_id: str) -> Response:
        once = body_field(req.json(), "once", bool, False)
        self.hub.repo(repo_id)
        return self._entry(self.hub.run(repo_id, once=once))

    def post_resume(self, req: Request, repo_id: str) -> Response:
        once = body_field(req.json(), "once", bool, False)
        self.hub.repo(repo_id)
        return self._entry(self.hub.resume(repo_id, once=once))

    def post_stop(self, req: Request, repo_id: str) -> Response:
        req.json()
        self.hub.repo(repo_id)
        return self._entry(self.hub.stop(repo_id))

    def post_kill(self, req: Request, repo_id: str) -> Response:
        req.json()
        self.hub.repo(repo_id)
        return self._entry(self.hub.kill(repo_id))

    def post_init(self, req: Request, repo_id: str) -> Response:
        req.json()
        self.hub.repo(repo_id)
        try:
            entry = self.hub.init(repo_id)
        finally:  # a failed init changed the entry too (init_error): the next list must show it
            self.invalidate()
        return self._entry(entry)

    def stream_events(self, req: Request) -> EventStream:
        return EventStream(self._events)

    def _events(self, streams: Streams) -> Chunks:
        """`repos` with the whole list first (a new client needs no extra GET), then changes."""
        feed = self.hub.events
        seq = feed.seq
        yield encode_event("repos", self.repos_body().decode("utf-8"))
        yield from feed_chunks(feed, streams, _encode_items, seq)


def _encode_items(items: List[Any]) -> Optional[bytes]:
    return b"".join(encode_json_event(str(kind), _json(data)) for kind, data in items) or None
