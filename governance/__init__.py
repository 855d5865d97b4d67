"""Governance: chargeback and showback, FOCUS export, cost reviews, recommendations, re-rating, provider view and
the approval of costly agents (DESIGN §7, "Operate").

Why a package of its own (DESIGN §1 allows one where none fits): everything here *reads* the ledger and *writes*
reports for people (CSV, HTML, FOCUS, Slack digests); the two writes it makes (re-rating corrections, the agent
registry) are governance decisions, not the sink's write path. ``sinks`` owns how events land, ``alerting`` how
alerts are delivered; this package only meets them on ClickHouse tables and the alerts topic, plus two building
blocks named in the contracts: :mod:`finops.clickhouse` (the client factory) and :class:`finops.pricing.engine.Pricer`
(re-rating must price exactly as the hot path does).

Modules (nouns, one role each):

- :mod:`governance.config`      ``governance.yaml``: shared-cost rules, approval policy, recommendation thresholds
- :mod:`governance.allocation`  pure: split a shared cost by usage share, evenly or by weights (largest remainder)
- :mod:`governance.store`       table names of the SQL (clients come from :mod:`finops.clickhouse`)
- :mod:`governance.chargeback`  chargeback / showback per team and project, with budgets and unpriced calls
- :mod:`governance.focus`       FOCUS 1.2 export of the period's charges
- :mod:`governance.review`      weekly (operators) and monthly (leadership) cost reviews, Slack digest
- :mod:`governance.recommend`   model tiering, caching, retry waste, prompt bloat, prompt-cache utilisation
- :mod:`governance.reprice`     re-rating with a corrected catalogue or price book: correction rows and a diff
- :mod:`governance.providers`   spend by provider and model per month, projection, discount what-ifs
- :mod:`governance.registry`    agent registry and approvals; alerts for unapproved costly agents
- :mod:`governance.html`        self-contained HTML with inline SVG charts (no CDN, no JavaScript)
- :mod:`governance.cli`         ``finops report ...``, ``finops recommend``, ``finops reprice``, ``finops agent ...``
"""
