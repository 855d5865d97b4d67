"""Alert workers: routing, Slack / PagerDuty / webhook delivery, enforcement commands, the ops control CLI.

Modules: :mod:`~alerting.channels` (pure payload builders), :mod:`~alerting.router` (routing rules from YAML),
:mod:`~alerting.delivery` (one destination's sender), :mod:`~alerting.outbox` (durable SQLite outbox),
:mod:`~alerting.enforcement` (alerts -> signed ControlCommands), :mod:`~alerting.delivery_log` (ClickHouse writers
of ``alert_deliveries`` and the ``control_commands`` audit), :mod:`~alerting.worker` (the alert worker) and
:mod:`~alerting.control_cli` (``finops control ...``, ``finops alerts run``).

Nothing here imports ``stream_jobs`` or ``sinks``; ClickHouse clients come from the ground layer's
:mod:`finops.clickhouse`, and the parts meet on Kafka topics and ClickHouse tables (DESIGN §1).
"""
