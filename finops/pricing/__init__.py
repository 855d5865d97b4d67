"""The pricing engine, in the ground layer because two parts use it: the hot path (``stream_jobs``) prices every
event with it, and ``governance`` re-rates history, builds ledger rows, recommends models and exports FOCUS with
the very same arithmetic. Pure logic on top of ``schemas`` and ``finops.settings``: no Kafka, no ClickHouse.

- :mod:`finops.pricing.engine`: :class:`~finops.pricing.engine.Pricer`, one event to a priced result.
- :mod:`finops.pricing.pricebook`: the organisation price book (YAML, effective-dated), validated.
- :mod:`finops.pricing.catalogue`: the versioned genai-prices catalogue on disk, its refresh and hot reload.

DESIGN §4 (money) is the contract.
"""
