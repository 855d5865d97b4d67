"""Alert workers: routing, Slack / PagerDuty / webhook delivery, enforcement commands, the ops control CLI.

Modules (nouns, each one role):

- :mod:`alerting.channels`      pure payload builders (Slack Block Kit, PagerDuty Events v2, signed webhook)
- :mod:`alerting.router`        routing rules from YAML: match team / severity / kind / state -> destinations
- :mod:`alerting.delivery`      one destination's sender: pacing, Retry-After, backoff with jitter, broken handling
- :mod:`alerting.outbox`        durable SQLite outbox: what must be delivered, what was, per-key cooldown state
- :mod:`alerting.enforcement`   alerts -> signed ControlCommands (throttle / downgrade / suspend / resume)
- :mod:`alerting.delivery_log`  ClickHouse writers: ``alert_deliveries`` and the ``control_commands`` audit
- :mod:`alerting.worker`        the alert worker: consume, enforce, enqueue, commit; delivery lanes; audit follower
- :mod:`alerting.control_cli`   ``finops control ...`` and ``finops alerts run``

Nothing here imports ``stream_jobs`` or ``sinks``; ClickHouse clients come from the ground layer's
:mod:`finops.clickhouse`, and the parts meet on Kafka topics and ClickHouse tables (DESIGN §1).
"""
