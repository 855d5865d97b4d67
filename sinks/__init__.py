"""ClickHouse side of agent-finops: schema migrations (``sinks.migrations``), batch writers and the ``finops
migrate`` command (``sinks.cli``); clients come from :mod:`finops.clickhouse`.

Meets the stream jobs only on Kafka topics and ClickHouse tables (DESIGN §1); never imports their internals.
"""
