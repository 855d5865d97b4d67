"""Every request parameter of the API, parsed and checked in one place (pure: no I/O, no clock).

Each route declares the parameters it reads (:data:`ROUTE_PARAMS`: path segments and query string, with their parser
and default); :func:`parse_request_params` applies the table to one request. A missing value takes its default; a
bad value (not an integer, out of range, a month ClickHouse cannot hold, an unknown alert kind, a name with control
characters) or an unknown query parameter raises :class:`ParameterError`, which the server answers with HTTP 400
and a body naming the parameter (``{"error": ..., "parameter": "month"}``), never a 500 from deeper down. Values
that pass reach ClickHouse only as bound parameters (:mod:`dashboard.queries`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, get_args

from schemas.errors import FinopsError
from schemas.models import AlertKind

__all__ = ["ParameterError", "Param", "ROUTE_PARAMS", "month_bounds", "parse_request_params", "parse_minutes"]

#: ClickHouse ``Date`` holds 1970-01-01 .. 2149-06-06: a month outside cannot be bound as a Date parameter.
FIRST_MONTH = (1970, 1)
LAST_MONTH = (2149, 5)
_MONTH = re.compile(r"(\d{4})-(\d{2})")
_MAX_NAME = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
ALERT_KINDS: tuple[str, ...] = get_args(AlertKind)
#: Longest control-command expiry accepted (a year); longer is almost certainly a unit mistake.
MAX_EXPIRY_MINUTES = 366 * 24 * 60


class ParameterError(FinopsError):
    """A request parameter is missing its form or out of range; ``parameter`` names it (HTTP 400)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"parameter {parameter}: {message}")
        self.parameter = parameter


def _integer(low: int, high: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ParameterError(name, f"must be an integer from {low} to {high}, not {raw[:40]!r}") from None
        if not low <= value <= high:
            raise ParameterError(name, f"must be from {low} to {high}, not {value}")
        return value

    return parse


def _name(name: str, raw: str) -> str:
    """A team, project, agent or alert id: any text a producer may send, but bounded and without control
    characters (nothing legitimate has them; they only make logs and error messages lie)."""
    if len(raw) > _MAX_NAME:
        raise ParameterError(name, f"is longer than {_MAX_NAME} characters")
    if _CONTROL.search(raw):
        raise ParameterError(name, "must not contain control characters")
    return raw


def _kind(name: str, raw: str) -> str:
    if raw and raw not in ALERT_KINDS:
        raise ParameterError(name, f"must be one of {', '.join(ALERT_KINDS)} (or empty), not {raw[:40]!r}")
    return raw


def _month(name: str, raw: str) -> str:
    match = _MONTH.fullmatch(raw.strip())
    if match is None:
        raise ParameterError(name, f"must be YYYY-MM, not {raw[:40]!r}")
    year, month = int(match.group(1)), int(match.group(2))
    if not 1 <= month <= 12:
        raise ParameterError(name, f"month {month:02d} is not 01..12")
    if not FIRST_MONTH <= (year, month) <= LAST_MONTH:
        raise ParameterError(name, f"must be from {FIRST_MONTH[0]}-{FIRST_MONTH[1]:02d} to "
                                   f"{LAST_MONTH[0]}-{LAST_MONTH[1]:02d} (what the store's dates hold), not {raw}")
    return f"{year:04d}-{month:02d}"


def month_bounds(month: str) -> tuple[date, date]:
    """``[first day, first day of the next month)`` of a month that :data:`ROUTE_PARAMS` accepted."""
    year, mon = int(month[:4]), int(month[5:7])
    return date(year, mon, 1), date(year + (mon == 12), mon % 12 + 1, 1)


def parse_minutes(name: str, raw: Any) -> float | None:
    """A positive number of minutes from a JSON body (int, float or numeric string), or None when absent."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise ParameterError(name, "must be a number of minutes, not a boolean")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ParameterError(name, f"must be a number of minutes, not {str(raw)[:40]!r}") from None
    if not 0 < value <= MAX_EXPIRY_MINUTES:  # also refuses nan and inf
        raise ParameterError(name, f"must be more than 0 and at most {MAX_EXPIRY_MINUTES} minutes, not {raw}")
    return value


@dataclass(frozen=True)
class Param:
    """One parameter: where it is (``path`` segment or ``query``), its parser and its default (None: required;
    a path segment always is present)."""

    name: str
    parse: Callable[[str, str], Any]
    default: Any = None
    where: str = "query"


def _path(name: str) -> Param:
    return Param(name, _name, where="path")


#: Route (aiohttp canonical path) -> the parameters it reads. A route not listed takes no parameters.
ROUTE_PARAMS: Mapping[str, tuple[Param, ...]] = {
    "/api/teams/{team}": (_path("team"),),
    "/api/agents": (Param("team", _name, ""),),
    "/api/agents/{agent_id}": (_path("agent_id"),),
    "/api/alerts": (Param("kind", _kind, ""), Param("team", _name, ""), Param("agent", _name, ""),
                    Param("limit", _integer(1, 1000), 100)),
    "/api/alerts/{alert_id}": (_path("alert_id"),),
    "/api/approvals/{alert_id}": (_path("alert_id"),),
    "/api/tokens/{token_id}/revoke": (_path("token_id"),),
    "/api/audit": (Param("limit", _integer(1, 5000), 200),),
    "/api/reports/chargeback": (Param("month", _month, ""),),
    "/api/bills": (Param("month", _month, ""), Param("limit", _integer(1, 1000), 200)),
    "/api/tasks": (Param("days", _integer(1, 90), 30), Param("limit", _integer(1, 500), 50),
                   Param("team", _name, ""), Param("task", _name, "")),
    # pages: the path segment is checked; their query string belongs to the page script
    "/alerts/{alert_id}": (_path("alert_id"),),
    "/agents/{agent_id}": (_path("agent_id"),),
    "/teams/{team}": (_path("team"),),
}


def parse_request_params(route: str, path: Mapping[str, str], query: Mapping[str, str]) -> dict[str, Any]:
    """The parsed parameters of a request to ``route``: each declared one parsed or defaulted.

    Raises:
        ParameterError: a bad value, a query parameter given twice, or one the route does not take.
    """
    declared = ROUTE_PARAMS.get(route, ())
    known = {p.name for p in declared if p.where == "query"}
    for name in query:
        if name not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise ParameterError(name, f"is not a parameter of {route} (it takes: {allowed})")
    getall = getattr(query, "getall", None)
    out: dict[str, Any] = {}
    for param in declared:
        source = path if param.where == "path" else query
        if param.name not in source:
            out[param.name] = param.default
            continue
        if getall is not None and param.where == "query" and len(getall(param.name)) > 1:
            raise ParameterError(param.name, "is given more than once")
        out[param.name] = param.parse(param.name, source[param.name])
    return out
