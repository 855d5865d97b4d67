"""``finops bills import`` and ``finops bills reconcile``: the providers' own reports next to the ledger.

Thin handlers over :mod:`governance.bills` in STYLE's order: settings, client, work, close.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finops.clickhouse import open_client
from finops.clock import utc_now
from schemas.errors import ConfigError

# Imports inside functions: each handler imports what it runs, so `finops --help` loads no role's
# dependencies (start-up cost; measure with `python -X importtime -m finops.cli --help`).

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bills = subparsers.add_parser("bills", help="import the providers' cost and usage reports; reconcile the ledger")
    sub = bills.add_subparsers(dest="bills_cmd", required=True, metavar="{import,reconcile}")
    imp = sub.add_parser(
        "import", help="read a provider's organisation cost and usage reports into provider_bills / provider_usage",
        description="Re-importing a day replaces it (never adds). --api reads the provider's admin API with the key "
        "from FINOPS_BILLS_<PROVIDER>_ADMIN_KEY (OpenRouter: FINOPS_BILLS_OPENROUTER_MANAGEMENT_KEY).")
    imp.add_argument("--provider", required=True, choices=("openai", "anthropic", "openrouter"),
                     help="the provider whose report it is")
    src = imp.add_mutually_exclusive_group(required=True)
    src.add_argument("--from", dest="file", type=Path, metavar="FILE",
                     help='a recorded report: JSON {"costs": [pages], "usage": [pages]}; '
                     'OpenRouter: activity JSON or CSV')
    src.add_argument("--api", action="store_true", help="fetch the period from the provider's API")
    imp.add_argument("--period", default=None, help="YYYY-MM to fetch with --api (default: the current month)")
    imp.set_defaults(func=_handle_import)

    rec = sub.add_parser("reconcile", help="compare the imported bills with the ledger, store and print the gaps")
    rec.add_argument("--period", required=True, help="YYYY-MM")
    rec.add_argument("--top", type=int, default=20, help="gaps to print (default 20)")
    rec.add_argument("--no-alert", action="store_true", help="do not publish bill_drift alerts")
    rec.add_argument("--no-store", action="store_true", help="print only; do not write bill_reconciliation")
    rec.set_defaults(func=_handle_reconcile)

    seed = sub.add_parser("demo-seed", help="for the demo: import a bill built from the ledger (plus one "
                          "uninstrumented key) and reconcile it, so the Bill vs ledger page has something to show")
    seed.add_argument("--period", default=None, help="YYYY-MM (default: the current month)")
    seed.set_defaults(func=_handle_demo_seed)


def _handle_import(args: argparse.Namespace) -> int:
    from finops.settings import load_settings
    from governance.bills import (
        KEY_SETTING,
        FetchConfig,
        fetch_report,
        parse_report_file,
        store_report,
    )
    from governance.period import parse_period
    settings = load_settings()
    now = utc_now()
    if args.file is not None:
        report = parse_report_file(args.provider, args.file)
        origin = f"file:{args.file.name}"
    else:
        period = parse_period(args.period, now=now)
        secret = getattr(settings.bills, "openrouter_management_key" if args.provider == "openrouter"
                         else f"{args.provider}_admin_key")
        if secret is None:
            raise ConfigError(f"--api needs {KEY_SETTING[args.provider]} (an organisation admin key)")
        config = FetchConfig(base_url=getattr(settings.bills, f"{args.provider}_base_url"),
                             key=secret.get_secret_value(), max_retries=settings.bills.max_retries,
                             max_wait_s=settings.bills.max_retry_wait_seconds,
                             timeout_s=settings.bills.timeout_seconds)
        report = fetch_report(args.provider, period, config)
        origin = "api"
    database = settings.clickhouse.database
    client, where = open_client(settings.clickhouse_url(), database, settings.clickhouse.query_url,
                                readonly=False, data_dir=settings.data_dir)
    try:
        import_id = store_report(client, database, report, origin=origin, now=now)
    finally:
        client.close()
    amount = sum(b.amount_usd for b in report.bills)
    days = sorted(report.days)
    span = f"{days[0]}..{days[-1]}" if days else "no days"
    print(f"imported {args.provider} ({origin}): {len(report.bills)} cost lines ({amount} USD), "
          f"{len(report.usage)} usage lines, {len(days)} days {span}; import {import_id} into {where}")
    return 0


def _handle_reconcile(args: argparse.Namespace) -> int:
    from finops.settings import load_settings
    from finops.topics import TopicNames
    from governance.bills import (
        build_bill_drift_alerts,
        compute_reconciliation,
        load_reconciliation_inputs,
        parse_accounts,
        render_reconciliation,
        store_reconciliation,
    )
    from governance.period import parse_period
    settings = load_settings()
    period = parse_period(args.period)
    now = utc_now()
    database = settings.clickhouse.database
    client, where = open_client(settings.clickhouse_url(), database, settings.clickhouse.query_url,
                                readonly=args.no_store, data_dir=settings.data_dir)
    print(f"-- {where}, database {database}", file=sys.stderr)
    try:
        bills, ledger = load_reconciliation_inputs(client, database, period)
        if not bills:
            raise ConfigError(f"no provider bill imported for {period.label}: run finops bills import first")
        report = compute_reconciliation(period.label, bills, ledger, parse_accounts(settings.bills.accounts),
                                        tolerance_usd=settings.bills.tolerance_usd,
                                        tolerance_pct=settings.bills.tolerance_pct)
        if not args.no_store:
            store_reconciliation(client, database, report, now=now)
    finally:
        client.close()
    sys.stdout.write(render_reconciliation(report, top=args.top))
    alerts = build_bill_drift_alerts(report, now)
    if alerts and not args.no_alert:
        from finops.alerts import publish_alerts

        topic = TopicNames(settings.kafka.topic_prefix).alerts
        publish_alerts(settings.kafka, topic, alerts)
        print(f"published {len(alerts)} bill_drift alert(s) to {topic}", file=sys.stderr)
    return 1 if alerts else 0


def _handle_demo_seed(args: argparse.Namespace) -> int:
    from finops.settings import load_settings
    from governance.bills import (
        build_bill_from_ledger,
        compute_reconciliation,
        load_reconciliation_inputs,
        parse_accounts,
        store_reconciliation,
        store_report,
    )
    from governance.period import parse_period
    settings = load_settings()
    now = utc_now()
    period = parse_period(args.period, now=now)
    database = settings.clickhouse.database
    client, where = open_client(settings.clickhouse_url(), database, settings.clickhouse.query_url,
                                readonly=False, data_dir=settings.data_dir)
    try:
        reports = build_bill_from_ledger(client, database, period)
        for report in reports:
            store_report(client, database, report, origin="demo", now=now)
        bills, ledger = load_reconciliation_inputs(client, database, period)
        result = compute_reconciliation(period.label, bills, ledger, parse_accounts(settings.bills.accounts),
                                        tolerance_usd=settings.bills.tolerance_usd,
                                        tolerance_pct=settings.bills.tolerance_pct)
        if result.cells:
            store_reconciliation(client, database, result, now=now)
    finally:
        client.close()
    print(f"demo bill for {period.label}: {len(reports)} providers, {len(result.cells)} cells reconciled "
          f"in {where}")
    return 0
