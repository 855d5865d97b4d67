"""A local HTTP receiver standing in for Slack and PagerDuty, for the demo and the latency bench (the shell).

Each POST is appended to a JSON-lines log and handed to a callback; it answers 202 like PagerDuty, 200 like Slack.
Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from finops.clock import utc_now

__all__ = ["alert_summary", "start_receiver"]


class _Receiver(BaseHTTPRequestHandler):
    """Records every POST as one JSON line and answers 202 like PagerDuty / 200 like Slack."""

    log_path: Path
    on_record: Callable[[dict[str, Any]], None] | None = None
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        try:
            payload: Any = json.loads(body)
        except ValueError:
            payload = body.decode("utf-8", "replace")
        channel = "pagerduty" if "pagerduty" in self.path else "slack" if "slack" in self.path else "webhook"
        record = {"at": utc_now().isoformat(timespec="milliseconds"), "channel": channel, "path": self.path,
                  "payload": payload}
        with self.lock, open(self.log_path, "a") as out:
            out.write(json.dumps(record) + "\n")
        if self.on_record is not None:
            self.on_record(record)
        self.send_response(202 if channel == "pagerduty" else 200)
        self.end_headers()
        self.wfile.write(b'{"status":"success"}' if channel == "pagerduty" else b"ok")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server API
        return


def start_receiver(port: int, log_path: Path,
                   on_record: Callable[[dict[str, Any]], None] | None = None) -> ThreadingHTTPServer:
    """Serve the stand-in Slack / PagerDuty on 127.0.0.1:``port`` in a daemon thread; each POST is appended to
    ``log_path`` as a JSON line and passed to ``on_record``. Raises OSError when the port is taken."""
    attrs: dict[str, Any] = {"log_path": log_path, "on_record": staticmethod(on_record) if on_record else None}
    handler = type("Receiver", (_Receiver,), attrs)
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, name="demo-receiver", daemon=True).start()
    return server


def alert_summary(record: dict[str, Any]) -> str:
    """One line for a received notification: Slack's text or PagerDuty's summary and action."""
    payload = record.get("payload")
    if not isinstance(payload, dict):
        return str(payload)[:160]
    if record.get("channel") == "pagerduty":
        inner = payload.get("payload") or {}
        return f"{payload.get('event_action', '?')}: {inner.get('summary', '') if isinstance(inner, dict) else ''}"
    text = payload.get("text") or ""
    return str(text).splitlines()[0][:200] if text else json.dumps(payload)[:160]
