"""A real threaded HTTP server on 127.0.0.1 that records requests and answers from a script.

Each path has a queue of scripted answers; when it is empty the default answer (200) is used. An answer is a
:class:`Reply`: a status with headers and body, or ``hang`` (hold the connection without answering until released
or ``hang_s`` passes, then drop it). Every request is recorded with method, path, headers, body, the answer given
and when; :meth:`HttpReceiver.wait_for` polls a predicate over the records with a deadline (no sleeps in tests).
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hang: bool = False
    hang_s: float = 30.0


OK = Reply(200)


def rate_limited(retry_after: str) -> Reply:
    return Reply(429, {"Retry-After": retry_after}, b"rate_limited")


SERVER_ERROR = Reply(500, body=b"internal error")
GONE = Reply(410, body=b"channel_is_archived")
HANG = Reply(hang=True)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None  # None: hung, no answer
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


class HttpReceiver:
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self.default = OK
        self.records: list[Recorded] = []
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                return

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                reply = receiver._next(self.path)
                record = Recorded("POST", self.path, {k: v for k, v in self.headers.items()}, body,
                                  None if reply.hang else reply.status, time.monotonic())
                with receiver._lock:
                    receiver.records.append(record)
                    receiver._lock.notify_all()
                if reply.hang:
                    receiver._release.wait(reply.hang_s)
                    self.close_connection = True
                    return
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="http-receiver", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def script(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts[path].extend(replies)

    def _next(self, path: str) -> Reply:
        with self._lock:
            queue = self._scripts.get(path)
            return queue.popleft() if queue else self.default

    def requests(self, path: str | None = None, *, status: int | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.records if (path is None or r.path == path)
                    and (status is None or r.status == status)]

    def delivered(self, path: str) -> list[Recorded]:
        """Requests on ``path`` answered 2xx: what the destination actually accepted."""
        with self._lock:
            return [r for r in self.records if r.path == path and r.status is not None and 200 <= r.status < 300]

    def wait_for(self, predicate: Callable[[HttpReceiver], bool], timeout: float = 15.0,
                 what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                         f"got {[(r.path, r.status) for r in self.records]}")
                self._lock.wait(min(left, 0.1))

    def start(self) -> HttpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def running_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()
