"""``producer.track(...)``: time one model call and emit its usage event when it ends.

Role: a context manager (sync and async) and a decorator (:class:`Track`)::

    with producer.track(agent_id="billing-bot", team="payments", project="invoices",
                        provider="openai", model="gpt-4o", task_id=task) as call:
        resp = client.chat.completions.create(...)
        call.record_response(resp)          # tokens, cache, reasoning... via finops.adapters

Guarantee: one event per call, with the status of its end (:func:`status_for_exception`); a call without recorded
usage still emits one (zero tokens, tag ``finops.usage_missing=true``); the call's own exception always propagates
unchanged, never masked by an emit error. See the README, "Integrating an agent (Python)".
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast

from finops.adapters import normalisation_tags, to_usage_fields, usage_from_response
from schemas.errors import FinopsError

__all__ = ["TrackedCall", "Track", "status_for_exception"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Fields a track() call may preset (attribution and task context); usage fields come from the response.
TRACK_FIELDS: frozenset[str] = frozenset(
    {"agent_id", "team", "project", "provider", "model", "task_id", "parent_task_id", "task_type", "environment",
     "attempt", "prompt_hash", "tags", "source", "requests"}
)  # fmt: skip


def status_for_exception(exc: BaseException) -> str:
    """Map an exception raised by a model call to a usage-event status.

    ``timeout`` for ``TimeoutError`` or a class named ``*Timeout*``, ``rate_limited`` for a class named
    ``*RateLimit*`` (as the OpenAI and Anthropic SDKs name theirs), ``cancelled`` for ``asyncio.CancelledError`` and
    ``KeyboardInterrupt``, else ``error``; a call that ends without an exception is ``ok``."""
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
        return "cancelled"
    names = [cls.__name__.lower() for cls in type(exc).__mro__]
    if isinstance(exc, TimeoutError) or any("timeout" in n for n in names):
        return "timeout"
    if any("ratelimit" in n.replace("_", "") for n in names):
        return "rate_limited"
    return "error"


class TrackedCall:
    """The call being tracked: record its usage (from a response or by hand) before the block ends."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields
        self.usage: dict[str, Any] | None = None
        self.status: str | None = None
        self.event_id: str | None = None  # set once emitted

    def record_response(self, response: Any, provider: str | None = None, *, reasoning: str = "auto") -> None:
        """Read the token usage from a provider response (SDK object, dict or JSON text) with
        ``finops.adapters.usage_from_response``; the response's model id replaces the preset one (it names the
        exact version that was billed). ``reasoning`` declares how this source's gateway counts reasoning tokens
        (``exclusive`` when its completion_tokens leave them out); every normalisation applied is named in the
        ``finops.normalised`` tag. Raises ``ProviderUsageError`` when the body has no usable usage."""
        name = provider or self.fields.get("provider")
        if not name:
            raise FinopsError("record_response needs a provider: pass provider= to track() or record_response()")
        read = usage_from_response(str(name), response, reasoning=reasoning)
        usage = to_usage_fields(read)
        tags = normalisation_tags(read)
        if tags:
            self.fields["tags"] = {**dict(self.fields.get("tags") or {}), **tags}
        if self.fields.get("provider"):
            usage.pop("provider", None)  # keep the caller's spelling; the adapter only normalises it
        self.usage = usage

    def set_usage(self, *, input_tokens: int, output_tokens: int, **more: Any) -> None:
        """Record usage by hand (canonical semantics: schemas/avro/UsageEvent.avsc). Validated at emit."""
        self.usage = {"input_tokens": input_tokens, "output_tokens": output_tokens, **more}

    def set_status(self, status: str) -> None:
        """Override the status the exit would choose (e.g. ``rate_limited`` for a call that returned a 429)."""
        self.status = status

    def build(self, status: str, latency_ms: int) -> dict[str, Any]:
        """The event fields to emit."""
        event = dict(self.fields)
        if self.usage is None:
            event.update(input_tokens=0, output_tokens=0)
            event["tags"] = {**dict(event.get("tags") or {}), "finops.usage_missing": "true"}
        else:
            event.update(self.usage)
        event["status"] = self.status or status
        event["latency_ms"] = latency_ms
        return event


class Emitter(Protocol):
    """What a :class:`Track` needs of its producer (:class:`producers.producer.UsageProducer`): ``emit`` returning
    the event id. A protocol, so this module does not import the producer that imports it."""

    def emit(self, event: dict[str, Any]) -> str: ...


class Track:
    """Context manager (sync and async) and decorator made by :meth:`UsageProducer.track`.

    As a decorator the wrapped function returns the provider's response, sync or async::

        @producer.track(agent_id="billing-bot", team="payments", project="invoices", provider="anthropic", model="x")
        def ask(prompt: str) -> anthropic.types.Message: ...

    An event that cannot be emitted raises from the ``with`` block when the call itself succeeded; when the call
    raised, the emit error is logged and the call's own exception propagates.
    """

    def __init__(self, producer: Emitter, fields: dict[str, Any]) -> None:
        unknown = set(fields) - TRACK_FIELDS
        if unknown:
            raise FinopsError(
                f"track() got unknown field(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(TRACK_FIELDS))}"
            )
        self._producer = producer
        self._fields = fields
        self._stack: list[tuple[TrackedCall, float]] = []

    # -- context manager -------------------------------------------------------------------------------------
    def __enter__(self) -> TrackedCall:
        call = TrackedCall(dict(self._fields))
        self._stack.append((call, time.perf_counter()))
        return call

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        call, started = self._stack.pop()
        latency_ms = int((time.perf_counter() - started) * 1000)
        status = "ok" if exc is None else status_for_exception(exc)
        try:
            call.event_id = self._producer.emit(call.build(status, latency_ms))
        except FinopsError:
            if exc is None:
                raise
            log.exception("could not emit the usage event of a failed model call (the call's error propagates)")

    async def __aenter__(self) -> TrackedCall:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # -- decorator -------------------------------------------------------------------------------------------
    def __call__(self, fn: F) -> F:
        """Wrap ``fn`` (sync or async) whose return value is a provider response: each call is tracked."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                track = Track(self._producer, self._fields)
                with track as call:
                    result = await fn(*args, **kwargs)
                    _record(call, result)
                return result

            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            track = Track(self._producer, self._fields)
            with track as call:
                result = fn(*args, **kwargs)
                _record(call, result)
            return result

        return cast(F, wrapper)


def _record(call: TrackedCall, result: Any) -> None:
    # In the decorator the call itself succeeded: a response without readable usage must not turn it into a
    # failure for the caller. The event still goes out, tagged finops.usage_missing, and the reason is logged.
    try:
        call.record_response(result)
    except FinopsError as err:
        log.warning("usage of a tracked call could not be read from its response: %s", err)
