"""Routing rules: which destinations an alert goes to, from YAML (or from the single-destination settings).

Role: :func:`load_routes` reads a file like ``infra/alert_routes.example.yaml`` (``destinations`` by name and ordered
``routes`` with a ``match`` and a ``to`` list) into a :class:`RoutingTable`, whose :meth:`RoutingTable.route` is pure.

Guarantee: secrets are never in the file: a destination names the environment variable holding its URL or key, and
the environment comes from the entry point; every problem in the file is reported at once, naming the route or
destination. See the README, "Budgets, anomalies, waste and enforcement".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

from alerting.channels import ChannelType, Destination
from schemas.errors import ConfigError
from schemas.models import Alert

__all__ = ["MATCH_DIMENSIONS", "Route", "RoutingTable", "build_default_routes", "load_routes", "parse_routes"]

MATCH_DIMENSIONS = ("team", "project", "severity", "kind", "state")
_TYPES: tuple[ChannelType, ...] = ("slack", "pagerduty", "webhook")
DEFAULT_PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"


@dataclass(frozen=True)
class Route:
    """One rule: ``match`` maps a dimension to the accepted values; ``to`` names destinations."""

    name: str
    match: Mapping[str, frozenset[str]]
    to: tuple[str, ...]
    continue_: bool = False

    def matches(self, alert: Alert) -> bool:
        for dim, accepted in self.match.items():
            if "*" in accepted:
                continue
            value = getattr(alert, dim)
            if value is None or value not in accepted:
                return False
        return True


@dataclass(frozen=True)
class RoutingTable:
    """Destinations by name plus ordered routes. :meth:`route` is pure.

    The file::

        destinations:
          slack-finops: {type: slack, url_env: FINOPS_SLACK_FINOPS_URL, min_interval_s: 1.0}
          pd-finops:    {type: pagerduty, routing_key_env: FINOPS_PD_FINOPS_KEY}
          audit-hook:   {type: webhook, url_env: FINOPS_AUDIT_HOOK_URL, secret_env: FINOPS_AUDIT_HOOK_SECRET}
        routes:
          - name: support-critical
            match: {team: [customer-support], severity: [critical]}
            to: [slack-finops, pd-finops]
            continue: true          # keep evaluating the next routes (default: first match wins)
          - name: default
            match: {}
            to: [slack-finops]

    A route matches when every listed dimension (``team``, ``project``, ``severity``, ``kind``, ``state``) contains
    the alert's value (a missing dimension matches anything; ``"*"`` in a list matches anything too). Routes are
    evaluated in order; the first match wins unless it says ``continue: true``; destinations are deduplicated keeping
    the first-seen order.
    """

    destinations: Mapping[str, Destination]
    routes: tuple[Route, ...] = field(default_factory=tuple)

    def route(self, alert: Alert, *, exclude: frozenset[str] = frozenset()) -> list[Destination]:
        """The destinations for ``alert`` in route order, without duplicates and without those in ``exclude``
        (broken destinations: a configuration alert must not be routed to the destination it is about)."""
        chosen: list[str] = []
        for route in self.routes:
            if not route.matches(alert):
                continue
            chosen.extend(name for name in route.to if name not in chosen and name not in exclude)
            if not route.continue_:
                break
        return [self.destinations[name] for name in chosen]


def _as_set(value: Any, where: str, problems: list[str]) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset({value})
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    problems.append(f"{where}: expected a string or a list of strings")
    return frozenset()


def _secret_from(spec: Mapping[str, Any], key: str, environ: Mapping[str, str], where: str,
                 problems: list[str], *, required: bool) -> SecretStr | None:
    env_key = f"{key}_env"
    if env_key in spec:
        var = spec[env_key]
        value = environ.get(str(var), "")
        if not value:
            if required:
                problems.append(f"{where}: environment variable {var} (from {env_key}) is unset or empty")
            return None
        return SecretStr(value)
    if key in spec and spec[key]:
        # Inline secrets are accepted for local setups, but the file must then be protected like a secret.
        return SecretStr(str(spec[key]))
    if required:
        problems.append(f"{where}: needs {env_key} (the environment variable holding it)")
    return None


def parse_routes(doc: Any, environ: Mapping[str, str], *, origin: str = "routes") -> RoutingTable:
    """Build a :class:`RoutingTable` from a parsed YAML document. Raises :class:`ConfigError` listing every
    problem (unknown type, missing secret variable, unknown destination, bad match dimension)."""
    problems: list[str] = []
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{origin}: expected a mapping with 'destinations' and 'routes'")
    destinations: dict[str, Destination] = {}
    raw_dest = doc.get("destinations") or {}
    if not isinstance(raw_dest, Mapping):
        problems.append(f"{origin}: 'destinations' must be a mapping of name -> settings")
        raw_dest = {}
    for name, spec in raw_dest.items():
        where = f"{origin}: destination {name!r}"
        if not isinstance(spec, Mapping):
            problems.append(f"{where}: expected a mapping")
            continue
        kind = spec.get("type")
        if kind not in _TYPES:
            problems.append(f"{where}: type must be one of {', '.join(_TYPES)} (got {kind!r})")
            continue
        interval = spec.get("min_interval_s")
        if interval is not None and (not isinstance(interval, (int, float)) or interval < 0):
            problems.append(f"{where}: min_interval_s must be a number >= 0")
            interval = None
        if kind == "pagerduty":
            key = _secret_from(spec, "routing_key", environ, where, problems, required=True)
            url = SecretStr(str(spec.get("url") or DEFAULT_PAGERDUTY_URL))
            if key is not None:
                destinations[str(name)] = Destination(str(name), "pagerduty", url, routing_key=key,
                                                      min_interval_s=interval,
                                                      source=str(spec.get("source") or "agent-finops"))
            continue
        url_secret = _secret_from(spec, "url", environ, where, problems, required=True)
        secret = _secret_from(spec, "secret", environ, where, problems, required=False) if kind == "webhook" \
            else None
        if url_secret is not None:
            destinations[str(name)] = Destination(str(name), kind, url_secret, secret=secret,
                                                  min_interval_s=interval)
    routes: list[Route] = []
    raw_routes = doc.get("routes") or []
    if not isinstance(raw_routes, Sequence) or isinstance(raw_routes, str):
        problems.append(f"{origin}: 'routes' must be a list")
        raw_routes = []
    for index, spec in enumerate(raw_routes):
        rname = str(spec.get("name", f"#{index}")) if isinstance(spec, Mapping) else f"#{index}"
        where = f"{origin}: route {rname}"
        if not isinstance(spec, Mapping):
            problems.append(f"{where}: expected a mapping")
            continue
        match_spec = spec.get("match") or {}
        match: dict[str, frozenset[str]] = {}
        if not isinstance(match_spec, Mapping):
            problems.append(f"{where}: match must be a mapping")
        else:
            for dim, values in match_spec.items():
                if dim not in MATCH_DIMENSIONS:
                    problems.append(f"{where}: unknown match dimension {dim!r} "
                                    f"(use {', '.join(MATCH_DIMENSIONS)})")
                    continue
                match[str(dim)] = _as_set(values, f"{where}: match.{dim}", problems)
        targets = _as_set(spec.get("to") or [], f"{where}: to", problems)
        raw_to = spec.get("to")
        ordered = [t for t in (raw_to if isinstance(raw_to, list) else [raw_to]) if t]
        for target in ordered:
            if target not in raw_dest:
                problems.append(f"{where}: unknown destination {target!r}")
        if not targets:
            problems.append(f"{where}: 'to' names no destination")
        routes.append(Route(rname, match, tuple(str(t) for t in ordered if t in destinations),
                            bool(spec.get("continue", False))))
    if problems:
        raise ConfigError("invalid alert routes:\n  " + "\n  ".join(problems))
    return RoutingTable(destinations, tuple(routes))


def load_routes(path: Path, environ: Mapping[str, str]) -> RoutingTable:
    """Read and validate the routes file. Raises :class:`ConfigError` naming the file and every problem."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read alert routes {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"alert routes {path} is not valid YAML: {err}") from err
    return parse_routes(doc, environ, origin=str(path))


def build_default_routes(*, slack_url: SecretStr | None, pagerduty_key: SecretStr | None,
                         pagerduty_url: str = DEFAULT_PAGERDUTY_URL, webhook_url: SecretStr | None = None,
                         webhook_secret: SecretStr | None = None) -> RoutingTable:
    """The table used without a routes file (the ``FINOPS_ALERTING_*`` settings): every alert to Slack and the
    webhook; critical alerts, and every resolve (so incidents close), to PagerDuty."""
    destinations: dict[str, Destination] = {}
    routes: list[Route] = []
    if slack_url is not None:
        destinations["slack"] = Destination("slack", "slack", slack_url)
    if webhook_url is not None:
        destinations["webhook"] = Destination("webhook", "webhook", webhook_url, secret=webhook_secret)
    if pagerduty_key is not None:
        destinations["pagerduty"] = Destination("pagerduty", "pagerduty", SecretStr(pagerduty_url),
                                                routing_key=pagerduty_key)
        routes.append(Route("pagerduty-critical", {"severity": frozenset({"critical"})}, ("pagerduty",),
                            continue_=True))
        # A resolve must reach PagerDuty even though a resolve is not "critical" in itself; a resolve of a key
        # never triggered there is harmless (PagerDuty ignores it) and the outbox skips it anyway.
        routes.append(Route("pagerduty-resolve", {"state": frozenset({"resolve"})}, ("pagerduty",),
                            continue_=True))
    rest = tuple(name for name in ("slack", "webhook") if name in destinations)
    if rest:
        routes.append(Route("default", {}, rest))
    return RoutingTable(destinations, tuple(routes))
