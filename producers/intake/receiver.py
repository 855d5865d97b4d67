"""The intake receiver: OTLP/HTTP (``POST /v1/traces``, ``/v1/logs``, ``/v1/metrics``) -> usage events on Kafka.

Role: per request, authenticate the bearer token, check the content type, decode, map with the source family's
pure mapping (:mod:`producers.intake.families`), attribute, validate and hand every event to the producer SDK,
then wait for each one's outcome (:class:`IntakeReceiver`). OTLP/gRPC is not offered (README, "Connect your
agents").

Guarantee (DESIGN §5): a 2xx answer means every accepted event was acknowledged by Kafka or written to the SDK's
on-disk spool; when one can be neither the answer is 503 with ``Retry-After`` and the deterministic event ids
deduplicate the retry; an item that cannot become a valid event is rejected by ``partial_success``, not retried.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web

from producers.intake.calls import Attribution, Call, build_event
from producers.intake.families import Mapped, calls_from_logs, calls_from_spans
from producers.intake.litellm import (
    LiteLLMBodyError,
    map_litellm_payload,
    parse_litellm_body,
)
from producers.intake.otlp import (
    JSON,
    PROTOBUF,
    OtlpDecodeError,
    Signal,
    count_items,
    decode_request,
    encode_error,
    encode_response,
    gunzip,
    logs_of,
    media_type,
    spans_of,
)
from producers.intake.reconcile import metric_token_totals
from producers.intake.tokens import IntakeAuthError, IntakeToken, IntakeTokenStore
from producers.producer import Delivery, UsageProducer
from producers.spool import SpoolFull
from schemas.errors import ValidationFailed

__all__ = ["IntakeMetrics", "IntakeReceiver", "build_app", "build_runner"]

log = logging.getLogger(__name__)

# gRPC status codes carried in google.rpc.Status bodies.
_INVALID_ARGUMENT = 3
_UNAUTHENTICATED = 16
_UNAVAILABLE = 14


@dataclass
class IntakeMetrics:
    """Counters since start, served at ``GET /metrics`` (Prometheus text). Metric names are declared here once:

    ``finops_intake_requests_total{signal,code}``      requests answered, by HTTP status
    (Counts of what was received: a re-sent export counts again here; the ledger and its views are exact.)
    ``finops_intake_calls_total{family}``              calls turned into events and delivered or spooled
    ``finops_intake_unattributed_calls_total{family}`` of those, calls missing team or project (``unattributed``)
    ``finops_intake_unattributed_reported_cost_usd``   the reported cost of the unattributed calls (the priced cost
                                                       is in the ``v_unattributed_spend`` view)
    ``finops_intake_not_counted_total{reason}``        items with usage deliberately not counted (agent totals...)
    ``finops_intake_rejected_total{signal}``           items rejected through partial_success
    ``finops_intake_event_tokens_total{source,type}``  input / output tokens of the delivered events
    ``finops_intake_metric_tokens_total{metric,type}`` tokens the tools' metrics report (:mod:`.reconcile`): set
                                                       beside the events' to reconcile, never counted as usage
    """

    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)
    unattributed: Counter[str] = field(default_factory=Counter)
    unattributed_cost: Decimal = Decimal(0)
    not_counted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    event_tokens: Counter[tuple[str, str]] = field(default_factory=Counter)
    metric_tokens: Counter[tuple[str, str]] = field(default_factory=Counter)
    metric_points_skipped: int = 0

    def render(self) -> str:
        lines = ["# TYPE finops_intake_requests_total counter"]
        lines += [f'finops_intake_requests_total{{signal="{s}",code="{c}"}} {n}' for (s, c), n in
                  sorted(self.requests.items())]
        lines.append("# TYPE finops_intake_calls_total counter")
        lines += [f'finops_intake_calls_total{{family="{f}"}} {n}' for f, n in sorted(self.calls.items())]
        lines.append("# TYPE finops_intake_unattributed_calls_total counter")
        lines += [f'finops_intake_unattributed_calls_total{{family="{f}"}} {n}'
                  for f, n in sorted(self.unattributed.items())]
        lines.append("# TYPE finops_intake_unattributed_reported_cost_usd counter")
        lines.append(f"finops_intake_unattributed_reported_cost_usd {self.unattributed_cost}")
        lines.append("# TYPE finops_intake_not_counted_total counter")
        lines += [f'finops_intake_not_counted_total{{reason="{r}"}} {n}' for r, n in sorted(self.not_counted.items())]
        lines.append("# TYPE finops_intake_rejected_total counter")
        lines += [f'finops_intake_rejected_total{{signal="{s}"}} {n}' for s, n in sorted(self.rejected.items())]
        lines.append("# TYPE finops_intake_event_tokens_total counter")
        lines += [f'finops_intake_event_tokens_total{{source="{src}",type="{t}"}} {n}'
                  for (src, t), n in sorted(self.event_tokens.items())]
        lines.append("# TYPE finops_intake_metric_tokens_total counter")
        lines += [f'finops_intake_metric_tokens_total{{metric="{m}",type="{t}"}} {n}'
                  for (m, t), n in sorted(self.metric_tokens.items())]
        lines.append("# TYPE finops_intake_metric_points_skipped_total counter")
        lines.append(f"finops_intake_metric_points_skipped_total {self.metric_points_skipped}")
        return "\n".join(lines) + "\n"


class _Unavailable(Exception):
    """Some event was neither acknowledged nor spooled: answer 503 (retry)."""


class _Outcome:
    """The delivery outcomes of one request's events. Reports arrive on the producer's poll thread; the event loop
    is woken once, when the last one is in (one wake-up per request, not per event)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending = 0
        self._sealed = False
        self._bad: list[Delivery] = []
        self._done: asyncio.Future[list[Delivery]] = loop.create_future()

    def expect(self) -> None:
        with self._lock:
            self._pending += 1

    def forget(self) -> None:
        with self._lock:
            self._pending -= 1

    def report(self, delivery: Delivery) -> None:
        with self._lock:
            if delivery.status not in ("delivered", "spooled"):
                self._bad.append(delivery)
            self._pending -= 1
            finished = self._sealed and self._pending == 0
        if finished:
            self._loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        if not self._done.done():
            self._done.set_result(list(self._bad))

    async def wait(self) -> list[Delivery]:
        """The failed deliveries, once every expected report is in."""
        with self._lock:
            self._sealed = True
            finished = self._pending == 0
        if finished:
            self._settle()
        return await self._done


class IntakeReceiver:
    """The request handlers. ``producer`` is owned by the caller.

    One request, in this order: authenticate (``Authorization: Bearer fi_...``; missing, wrong or revoked -> 401 and
    nothing is read or written), check the content type (415), decode (400 with a ``google.rpc.Status``), map,
    attribute, validate, hand every event to the :class:`~producers.producer.UsageProducer` and wait for each
    one's outcome. A 2xx means every accepted event was acknowledged (``acks=all``) or spooled, which survives the
    death of this process (a power loss can take the spool's last ``fsync_interval``). Spool full, a permanent
    broker error or no outcome within ``delivery_timeout`` answer 503 with ``Retry-After``: exporters retry, and
    what did get through is deduplicated downstream by its event id. An item that cannot become a valid event
    (negative counts...) is rejected by ``partial_success`` (count and reason), as the OTLP specification asks.
    Metrics are decoded and acknowledged but never counted (:mod:`producers.intake.families`).
    """

    def __init__(self, producer: UsageProducer, tokens: IntakeTokenStore, *, attribution: Attribution | None = None,
                 max_body_bytes: int = 32 * 1024 * 1024, retry_after: int = 5,
                 delivery_timeout: float = 60.0) -> None:
        self.producer = producer
        self.tokens = tokens
        self.attribution = attribution or Attribution()
        self.max_body_bytes = max_body_bytes
        self.retry_after = retry_after
        self.delivery_timeout = delivery_timeout
        self.metrics = IntakeMetrics()

    # ---- helpers ------------------------------------------------------------------------------------------------
    def _answer(self, signal: str, status: int, body: bytes, content_type: str,
                headers: dict[str, str] | None = None) -> web.Response:
        self.metrics.requests[(signal, status)] += 1
        return web.Response(status=status, body=body, content_type=content_type, headers=headers)

    def _error(self, signal: str, status: int, content_type: str, grpc_code: int, message: str,
               headers: dict[str, str] | None = None) -> web.Response:
        return self._answer(signal, status, encode_error(content_type, grpc_code, message), content_type, headers)

    async def _deliver(self, calls: list[Call], token: IntakeToken) -> tuple[list[Call], list[dict[str, Any]], str]:
        """Emit every call's event and wait until each is delivered or spooled. Returns the accepted calls, their
        events and the first rejection reason (an event failing validation: nothing of it was sent). Raises
        :class:`_Unavailable` when an accepted event was neither delivered nor spooled."""
        outcome = _Outcome(asyncio.get_running_loop())
        accepted: list[Call] = []
        events: list[dict[str, Any]] = []
        reason = ""
        for call in calls:
            event = build_event(call, self.attribution, source=token.source, default_team=token.team,
                                default_project=token.project)
            outcome.expect()
            try:
                self.producer.emit(event, on_delivery=outcome.report)
            except ValidationFailed as err:  # raised before anything is sent
                outcome.forget()
                reason = reason or f"{call.family} call {call.identity[:80]}: {err}"
                continue
            except SpoolFull as err:
                outcome.forget()
                raise _Unavailable("the intake spool is full (the broker has been away for long); retry later") \
                    from err
            accepted.append(call)
            events.append(event)
        try:
            bad = await asyncio.wait_for(outcome.wait(), self.delivery_timeout)
        except TimeoutError as err:
            raise _Unavailable("events were not acknowledged by Kafka nor spooled in time; retry later") from err
        if bad:
            raise _Unavailable(f"{len(bad)} events could not be delivered ({bad[0].status}: {bad[0].error}); "
                               "retry later")
        return accepted, events, reason

    # ---- handlers -----------------------------------------------------------------------------------------------
    async def handle(self, request: web.Request, signal: Signal) -> web.Response:
        reply_type = media_type(request.headers.get("Content-Type")) or PROTOBUF
        try:
            token = self.tokens.authenticate(request.headers.get("Authorization"))
        except IntakeAuthError as err:
            return self._error(signal, 401, reply_type, _UNAUTHENTICATED, str(err),
                               {"WWW-Authenticate": 'Bearer realm="finops-intake"'})
        content_type = media_type(request.headers.get("Content-Type"))
        if content_type is None:
            return self._error(signal, 415, PROTOBUF, _INVALID_ARGUMENT,
                               f"unsupported Content-Type {request.headers.get('Content-Type')!r}: send "
                               f"{PROTOBUF} or {JSON}")
        body = await request.read()
        return await self.ingest(signal, body, content_type, request.headers.get("Content-Encoding"), token)

    async def ingest(self, signal: Signal, body: bytes, content_type: str, content_encoding: str | None,
                     token: IntakeToken) -> web.Response:
        """Decode, map, deliver and answer one authenticated OTLP body (the part of a request after auth)."""
        try:
            message = decode_request(signal, body, content_type, content_encoding=content_encoding,
                                     max_bytes=self.max_body_bytes)
        except OtlpDecodeError as err:
            return self._error(signal, 400, content_type, _INVALID_ARGUMENT, str(err))
        if signal == "metrics":
            count_items(signal, message)
            totals, skipped = metric_token_totals(message)
            self.metrics.metric_tokens.update(totals)
            self.metrics.metric_points_skipped += skipped
            return self._answer(signal, 200, encode_response(signal, content_type), content_type)
        mapped = calls_from_spans(spans_of(message)) if signal == "traces" else calls_from_logs(logs_of(message))
        try:
            calls, events, reason = await self._deliver(mapped.calls, token)
        except _Unavailable as err:
            log.warning("intake: answering 503 to source %s: %s", token.source, err)
            return self._error(signal, 503, content_type, _UNAVAILABLE, str(err),
                               {"Retry-After": str(self.retry_after)})
        rejected = len(mapped.calls) - len(calls)
        self._count(calls, events, mapped, signal, rejected)
        return self._answer(signal, 200, encode_response(signal, content_type, rejected=rejected, message=reason),
                            content_type)

    def _count(self, calls: list[Call], events: list[dict[str, Any]], mapped: Mapped, signal: str,
               rejected: int) -> None:
        m = self.metrics
        for call, event in zip(calls, events, strict=True):
            m.calls[call.family] += 1
            m.event_tokens[(event["source"], "input")] += call.input_tokens
            m.event_tokens[(event["source"], "output")] += call.output_tokens
            if "intake.unattributed" in event["tags"]:
                m.unattributed[call.family] += 1
                if call.reported_cost is not None:
                    m.unattributed_cost += call.reported_cost
        m.not_counted.update(mapped.not_counted)
        if rejected:
            m.rejected[signal] += rejected

    async def litellm(self, request: web.Request) -> web.Response:
        """LiteLLM's ``generic_api`` callback (json_array or ndjson): same auth and delivery rule as OTLP; the
        answer is JSON ``{"accepted": n, "rejected": m, "error": "..."}``."""
        def answer(status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
            self.metrics.requests[("litellm", status)] += 1
            return web.json_response(doc, status=status, headers=headers)

        try:
            token = self.tokens.authenticate(request.headers.get("Authorization"))
        except IntakeAuthError as err:
            return answer(401, {"error": str(err)}, {"WWW-Authenticate": 'Bearer realm="finops-intake"'})
        body = await request.read()
        try:
            if (request.headers.get("Content-Encoding") or "").lower() == "gzip":
                body = gunzip(body, self.max_body_bytes)
            payloads = parse_litellm_body(body)
        except (LiteLLMBodyError, OtlpDecodeError) as err:
            return answer(400, {"error": str(err)})
        mapped = Mapped()
        seen: set[str] = set()
        unusable = 0
        for payload in payloads:
            call = map_litellm_payload(payload)
            if call is None:
                unusable += 1
            else:
                mapped.add(call, seen)
        try:
            calls, events, reason = await self._deliver(mapped.calls, token)
        except _Unavailable as err:
            log.warning("intake: answering 503 to source %s: %s", token.source, err)
            return answer(503, {"error": str(err)}, {"Retry-After": str(self.retry_after)})
        rejected = len(mapped.calls) - len(calls) + unusable
        self._count(calls, events, mapped, "litellm", rejected)
        if unusable and not reason:
            reason = f"{unusable} payloads without an id or token counts"
        return answer(200, {"accepted": len(calls), "rejected": rejected, "error": reason})

    async def traces(self, request: web.Request) -> web.Response:
        return await self.handle(request, "traces")

    async def logs(self, request: web.Request) -> web.Response:
        return await self.handle(request, "logs")

    async def metrics_signal(self, request: web.Request) -> web.Response:
        return await self.handle(request, "metrics")

    async def healthz(self, request: web.Request) -> web.Response:
        stats = self.producer.stats()
        return web.json_response({"ok": True, "producer_state": stats.state, "spool_pending": stats.spool_pending})

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics.render(), content_type="text/plain")


def build_app(receiver: IntakeReceiver) -> web.Application:
    """The aiohttp application: the three OTLP paths, LiteLLM's ``/v1/litellm``, ``/healthz`` and ``/metrics``."""
    # The body limit applies to what arrives (compressed); decode_request bounds the gunzipped size too.
    app = web.Application(client_max_size=receiver.max_body_bytes)
    app.router.add_post("/v1/traces", receiver.traces)
    app.router.add_post("/v1/logs", receiver.logs)
    app.router.add_post("/v1/metrics", receiver.metrics_signal)
    app.router.add_post("/v1/litellm", receiver.litellm)
    app.router.add_get("/healthz", receiver.healthz)
    app.router.add_get("/metrics", receiver.prometheus)
    return app


def build_runner(receiver: IntakeReceiver) -> web.AppRunner:
    """The runner to serve :func:`build_app` with. aiohttp's own gunzip is off: :func:`otlp.decode_request`
    decompresses within ``max_body_bytes`` (a gzip bomb cannot take the memory) and reports a bad gzip as a 400."""
    return web.AppRunner(build_app(receiver), access_log=None, auto_decompress=False)
