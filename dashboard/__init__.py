"""The web dashboard and HTTP API (`finops serve`), its tokens and roles, and the pipeline's metrics endpoint.

Modules: ``auth`` (tokens, roles, the caller's scope), ``queries`` (every SQL the API runs, parameterised and
filtered by the caller's scope), ``store`` (how the server reaches ClickHouse), ``server`` (aiohttp routes),
``metrics`` (Prometheus text for lag, events/s, DLQ counts, sink latency), ``cli`` (`finops serve`, `finops token`).
"""
