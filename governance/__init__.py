"""Governance: chargeback and showback, FOCUS export, cost reviews, recommendations, re-rating, provider view and
the approval of costly agents (DESIGN §7, "Operate").

Role (a package of its own, as DESIGN §1 allows): everything here reads the ledger and writes reports for people
(CSV, HTML, FOCUS, Slack digests); its two writes (re-rating corrections, the agent registry) are governance
decisions, not the sink's write path. It meets ``sinks`` and ``alerting`` only on ClickHouse tables and the alerts
topic, plus :mod:`finops.clickhouse` and :class:`finops.pricing.engine.Pricer` (re-rating prices as the hot path
does). Modules: ``config``, ``allocation``, ``period``, ``store``, ``ledger``, ``chargeback``, ``focus``,
``review``, ``recommend``, ``reprice``, ``providers``, ``bills``, ``registry``, ``tasks``, ``html``, the CLIs.
"""
