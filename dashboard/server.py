"""The HTTP API (JSON under ``/api/``) and the web dashboard, on aiohttp.

Role: the auth middleware turns the bearer token (or the HttpOnly cookie the login page sets) into a
:class:`~dashboard.auth.Principal`; handlers check the role for writes and pass the principal's
:class:`~dashboard.auth.Scope` into :mod:`dashboard.queries`, where ClickHouse filters every row. Pages are one
static shell that reads the API, so a page shows exactly what the API returns for the caller (:func:`build_app`).

Guarantee: every write (control, budgets, approvals, token revocation) is role-checked and audited in
``admin_audit``, refused ones too; cookie-authenticated writes need ``X-Finops-Request: 1``, which with
``SameSite=Strict`` keeps other sites from writing on a signed-in browser's behalf. README, "Dashboard and API".
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from aiohttp import web

from dashboard import queries
from dashboard.auth import (
    AccessError,
    AuthenticationError,
    PermissionDeniedError,
    Principal,
    TokenStore,
    audit_row,
)
from dashboard.metrics import MetricSample, collect_clickhouse_metrics, collect_kafka_metrics, render_prometheus
from dashboard.params import ParameterError, month_bounds, parse_minutes, parse_request_params
from dashboard.store import Store, StoreQueryError
from finops.clock import as_utc, utc_now
from finops.kafka.clients import Role, build_producer
from schemas.errors import FinopsError, ValidationFailed
from schemas.models import BudgetPolicy, ControlCommand, sign
from schemas.wire import AvroCodec

log = logging.getLogger(__name__)

__all__ = ["DashboardConfig", "KafkaPublisher", "Publisher", "PublishError", "build_app", "json_dumps"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
COOKIE = "finops_token"
CSRF_HEADER = "X-Finops-Request"
PAGES = ("/", "/teams", "/teams/{team}", "/agents", "/agents/{agent_id}", "/models", "/budgets", "/alerts",
         "/recommendations", "/admin", "/tasks", "/bills")  # and /alerts/{alert_id}, which checks the alert is visible


class PublishError(FinopsError):
    """A command or policy could not be published to Kafka (HTTP 503: try again when the broker is back)."""


class Publisher(Protocol):
    """Sends one record to a topic and returns once the broker acknowledged it (or raises :class:`PublishError`)."""

    def publish(self, topic: str, key: str, value: bytes) -> None: ...


class KafkaPublisher:
    """An idempotent confluent-kafka producer (acks=all) that waits for each delivery: control commands and policies
    are rare and must not be reported as sent before the broker has them."""

    def __init__(self, kafka_config: Mapping[str, Any], timeout: float = 10.0) -> None:
        self._producer = build_producer(kafka_config, Role.DASHBOARD)
        self._timeout = timeout

    def publish(self, topic: str, key: str, value: bytes) -> None:
        errors: list[Any] = []
        self._producer.produce(topic, key=key.encode(), value=value,
                               on_delivery=lambda err, _msg: errors.append(err) if err else None)
        remaining = self._producer.flush(self._timeout)
        if remaining or errors:
            raise PublishError(f"Kafka did not acknowledge the record on {topic}: "
                               f"{errors[0] if errors else 'timed out'}; is the broker up?")

    def close(self) -> None:
        self._producer.flush(self._timeout)


@dataclass
class DashboardConfig:
    """Everything the app needs, built by ``finops serve`` (or a test)."""

    store: Store
    clock: Callable[[], datetime] = lambda: utc_now()
    publisher: Publisher | None = None
    control_topic: str = "agent.control.v1"
    policies_topic: str = "finops.policies.v1"
    signing_key_id: str = "k1"
    signing_secret: bytes | None = field(default=None, repr=False)
    kafka_config: Mapping[str, Any] | None = field(default=None, repr=False)
    consumer_groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    dlq_topic: str = "agent.usage.dlq.v1"
    refresh_seconds: float = 5.0

    @property
    def tokens(self) -> TokenStore:
        return TokenStore(self.store)


CONFIG = web.AppKey("config", DashboardConfig)
PRINCIPAL = web.RequestKey("principal", Principal)
PARAMS = web.RequestKey("params", dict)


# ---- JSON --------------------------------------------------------------------------------------------------------
def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        # money as a string, exact; 'f' so that a Decimal(38, 12) zero is 0.000000000000, not 0E-12
        return format(value, "f")
    if isinstance(value, datetime):
        return as_utc(value).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (set, tuple, frozenset)):
        return list(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def json_dumps(value: Any) -> str:
    return json.dumps(value, default=_default, separators=(",", ":"))


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(text=json_dumps(value), status=status, content_type="application/json")


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return _json({"error": message, **extra}, status=status)


# ---- middleware --------------------------------------------------------------------------------------------------
def _presented_token(request: web.Request) -> tuple[str | None, bool]:
    """The token and whether it came from the cookie (cookie writes need the CSRF header)."""
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip(), False
    cookie = request.cookies.get(COOKIE)
    return (cookie, True) if cookie else (None, False)


_PUBLIC = {"/api/session", "/healthz", "/metrics", "/login"}


@web.middleware
async def _auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    path = request.path
    is_api = path.startswith("/api/")
    if path in _PUBLIC or path.startswith("/static/"):
        return await handler(request)
    config = request.app[CONFIG]
    token, from_cookie = _presented_token(request)
    try:
        if token is None:
            raise AuthenticationError("missing token: send Authorization: Bearer <token> or sign in")
        principal = await asyncio.to_thread(config.tokens.authenticate, token)
    except AuthenticationError as err:
        if is_api:
            return _error(401, str(err))
        # the path as sent (percent-encoded), encoded again as a query value: an alert id's ':', '/', '&' or '#'
        # survive the round trip through the login page
        raise web.HTTPFound(f"/login?next={quote(request.rel_url.raw_path, safe='')}") from None
    except StoreQueryError as err:
        log.error("token check failed: %s", err)
        return _error(503, "the analytics store did not answer; try again")
    if is_api and request.method not in ("GET", "HEAD") and from_cookie and request.headers.get(CSRF_HEADER) != "1":
        return _error(403, f"a signed-in browser write needs the {CSRF_HEADER}: 1 header")
    request[PRINCIPAL] = principal
    return await handler(request)


@web.middleware
async def _params_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Parse the matched route's parameters (:mod:`dashboard.params`) before any handler runs, so every API route is
    checked by the one table, unknown query parameters included; a page's query string is the page script's."""
    resource = request.match_info.route.resource
    if resource is not None and not request.path.startswith("/static/"):
        query = request.query if request.path.startswith("/api/") else {}
        request[PARAMS] = parse_request_params(resource.canonical, request.match_info, query)
    return await handler(request)


@web.middleware
async def _error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except AccessError as err:
        return _error(err.status, str(err))
    except ParameterError as err:
        return _error(400, str(err), parameter=err.parameter)
    except ValidationFailed as err:
        return _error(400, str(err), problems=[{"field": p.field, "rule": p.rule, "message": p.message}
                                               for p in err.problems])
    except PublishError as err:
        return _error(503, str(err))
    except StoreQueryError as err:
        log.error("%s %s: %s", request.method, request.path, err)
        return _error(502, "the analytics store refused the query; see the server log")
    except FinopsError as err:
        return _error(400, str(err))


def _principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def _param(request: web.Request, name: str) -> Any:
    """A parameter the route declared in :data:`dashboard.params.ROUTE_PARAMS`, already checked."""
    return request[PARAMS][name]


async def _run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


# ---- pages and session -------------------------------------------------------------------------------------------
async def _page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})


async def _login_page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "login.html", headers={"Cache-Control": "no-store"})


async def _session_create(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    token = str(body.get("token", ""))
    config = request.app[CONFIG]
    principal = await _run(config.tokens.authenticate, token)
    response = _json(principal.as_json())
    response.set_cookie(COOKIE, token.strip(), httponly=True, samesite="Strict", path="/",
                        secure=request.secure, max_age=12 * 3600)
    return response


async def _session_delete(request: web.Request) -> web.StreamResponse:
    response = _json({"signed_out": True})
    response.del_cookie(COOKIE, path="/")
    return response


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FinopsError("the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise FinopsError("the request body must be a JSON object")
    return body


# ---- reads -------------------------------------------------------------------------------------------------------
async def _me(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    return _json({**_principal(request).as_json(), "refresh_seconds": config.refresh_seconds})


async def _overview(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    return _json(await _run(queries.overview, config.store, _principal(request).scope, config.clock()))


async def _teams(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    return _json({"teams": await _run(queries.teams, config.store, _principal(request).scope, config.clock())})


async def _team(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    team = _param(request, "team")
    detail = await _run(queries.team_detail, config.store, _principal(request).scope, team, config.clock())
    if detail is None:
        return _error(404, f"no team {team!r} among your teams")
    return _json(detail)


async def _agents(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    team = _param(request, "team")
    rows = await _run(queries.agents, config.store, _principal(request).scope, config.clock(), team)
    return _json({"agents": rows})


async def _agent(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    agent_id = _param(request, "agent_id")
    detail = await _run(queries.agent_detail, config.store, _principal(request).scope, agent_id, config.clock())
    if detail is None:
        return _error(404, f"no agent {agent_id!r} among your teams")
    return _json(detail)


async def _models(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    return _json(await _run(queries.models, config.store, _principal(request).scope, config.clock()))


async def _budgets(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    return _json({"budgets": await _run(queries.budgets, config.store, _principal(request).scope)})


async def _alerts(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    rows = await _run(
        queries.alerts, config.store, _principal(request).scope, config.clock(),
        kind=_param(request, "kind"), team=_param(request, "team"),
        agent_id=_param(request, "agent"), limit=_param(request, "limit"),
    )
    return _json({"alerts": rows})


async def _alert(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    alert_id = _param(request, "alert_id")
    detail = await _run(queries.alert_detail, config.store, _principal(request).scope, alert_id)
    if detail is None:
        return _error(404, f"no alert {alert_id!r} among your teams")
    return _json(detail)


async def _alert_page(request: web.Request) -> web.StreamResponse:
    """The page an alert notification links to (:func:`alerting.channels.alert_link`): the shell, which shows
    ``/api/alerts/<id>``; answered 404 when the alert is not among the caller's teams, so the link says so too."""
    config = request.app[CONFIG]
    visible = await _run(queries.alert_in_scope, config.store, _principal(request).scope, _param(request, "alert_id"))
    return web.FileResponse(STATIC_DIR / "index.html", status=200 if visible else 404,
                            headers={"Cache-Control": "no-store"})


async def _recommendations(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    return _json(await _run(queries.recommendations, config.store, _principal(request).scope, config.clock()))


async def _approvals(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    return _json({"approvals": await _run(queries.approvals, config.store, _principal(request).scope,
                                          config.clock())})


async def _tasks(request: web.Request) -> web.StreamResponse:
    """Task trees (cost per task with its sub-agents): ``days`` 1-90 (30), ``limit`` 1-500 (50), ``team``,
    ``task`` (the tree holding it); checked by :data:`dashboard.params.ROUTE_PARAMS`."""
    config = request.app[CONFIG]
    days, task = _param(request, "days"), _param(request, "task")
    result = await _run(queries.task_trees, config.store, _principal(request).scope, config.clock(),
                        days=days, team=_param(request, "team"), task=task, limit=_param(request, "limit"))
    if result is None:
        return _error(404, f"no task {task!r} among your teams in the last {days} days")
    return _json(result)


async def _bills(request: web.Request) -> web.StreamResponse:
    """Bill vs ledger for ``month`` (default: the current one), from the latest ``finops bills reconcile`` run:
    finops admins see every cell, team leads their teams' projects; other roles get 403."""
    config = request.app[CONFIG]
    principal = _principal(request)
    month = _param(request, "month") or config.clock().strftime("%Y-%m")
    await _require(config, principal, "bills.read", "bills.read", month, {})
    return _json(await _run(queries.bill_vs_ledger, config.store, principal.scope, month,
                            limit=_param(request, "limit")))


# ---- writes ------------------------------------------------------------------------------------------------------
async def _audit(config: DashboardConfig, principal: Principal, action: str, target: str, outcome: str,
                 details: Mapping[str, Any]) -> None:
    row = audit_row(principal, action, target, outcome, json_dumps(details), config.clock())
    await _run(config.store.insert, "admin_audit", [row])


async def _require(config: DashboardConfig, principal: Principal, action: str, audit_action: str, target: str,
                   details: Mapping[str, Any]) -> None:
    """Check the role; a refusal is audited, then raised (403)."""
    try:
        principal.require(action)  # type: ignore[arg-type]
    except PermissionDeniedError:
        await _audit(config, principal, audit_action, target, "denied", {**details, "why": "role"})
        raise


async def _require_target(config: DashboardConfig, principal: Principal, scope_type: str, scope_value: str,
                          audit_action: str, details: Mapping[str, Any]) -> None:
    """Check the target (team, project, agent, tag) is within the caller's teams; audit and 403 otherwise."""
    scope = principal.scope
    if scope_type == "team":
        ok = scope.covers(scope_value)
    elif scope_type == "project":
        ok = scope.all_teams or await _run(queries.project_in_scope, config.store, scope, scope_value)
    elif scope_type == "agent":
        ok = scope.all_teams or await _run(queries.agent_owner, config.store, scope, scope_value) is not None
    else:  # tag scopes cut across teams
        ok = scope.all_teams
    if not ok:
        target = f"{scope_type}:{scope_value}"
        await _audit(config, principal, audit_action, target, "denied", {**details, "why": "outside your teams"})
        raise PermissionDeniedError(f"{target} is outside your teams")


async def _covers_whole_scope(config: DashboardConfig, principal: Principal, scope_type: str,
                              scope_value: str) -> bool:
    """Whether every team (and project) a budget scope covers is within the caller's scope. Stricter than
    :func:`_require_target` (one visible team is not enough): a budget on a project or an agent that another team
    also spends under would count, alert on and enforce against that team too."""
    scope = principal.scope
    if scope.all_teams:
        return True
    pairs = await _run(queries.scope_attribution, config.store, scope_type, scope_value)
    if not pairs:  # a tag scope, or a project / agent with no spend yet: no team can be shown to own it
        return False
    return all(scope.covers(team, project or None) for team, project in pairs)


async def _require_budget_owner(config: DashboardConfig, principal: Principal, policy_id: str, scope_type: str,
                                scope_value: str, details: Mapping[str, Any]) -> None:
    """A budget write must stay within the caller's teams on both sides: the new scope, and the scope of the policy
    it replaces when ``policy_id`` exists (else reusing another team's ``policy_id`` takes that budget over, since
    the compacted policy topic keeps only the latest version). finops admins may do anything. Audited and 403."""
    new_target = f"{scope_type}:{scope_value}"
    if not await _covers_whole_scope(config, principal, scope_type, scope_value):
        await _audit(config, principal, "budget.put", policy_id, "denied",
                     {**details, "scope": new_target, "why": "scope outside your teams"})
        raise PermissionDeniedError(f"{new_target} is outside your teams (a budget's scope must lie wholly within "
                                    "them)")
    existing = await _run(queries.budget_scope, config.store, policy_id)
    if existing is None or existing == (scope_type, scope_value):
        return
    old_target = f"{existing[0]}:{existing[1]}"
    if not await _covers_whole_scope(config, principal, *existing):
        await _audit(config, principal, "budget.put", policy_id, "denied",
                     {**details, "scope": new_target, "existing_scope": old_target,
                      "why": "existing policy outside your teams"})
        raise PermissionDeniedError(f"budget {policy_id} exists with scope {old_target}, which is outside your teams: "
                                    "choose another policy_id (a finops_admin may re-scope it)")


async def _control(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    principal = _principal(request)
    body = await _body(request)
    scope_type, scope_value = str(body.get("scope_type", "")), str(body.get("scope_value", ""))
    target = f"{scope_type}:{scope_value}"
    await _require(config, principal, "control.issue", "control.issue", target, {"action": body.get("action")})
    if scope_type not in ("agent", "team", "project"):
        raise FinopsError("scope_type must be agent, team or project")
    await _require_target(config, principal, scope_type, scope_value, "control.issue",
                          {"action": body.get("action")})
    if config.publisher is None or not config.signing_secret:
        return _error(503, "control commands are disabled here: configure FINOPS_CONTROL_SIGNING_KEY and Kafka")
    now = config.clock()
    expires = parse_minutes("expires_in_minutes", body.get("expires_in_minutes"))
    command = ControlCommand.model_validate({
        "command_id": str(uuid.uuid4()), "scope_type": scope_type, "scope_value": scope_value,
        "action": body.get("action"), "rate_per_minute": body.get("rate_per_minute"),
        "target_model": body.get("target_model"), "reason": str(body.get("reason", "")).strip(),
        "issued_by": principal.subject, "issued_at": now,
        "expires_at": now + timedelta(minutes=expires) if expires else None,
        "key_id": "", "signature": "",
    })
    signed = sign(command, config.signing_key_id, config.signing_secret)
    value = AvroCodec().encode(signed.to_avro_dict(), "ControlCommand")
    details = {"command_id": signed.command_id, "action": signed.action, "reason": signed.reason,
               "rate_per_minute": signed.rate_per_minute, "target_model": signed.target_model}
    try:
        await _run(config.publisher.publish, config.control_topic, target, value)
    except PublishError:
        await _audit(config, principal, "control.issue", target, "failed", details)
        raise
    await _audit(config, principal, "control.issue", target, "ok", details)
    return _json({"command_id": signed.command_id, "status": "published", "topic": config.control_topic}, 202)


async def _budget_put(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    principal = _principal(request)
    body = await _body(request)
    policy_id = str(body.get("policy_id", ""))
    await _require(config, principal, "budget.write", "budget.put", policy_id, {"limit_usd": body.get("limit_usd")})
    scope_type, scope_value = str(body.get("scope_type", "")), str(body.get("scope_value", ""))
    await _require_budget_owner(config, principal, policy_id, scope_type, scope_value,
                                {"limit_usd": body.get("limit_usd")})
    if config.publisher is None:
        return _error(503, "budget changes are disabled here: configure Kafka (FINOPS_KAFKA_BOOTSTRAP)")
    limit = body.get("limit_usd")
    if isinstance(limit, float):
        raise FinopsError("limit_usd must be a string or an integer (money is never a float)")
    version = await _run(queries.next_budget_version, config.store, policy_id)
    fields = {k: v for k, v in body.items() if k not in ("version", "updated_at")}
    policy = BudgetPolicy.model_validate({**fields, "version": version, "updated_at": config.clock()})
    value = AvroCodec().encode(policy.to_avro_dict(), "BudgetPolicy")
    details = {"policy_id": policy.policy_id, "version": version, "scope": f"{scope_type}:{scope_value}",
               "limit_usd": policy.limit_usd, "period": policy.period, "mode": policy.mode}
    try:
        await _run(config.publisher.publish, config.policies_topic, policy.policy_id, value)
    except PublishError:
        await _audit(config, principal, "budget.put", policy.policy_id, "failed", details)
        raise
    await _audit(config, principal, "budget.put", policy.policy_id, "ok", details)
    return _json({"policy_id": policy.policy_id, "version": version, "status": "published"}, 202)


async def _approval_decide(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    principal = _principal(request)
    alert_id = _param(request, "alert_id")
    body = await _body(request)
    decision = body.get("decision")
    await _require(config, principal, "approval.decide", "approval.decide", alert_id, {"decision": decision})
    if decision not in ("approve", "deny"):
        raise FinopsError("decision must be approve or deny")
    alert = await _run(queries.alert_in_scope, config.store, principal.scope, alert_id)
    if alert is None or alert["kind"] != "approval":
        await _audit(config, principal, "approval.decide", alert_id, "denied",
                     {"decision": decision, "why": "no such approval in your teams"})
        return _error(404, f"no approval request {alert_id!r} among your teams")
    details = {"decision": decision, "note": str(body.get("note", ""))[:500], "team": alert["team"],
               "agent_id": alert["agent_id"]}
    await _audit(config, principal, "approval.decide", alert_id, "ok", details)
    return _json({"alert_id": alert_id, "decision": decision})


async def _tokens(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    principal = _principal(request)
    await _require(config, principal, "admin", "token.list", "", {})
    return _json({"tokens": [t.as_json() for t in await _run(config.tokens.list)]})


async def _token_revoke(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    principal = _principal(request)
    token_id = _param(request, "token_id")
    await _require(config, principal, "admin", "token.revoke", token_id, {})
    revoked = await _run(config.tokens.revoke, token_id, now=config.clock())
    await _audit(config, principal, "token.revoke", token_id, "ok" if revoked else "failed",
                 {"revoked": revoked})
    if not revoked:
        return _error(404, f"no active token {token_id!r}")
    return _json({"token_id": token_id, "revoked": True})


async def _audit_log(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    principal = _principal(request)
    await _require(config, principal, "admin", "audit.read", "", {})
    return _json({"audit": await _run(queries.audit, config.store, _param(request, "limit"))})


async def _chargeback(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    principal = _principal(request)
    month = _param(request, "month") or config.clock().strftime("%Y-%m")
    await _require(config, principal, "admin", "report.chargeback", month, {})
    start, end = month_bounds(month)
    rows = await _run(queries.chargeback, config.store, start, end)
    await _audit(config, principal, "report.chargeback", month, "ok", {"rows": len(rows)})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["month", "team", "project", "cost_usd", "calls", "input_tokens", "output_tokens"])
    for row in rows:
        writer.writerow([month, row["team"], row["project"], format(row["cost_usd"], "f"), row["calls"],
                         row["input_tokens"], row["output_tokens"]])
    return web.Response(text=out.getvalue(), content_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="chargeback-{month}.csv"'})


# ---- health and metrics --------------------------------------------------------------------------------------------
async def _healthz(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    ok = await _run(config.store.ping)
    return _json({"status": "ok" if ok else "degraded", "clickhouse": ok, "store": config.store.where},
                 status=200 if ok else 503)


async def _metrics(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    started = utc_now()
    samples: list[MetricSample] = list(await _run(collect_clickhouse_metrics, config.store, config.clock()))
    if config.kafka_config is not None:
        samples.extend(await _run(collect_kafka_metrics, config.kafka_config, config.consumer_groups,
                                  config.dlq_topic))
    samples.append(MetricSample("finops_scrape_duration_seconds",
                                (utc_now() - started).total_seconds()))
    return web.Response(text=render_prometheus(samples), content_type="text/plain",
                        headers={"X-Content-Type-Options": "nosniff"}, charset="utf-8")


@web.middleware
async def _security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    response = await handler(request)
    # Everything is served from here (no CDN): the page may load only its own scripts and styles.
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


def build_app(config: DashboardConfig) -> web.Application:
    """The aiohttp application: pages, ``/api/...``, ``/healthz`` and ``/metrics``.

    Queries are blocking (clickhouse-connect is synchronous, and its async client does not work on chdb), so they
    run on the default thread pool and the event loop keeps serving. Writes, all audited in ``admin_audit``:

    * ``POST /api/control``            operator, finops_admin: a signed ControlCommand on ``agent.control.v1``;
    * ``POST /api/budgets``            team_lead (their teams: the new scope and an existing policy's),
                                       finops_admin: a BudgetPolicy on ``finops.policies.v1``;
    * ``POST /api/approvals/{id}``     team_lead (their teams), finops_admin: approve / deny an approval request;
    * ``POST /api/tokens/{id}/revoke`` finops_admin.

    Pages are one static shell (``static/index.html`` + ``app.js``) that reads its data from the API and polls it.
    """
    app = web.Application(middlewares=[_security_headers, _error_middleware, _auth_middleware, _params_middleware],
                          client_max_size=64 * 1024)
    app[CONFIG] = config
    for path in PAGES:
        app.router.add_get(path, _page)
    app.router.add_get("/alerts/{alert_id}", _alert_page)
    app.router.add_get("/login", _login_page)
    app.router.add_static("/static/", STATIC_DIR, show_index=False)
    app.router.add_post("/api/session", _session_create)
    app.router.add_delete("/api/session", _session_delete)
    app.router.add_get("/api/me", _me)
    app.router.add_get("/api/overview", _overview)
    app.router.add_get("/api/teams", _teams)
    app.router.add_get("/api/teams/{team}", _team)
    app.router.add_get("/api/agents", _agents)
    app.router.add_get("/api/agents/{agent_id}", _agent)
    app.router.add_get("/api/models", _models)
    app.router.add_get("/api/budgets", _budgets)
    app.router.add_post("/api/budgets", _budget_put)
    app.router.add_get("/api/alerts", _alerts)
    app.router.add_get("/api/alerts/{alert_id}", _alert)
    app.router.add_get("/api/recommendations", _recommendations)
    app.router.add_get("/api/approvals", _approvals)
    app.router.add_get("/api/tasks", _tasks)
    app.router.add_get("/api/bills", _bills)
    app.router.add_post("/api/approvals/{alert_id}", _approval_decide)
    app.router.add_post("/api/control", _control)
    app.router.add_get("/api/tokens", _tokens)
    app.router.add_post("/api/tokens/{token_id}/revoke", _token_revoke)
    app.router.add_get("/api/audit", _audit_log)
    app.router.add_get("/api/reports/chargeback", _chargeback)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    return app
