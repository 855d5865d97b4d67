"""What makes a retried ledger insert count once, pinned on chdb (ClickHouse 26.9) with the real migrations.

Findings (also in infra/clickhouse/README.md):
1. Same batch, same insert_deduplication_token: the ledger drops the block (non_replicated_deduplication_window) and
   the rollups do not count it again, because the materialized views' output blocks get derived tokens
   (deduplicate_blocks_in_dependent_materialized_views = 1) and the rollup tables have their own dedup window.
2. The same rows under a NEW token are a new block: the ledger holds them twice until a merge (FINAL hides it), but
   the rollups count them twice. Hence the sink must not insert event ids that are already stored.
3. Without the rollups' own window the view still fires for a dropped source block (checked on a scratch table).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.integration.ch_fixtures import insert_ledger, ledger_row, utc

pytestmark = pytest.mark.integration


def _totals(client: Any, db: str) -> dict[str, Any]:
    def one(sql: str) -> Any:
        return tuple(client.query(sql).result_rows[0])

    return {
        "ledger_rows": one(f"SELECT count() FROM {db}.usage_ledger")[0],
        "ledger_final": one(f"SELECT count(), sum(cost_usd) FROM {db}.usage_ledger FINAL"),
        "hourly": one(f"SELECT sum(calls), sum(cost_usd) FROM {db}.spend_hourly"),
        "daily": one(f"SELECT sum(calls), sum(cost_usd) FROM {db}.spend_daily"),
    }


def test_retried_batch_with_same_token_counts_once_in_ledger_and_rollups(ch_client: Any, ch_database: str) -> None:
    db = ch_database
    # rows in two months: the block splits into two parts, each deduplicated on its own
    batch = [ledger_row("1.25", utc(2024, 5, 31, 23, 59)), ledger_row("2.5", utc(2024, 6, 1, 0, 1))]
    insert_ledger(ch_client, db, batch, token="svc:0:100-101")
    insert_ledger(ch_client, db, batch, token="svc:0:100-101")  # the retry after a lost acknowledgement
    totals = _totals(ch_client, db)
    assert totals["ledger_rows"] == 2
    assert totals["ledger_final"] == (2, Decimal("3.75"))
    assert totals["hourly"] == (2, Decimal("3.75"))
    assert totals["daily"] == (2, Decimal("3.75"))

    # a different batch is not mistaken for the retry
    insert_ledger(ch_client, db, [ledger_row("1", utc(2024, 6, 1, 0, 2))], token="svc:0:102-102")
    assert _totals(ch_client, db)["daily"] == (3, Decimal("4.75"))


def test_same_rows_under_a_new_token_double_count_the_rollups(ch_client: Any, ch_database: str) -> None:
    """The limit of block dedup: why the sink must skip event ids the ledger already holds."""
    db = ch_database
    row = ledger_row("1.25", utc(2024, 5, 1, 12))
    insert_ledger(ch_client, db, [row], token="a")
    insert_ledger(ch_client, db, [row], token="b")
    totals = _totals(ch_client, db)
    assert totals["ledger_final"] == (1, Decimal("1.25"))  # the ledger dedupes by (source, event_id) ...
    assert totals["daily"] == (2, Decimal("2.5"))  # ... the rollups cannot


def test_view_target_without_its_own_window_double_counts(ch_client: Any, ch_database: str) -> None:
    """Why the rollup tables carry non_replicated_deduplication_window too (ClickHouse 26.x behaviour)."""
    db = ch_database
    ch_client.command(
        f"CREATE TABLE {db}.scratch_src (id String, cost Decimal(38, 12)) ENGINE = MergeTree ORDER BY id "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    ch_client.command(
        f"CREATE TABLE {db}.scratch_sum (n UInt64, cost Decimal(38, 12)) ENGINE = SummingMergeTree ORDER BY tuple()"
    )
    ch_client.command(
        f"CREATE MATERIALIZED VIEW {db}.scratch_mv TO {db}.scratch_sum AS "
        f"SELECT count() AS n, sum(cost) AS cost FROM {db}.scratch_src"
    )
    for _ in range(2):
        ch_client.insert(
            "scratch_src", [["x", Decimal("1")]], column_names=["id", "cost"], database=db,
            settings={"insert_deduplication_token": "t"},
        )
    assert ch_client.query(f"SELECT count() FROM {db}.scratch_src").result_rows[0][0] == 1
    assert ch_client.query(f"SELECT sum(n) FROM {db}.scratch_sum").result_rows[0][0] == 2
