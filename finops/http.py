"""The one HTTP client of agent-finops' outgoing notifications: a request, an answer and a transport.

Alert deliveries (Slack, PagerDuty, webhooks) and governance's review digests post through :class:`HttpTransport`;
:class:`UrllibTransport` is the standard-library implementation (no extra dependency), tests inject their own.
A transport returns every HTTP answer, 4xx and 5xx included, and raises :class:`TransportError` only when no answer
came; what to do with the answer (retry, give up) is the caller's policy (:mod:`finops.retry`). URLs and bodies may
hold secrets and stay out of ``repr``.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from schemas.errors import FinopsError

__all__ = ["HttpRequest", "HttpResponse", "HttpTransport", "TransportError", "UrllibTransport"]


class TransportError(FinopsError):
    """No HTTP answer: timeout, refused or reset connection. ``timeout`` tells the two apart for the log."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


@dataclass(frozen=True)
class HttpRequest:
    """A request ready to send. ``url`` and ``body`` may hold secrets, so they stay out of ``repr``."""

    url: str = field(repr=False)
    body: bytes = field(repr=False)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        lower = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lower:
                return value
        return None


class HttpTransport(Protocol):
    def post(self, request: HttpRequest, timeout: float) -> HttpResponse:
        """Send ``request``; return any HTTP answer (including 4xx/5xx); raise :class:`TransportError` when none
        came (timeout, connection refused or reset)."""
        ...


class UrllibTransport:
    """HTTP POST with the standard library (no extra dependency; one request at a time per lane)."""

    def post(self, request: HttpRequest, timeout: float) -> HttpResponse:
        req = urllib.request.Request(request.url, data=request.body, headers=request.headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - URL comes from config
                return HttpResponse(resp.status, dict(resp.headers.items()), resp.read(64 * 1024))
        except urllib.error.HTTPError as err:
            try:
                body = err.read(64 * 1024)
            except Exception:  # noqa: BLE001 - the status is what matters
                body = b""
            return HttpResponse(err.code, dict(err.headers.items()) if err.headers else {}, body)
        except TimeoutError as err:
            raise TransportError("timed out waiting for the response", timeout=True) from err
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise TransportError("timed out connecting", timeout=True) from err
            raise TransportError(f"connection failed: {type(reason).__name__}: {reason}") from err
        except (ConnectionError, OSError) as err:
            raise TransportError(f"connection failed: {type(err).__name__}: {err}") from err

