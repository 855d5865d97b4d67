"""Pure payload builders for the three channel types, and the destination they are sent to.

Role: Slack incoming webhooks (:func:`build_slack_message`), PagerDuty Events API v2 (:func:`build_pagerduty_event`)
and a generic signed webhook (:func:`build_webhook_body`, :func:`compute_webhook_signature`); each builder states
the channel facts (limits, fields, answers) its shape follows, from Slack's and PagerDuty's public docs.

Guarantee: nothing here does I/O or reads a clock: every function takes the alert (and, for the webhook signature,
the timestamp) and returns bytes and headers, so the shapes are unit-tested exactly. The Slack URL and the
PagerDuty routing key are credentials: bodies are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal
from urllib.parse import quote

from pydantic import SecretStr

from finops.http import HttpRequest
from finops.money import format_usd
from schemas.models import Alert

__all__ = [
    "ChannelType",
    "Destination",
    "PAGERDUTY_SEVERITY",
    "alert_link",
    "alert_to_json",
    "build_pagerduty_event",
    "build_request",
    "build_slack_message",
    "build_webhook_body",
    "compute_webhook_signature",
    "pagerduty_dedup_key",
    "verify_webhook_signature",
]

ChannelType = Literal["slack", "pagerduty", "webhook"]

#: Our severities -> PagerDuty's (it also knows "error", which we do not emit).
PAGERDUTY_SEVERITY: dict[str, str] = {"info": "info", "warning": "warning", "critical": "critical"}
_PD_SUMMARY_MAX = 1024
_PD_DEDUP_MAX = 255
_SLACK_HEADER_MAX = 150
_SLACK_SECTION_MAX = 3000
_SLACK_FIELD_MAX = 2000
_SLACK_FALLBACK_MAX = 3000
_TENTH = Decimal("0.1")
_SEVERITY_EMOJI = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}


@dataclass(frozen=True)
class Destination:
    """One configured place alerts go to. ``name`` is what logs and the delivery log show; the secrets (``url`` of
    Slack and webhooks, ``routing_key`` of PagerDuty, ``secret`` signing webhooks) print masked (``SecretStr``).

    ``min_interval_s`` paces requests to this destination (Slack: about one message per second per webhook;
    PagerDuty: within the routing key's rate). ``None`` takes the channel type's default.
    """

    name: str
    type: ChannelType
    url: SecretStr
    routing_key: SecretStr | None = None
    secret: SecretStr | None = None
    min_interval_s: float | None = None
    #: PagerDuty ``payload.source`` (the affected system); default "agent-finops".
    source: str = "agent-finops"

    def secrets(self) -> list[str]:
        """Every secret string of this destination, for scrubbing error texts (never for display)."""
        out = [self.url.get_secret_value()]
        for value in (self.routing_key, self.secret):
            if value is not None and value.get_secret_value():
                out.append(value.get_secret_value())
        return [s for s in out if s]

    def fingerprint(self) -> str:
        """A short digest of the destination's secrets: changes when the URL or key is rotated (which is how a
        broken destination is repaired), without storing the secret itself."""
        digest = hashlib.sha256("\x00".join([self.type, *self.secrets()]).encode("utf-8")).hexdigest()
        return digest[:16]


# ---------------------------------------------------------------------------------------------------------- helpers


def _percent(amount: Decimal | None, limit: Decimal | None) -> str | None:
    if amount is None or limit is None or limit <= 0:
        return None
    return f"{(amount * 100 / limit).quantize(_TENTH, rounding=ROUND_HALF_UP)}%"


def _mrkdwn(text: str) -> str:
    # Slack's mrkdwn control characters; everything else passes through.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def alert_link(alert: Alert, dashboard_url: str) -> str:
    """The dashboard page of an alert: ``<dashboard>/alerts/<alert_id>``."""
    return f"{dashboard_url.rstrip('/')}/alerts/{quote(alert.alert_id, safe='')}"


def _who(alert: Alert) -> str:
    parts = [f"{label} {value}" for label, value in
             (("team", alert.team), ("project", alert.project), ("agent", alert.agent_id)) if value]
    return ", ".join(parts) or "the organisation"


def _budget(alert: Alert) -> str:
    """Which budget or baseline: the policy and its period, or the anomaly baseline."""
    d = alert.details
    if alert.policy_id:
        text = alert.policy_id
        if d.get("period"):
            text += f" ({d['period']})"
        if d.get("threshold_percent"):
            text += f" at {d['threshold_percent']}%"
        return text
    if d.get("expected"):
        return f"baseline {d['expected']}"
    return "n/a"


def _actions(alert: Alert) -> str:
    if alert.state == "resolve":
        return "released (resumed)" if set(alert.actions) - {"notify"} else "none"
    return ", ".join(alert.actions) if alert.actions else "notify"


def alert_to_json(alert: Alert) -> dict[str, Any]:
    """The alert as a JSON-safe dict: Decimals as strings (exact), timestamps as ISO 8601 UTC."""
    out: dict[str, Any] = {}
    for name, value in alert.to_avro_dict().items():
        if isinstance(value, Decimal):
            out[name] = str(value)
        elif isinstance(value, datetime):
            out[name] = value.isoformat().replace("+00:00", "Z")
        else:
            out[name] = value
    return out


# ---------------------------------------------------------------------------------------------------------- Slack


def build_slack_message(alert: Alert, dashboard_url: str) -> dict[str, Any]:
    """Slack incoming-webhook message: Block Kit plus a one-line ``text`` fallback with the same facts.

    Says who (team / project / agent), how much (spend of limit, percent), which budget or baseline, the action
    taken and links the dashboard.

    Slack: ``POST`` JSON ``{"text": ..., "blocks": [...]}``. ``text`` is the fallback shown in notifications and by
    clients that cannot render blocks, so it carries the whole message in one line. Block limits: header text 150
    characters (plain_text), section text 3000, each section field 2000, at most 10 fields. mrkdwn text must escape
    ``&``, ``<`` and ``>``. The webhook URL is the credential.
    """
    link = alert_link(alert, dashboard_url)
    resolved = alert.state == "resolve"
    emoji = ":white_check_mark:" if resolved else _SEVERITY_EMOJI.get(alert.severity, "")
    headline = f"{'Resolved: ' if resolved else ''}{alert.title}"
    pct = _percent(alert.amount_usd, alert.limit_usd)
    how_much = format_usd(alert.amount_usd)
    if alert.limit_usd is not None:
        how_much += f" of {format_usd(alert.limit_usd)}" + (f" ({pct})" if pct else "")
    fallback = (f"[{alert.severity.upper()}] {headline}: {_who(alert)}; {how_much}; budget {_budget(alert)}; "
                f"action {_actions(alert)}. {link}")
    fields = [
        ("Who", _who(alert)),
        ("How much", how_much),
        ("Budget / baseline", _budget(alert)),
        ("Action taken", _actions(alert)),
        ("Severity", alert.severity),
        ("Kind", alert.kind),
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(f"{emoji} {headline}".strip(),
                                                                       _SLACK_HEADER_MAX), "emoji": True}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _cut(_mrkdwn(alert.summary), _SLACK_SECTION_MAX)}},
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": _cut(f"*{label}*\n{_mrkdwn(value)}", _SLACK_FIELD_MAX)}
            for label, value in fields
        ]},
        {"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Open in dashboard"}, "url": link,
             "action_id": "open_dashboard"},
        ]},
        {"type": "context", "elements": [
            {"type": "mrkdwn", "text": _mrkdwn(
                f"{alert.state} · {alert.occurred_at.isoformat().replace('+00:00', 'Z')} · key {alert.dedup_key}"
            )},
        ]},
    ]
    return {"text": _cut(fallback, _SLACK_FALLBACK_MAX), "blocks": blocks}


# ---------------------------------------------------------------------------------------------------------- PagerDuty


def pagerduty_dedup_key(dedup_key: str) -> str:
    """Our dedup key, or (when longer than PagerDuty's 255 characters) a prefix plus a SHA-256 of the whole key, so
    trigger and resolve still agree."""
    if len(dedup_key) <= _PD_DEDUP_MAX:
        return dedup_key
    digest = hashlib.sha256(dedup_key.encode("utf-8")).hexdigest()
    return f"{dedup_key[: _PD_DEDUP_MAX - 65]}#{digest}"


def build_pagerduty_event(alert: Alert, routing_key: str, dashboard_url: str,
                          source: str = "agent-finops") -> dict[str, Any]:
    """PagerDuty Events API v2 event: ``trigger`` with a full payload, or ``resolve`` with just the key.

    ``POST https://events.pagerduty.com/v2/enqueue`` JSON with ``routing_key``, ``event_action`` (trigger /
    acknowledge / resolve) and ``dedup_key`` (at most 255 characters; a resolve with the trigger's key closes the
    incident). A trigger needs ``payload.summary`` (at most 1024 characters), ``payload.source`` and
    ``payload.severity`` (critical, error, warning, info); ``timestamp``, ``component``, ``group``, ``class`` and
    ``custom_details`` are optional. PagerDuty answers 202 when accepted, 400 for an invalid event, 429 when the
    routing key is rate limited. The routing key is in the body, so bodies are never logged."""
    dedup = pagerduty_dedup_key(alert.dedup_key)
    if alert.state == "resolve":
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup}
    details: dict[str, Any] = {
        "alert_id": alert.alert_id,
        "summary": alert.summary,
        "who": _who(alert),
        "amount_usd": str(alert.amount_usd) if alert.amount_usd is not None else None,
        "limit_usd": str(alert.limit_usd) if alert.limit_usd is not None else None,
        "budget": _budget(alert),
        "actions": list(alert.actions),
        **{f"detail.{key}": value for key, value in sorted(alert.details.items())},
    }
    payload: dict[str, Any] = {
        "summary": _cut(alert.title, _PD_SUMMARY_MAX),
        "source": source,
        "severity": PAGERDUTY_SEVERITY.get(alert.severity, "warning"),
        "timestamp": alert.occurred_at.isoformat().replace("+00:00", "Z"),
        "class": alert.kind,
        "custom_details": {k: v for k, v in details.items() if v is not None},
    }
    component = alert.agent_id or alert.project
    if component:
        payload["component"] = component
    if alert.team:
        payload["group"] = alert.team
    link = alert_link(alert, dashboard_url)
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup,
        "payload": payload,
        "client": "agent-finops",
        "client_url": link,
        "links": [{"href": link, "text": "Alert in the agent-finops dashboard"}],
    }


# ---------------------------------------------------------------------------------------------------------- webhook


def build_webhook_body(alert: Alert, delivery_id: str, dashboard_url: str) -> bytes:
    """The generic webhook's JSON body (sorted keys, so a retry sends identical bytes)."""
    doc = {
        "type": "finops.alert",
        "version": 1,
        "delivery_id": delivery_id,
        "dashboard_url": alert_link(alert, dashboard_url),
        "alert": alert_to_json(alert),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def compute_webhook_signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, ``b"<timestamp>." + body``).

    Signed like Stripe's webhooks: header ``X-Finops-Signature`` with ``X-Finops-Timestamp`` (Unix seconds), so a
    receiver can refuse replays outside a tolerance; ``X-Finops-Delivery`` is a stable id (alert id + destination)
    the receiver may dedupe on, because delivery is at least once."""
    mac = hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify_webhook_signature(secret: bytes, timestamp: int, body: bytes, signature: str, *, now: int,
                             tolerance_s: int = 300) -> bool:
    """What a receiver runs: the signature matches (constant-time) and the timestamp is within ``tolerance_s`` of
    ``now`` (Unix seconds), so a captured request cannot be replayed later."""
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = compute_webhook_signature(secret, timestamp, body)
    return hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8", "replace"))


# ---------------------------------------------------------------------------------------------------------- dispatch


def build_request(destination: Destination, alert: Alert, *, dashboard_url: str, delivery_id: str,
                  timestamp: int) -> HttpRequest:
    """The HTTP request that delivers ``alert`` to ``destination``. ``timestamp`` (Unix seconds) is only used by the
    webhook signature; pass the attempt's time so each retry is signed fresh."""
    json_headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "agent-finops-alerting/1"}
    url = destination.url.get_secret_value()
    if destination.type == "slack":
        body = json.dumps(build_slack_message(alert, dashboard_url), ensure_ascii=False).encode("utf-8")
        return HttpRequest(url, body, json_headers)
    if destination.type == "pagerduty":
        key = destination.routing_key.get_secret_value() if destination.routing_key else ""
        event = build_pagerduty_event(alert, key, dashboard_url, destination.source)
        return HttpRequest(url, json.dumps(event, ensure_ascii=False).encode("utf-8"), json_headers)
    body = build_webhook_body(alert, delivery_id, dashboard_url)
    headers = {**json_headers, "X-Finops-Delivery": delivery_id, "X-Finops-Timestamp": str(timestamp),
               "X-Finops-Event": f"alert.{alert.state}"}
    if destination.secret is not None and destination.secret.get_secret_value():
        headers["X-Finops-Signature"] = compute_webhook_signature(
            destination.secret.get_secret_value().encode("utf-8"), timestamp, body)
    return HttpRequest(url, body, headers)
