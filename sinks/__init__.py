"""ClickHouse side of agent-finops: client factory (``sinks.clickhouse``), schema migrations (``sinks.migrations``),
batch writers and the ``finops migrate`` command (``sinks.cli``).

Meets the stream jobs only on Kafka topics and ClickHouse tables (DESIGN §1); never imports their internals.
"""
