"""Per-repo routes from one factory: at /api for `car serve`, at /repos/{repo_id}/api in the hub.

Under the hub `get_runner` is the hub's own `runner(repo_id)`: one RepoRunner per repo, never a
second controller (DESIGN.md §5).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Optional

from car.docs import DocKind, read_doc, write_doc
from car.errors import BadRequest, NotFound
from car.files import read_jsonl
from car.lock import inspect_lock
from car.logs import FileCursor, list_runs, log_tail, read_run
from car.recovery import reconcile
from car.runner import RepoRunner
from car.status import LockStatus
from car.usage import repo_usage
from car.web.router import Request, Response, Route, body_field, json_response, route
from car.web.sse import Chunks, EventStream, Streams, encode_lines

# get_runner(**ids from the path) -> that repo's runner; with starting=True, for a loop's start
# (the hub refuses a repo its manifest disables)
GetRunner = Callable[..., RepoRunner]

CONTEXT_LINES = 50  # what a new log-stream client gets first
DEFAULT_TAIL, MAX_TAIL = 200, 100_000
FILE_POLL_SECONDS = 0.25


def one_runner(runner: RepoRunner) -> GetRunner:
    """The get_runner of `car serve`: its one repo, whatever is asked."""
    return lambda starting=False: runner


def repo_routes(prefix: str, get_runner: GetRunner) -> List[Route]:
    api = RepoApi(get_runner)
    return [
        route("GET", prefix + "/state", api.get_state),
        route("GET", prefix + "/docs", api.get_docs),
        route("GET", prefix + "/docs/{kind}", api.get_doc),
        route("PUT", prefix + "/docs/{kind}", api.put_doc),
        route("POST", prefix + "/run/start", api.post_start),
        route("POST", prefix + "/run/stop", api.post_stop),
        route("POST", prefix + "/run/kill", api.post_kill),
        route("POST", prefix + "/run/resume", api.post_resume),
        route("GET", prefix + "/runs", api.get_runs),
        route("GET", prefix + "/usage", api.get_usage),
        route("GET", prefix + "/logs", api.get_logs),
        route("GET", prefix + "/logs/stream", api.stream_logs),
    ]


def doc_kind(kind: str) -> DocKind:
    try:
        return DocKind(kind)
    except ValueError:
        raise NotFound(f"no doc '{kind[:60]}'; expected one of "
                       f"{', '.join(k.value for k in DocKind)}") from None


def int_arg(req: Request, name: str) -> Optional[int]:
    raw = req.arg(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name}: expected a whole number, got '{raw[:40]}'") from None
    if value < 0:
        raise BadRequest(f"query parameter {name}: expected a number >= 0, got {value}")
    return value


class RepoApi:
    def __init__(self, get_runner: GetRunner) -> None:
        self._get_runner = get_runner
        self._reconcile_lock = threading.Lock()
        self._doc_lock = threading.Lock()  # etag check + write as one step in this process

    def get_state(self, req: Request, **ids: str) -> Response:
        return json_response(self._state(self._get_runner(**ids)))

    def _state(self, runner: RepoRunner) -> Dict[str, Any]:
        if not runner.active:  # DESIGN.md §3: close a dead owner's run before answering
            with self._reconcile_lock:
                reconcile(runner.config)
        return runner.view().to_json()

    # docs -------------------------------------------------------------------------------
    def get_docs(self, req: Request, **ids: str) -> Response:
        config = self._get_runner(**ids).config
        return json_response({k.value: read_doc(config.doc_path(k.value)).to_json() for k in DocKind})

    def get_doc(self, req: Request, kind: str, **ids: str) -> Response:
        config = self._get_runner(**ids).config
        k = doc_kind(kind)
        return json_response({k.value: read_doc(config.doc_path(k.value)).to_json()})

    def put_doc(self, req: Request, kind: str, **ids: str) -> Response:
        config = self._get_runner(**ids).config
        k = doc_kind(kind)
        data = req.json()
        if "content" not in data:
            raise BadRequest("field 'content' is required (the whole new text of the doc)")
        content = body_field(data, "content", str)
        etag = body_field(data, "etag", str, nullable=True)
        with self._doc_lock:
            # the page's textarea sends \n line ends and no BOM: the file on disk keeps its own
            doc = write_doc(config.doc_path(k.value), content, etag)
        return json_response({k.value: doc.to_json()})

    # control ----------------------------------------------------------------------------
    def post_start(self, req: Request, **ids: str) -> Response:
        once = body_field(req.json(), "once", bool, False)
        runner = self._get_runner(starting=True, **ids)
        runner.start(once=once)
        return json_response(self._state(runner))

    def post_resume(self, req: Request, **ids: str) -> Response:
        once = body_field(req.json(), "once", bool, False)
        runner = self._get_runner(starting=True, **ids)
        runner.resume(once=once)
        return json_response(self._state(runner))

    def post_stop(self, req: Request, **ids: str) -> Response:
        req.json()  # a malformed body is still a 400
        runner = self._get_runner(**ids)
        runner.request_stop()
        return json_response(self._state(runner))

    def post_kill(self, req: Request, **ids: str) -> Response:
        req.json()
        runner = self._get_runner(**ids)
        runner.kill()
        return json_response(self._state(runner))

    # runs and logs ----------------------------------------------------------------------
    def get_usage(self, req: Request, **ids: str) -> Response:
        return json_response(repo_usage(self._get_runner(**ids).config).to_json())

    def get_runs(self, req: Request, **ids: str) -> Response:
        runner = self._get_runner(**ids)
        config = runner.config
        extra = {r["id"]: r for r in read_jsonl(runner.layout.runs)
                 if isinstance(r, dict) and isinstance(r.get("id"), int)}
        runs = []
        for record in list_runs(config.log_path, config.log.backup_count):
            item = record.to_json()
            more = extra.get(record.id, {})
            item["usage"] = more.get("usage")
            item["end_reason"] = more.get("end_reason")
            runs.append(item)
        return json_response({"runs": runs})

    def get_logs(self, req: Request, **ids: str) -> Response:
        config = self._get_runner(**ids).config
        run_id, count = int_arg(req, "run_id"), int_arg(req, "tail")
        if run_id is not None and count is not None:
            raise BadRequest("give run_id or tail, not both")
        if run_id is not None:
            lines = read_run(config.log_path, config.log.backup_count, run_id)
            if not lines:
                raise NotFound(f"run {run_id} is not in {config.log_path.name} or its backups")
            return json_response({"run_id": run_id, "lines": lines})
        count = min(MAX_TAIL, DEFAULT_TAIL if count is None else count)
        return json_response({"lines": log_tail(config.log_path, config.log.backup_count, count)})

    def stream_logs(self, req: Request, **ids: str) -> EventStream:
        runner = self._get_runner(**ids)
        return EventStream(lambda streams: log_chunks(runner, streams))


def held_elsewhere(runner: RepoRunner) -> bool:
    """Another process runs this repo's loop: its lines reach us only through the file."""
    return not runner.active and inspect_lock(runner.layout.lock).status is LockStatus.LOCKED_ALIVE


def log_chunks(runner: RepoRunner, streams: Streams) -> Chunks:
    """The last lines for context, then each new line: from the runner's Feed while this process
    writes the log, from the file while another process does (switching as that changes)."""
    feed, cursor = runner.feed, FileCursor(runner.config.log_path)
    seq = feed.seq  # taken before the mark: a line may come twice, never not at all
    cursor.mark(cursor.position())
    yield encode_lines(cursor.tail(CONTEXT_LINES, runner.config.log.backup_count))
    from_file, next_check = False, 0.0
    try:
        while not streams.stop.is_set():
            now = time.monotonic()
            if now >= next_check:
                next_check = now + streams.tick_seconds
                end = cursor.position()  # before the lock check: free after this = nobody else wrote
                elsewhere = held_elsewhere(runner)
                if from_file and not elsewhere:
                    seq = feed.seq
                    yield encode_lines(cursor.read_new())  # the rest of what the other wrote
                    from_file = False
                elif not from_file and elsewhere:
                    from_file = True  # catch up from the last mark, taken while nobody else wrote
                elif not from_file:
                    cursor.mark(end)  # the lock was free after `end`: the feed carried all before it
            if from_file:
                lines = cursor.read_new()
                yield encode_lines(lines)
                if not lines:
                    streams.stop.wait(FILE_POLL_SECONDS)
                continue
            if feed.closed:
                return
            seq, items = feed.read_since(seq, streams.tick_seconds)
            yield encode_lines(items)
    finally:
        cursor.close()
