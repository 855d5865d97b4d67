"""Metrics for reconciliation, never for counting: the token totals that tools' *metrics* report, set beside the
token totals of the *events* the intake turned into usage (both served at the receiver's ``GET /metrics``).

Tools that send events also send metrics about the same requests (Claude Code's ``claude_code.token.usage``,
Gemini CLI's ``gemini_cli.token.usage``, the GenAI semconv histogram ``gen_ai.client.token.usage``); counting both
would double the spend, so metrics only feed these reconciliation totals. Read: Sum data points with *delta*
temporality (each point is new usage; cumulative points would need per-series state across restarts and are
counted in ``skipped``), and the ``sum`` of histogram points with delta temporality. The token type comes from the
``type`` attribute (Claude Code, Gemini CLI) or ``gen_ai.token.type`` (semconv), lower-cased. Pure.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from producers.intake.otlp import attributes

__all__ = ["USAGE_METRICS", "metric_token_totals"]

#: Token-usage metrics read for reconciliation.
USAGE_METRICS = frozenset({"claude_code.token.usage", "gemini_cli.token.usage", "gen_ai.client.token.usage"})
_DELTA = 1


def metric_token_totals(request: Any) -> tuple[Counter[tuple[str, str]], int]:
    """``{(metric, token type): tokens}`` of one ExportMetricsServiceRequest, and how many points of those metrics
    were skipped (cumulative temporality)."""
    totals: Counter[tuple[str, str]] = Counter()
    skipped = 0
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name not in USAGE_METRICS:
                    continue
                kind = metric.WhichOneof("data")
                if kind not in ("sum", "histogram"):
                    continue
                data = getattr(metric, kind)
                if data.aggregation_temporality != _DELTA:
                    skipped += len(data.data_points)
                    continue
                for point in data.data_points:
                    attrs = attributes(point.attributes)
                    kind_of = str(attrs.get("type") or attrs.get("gen_ai.token.type") or "unknown").lower()
                    if kind == "sum":
                        value = point.as_int if point.WhichOneof("value") == "as_int" else point.as_double
                    else:
                        value = point.sum
                    totals[(metric.name, kind_of)] += int(value)
    return totals, skipped
