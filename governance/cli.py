"""``finops report chargeback|showback|focus|review|providers|tasks``, ``finops recommend``, ``finops reprice`` and
``finops agent request|approve|list|check``.

Handlers are thin and keep one order (STYLE.md): settings, connect (read-only for reports, writable for reprice
and the registry; see :mod:`governance.store` for embedded mode), build, run, close. The governance config comes
from ``--config`` or ``FINOPS_GOVERNANCE_CONFIG`` (read here, at the entry point, and nowhere below).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from finops.clickhouse import open_client
from finops.clock import utc_now
from schemas.errors import ConfigError

# Imports inside functions: each handler imports what it runs, so `finops --help` loads no role's
# dependencies (start-up cost; measure with `python -X importtime -m finops.cli --help`).

__all__ = ["register"]

_CONFIG_ENV = "FINOPS_GOVERNANCE_CONFIG"


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from err


def _period_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument("--period", default=None, help="calendar month YYYY-MM, UTC (default: the current month)")
    p.add_argument("--from", dest="start", default=None, help="start date YYYY-MM-DD (instead of --period)")
    p.add_argument("--to", dest="end", default=None, help="end date YYYY-MM-DD, exclusive")


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help=f"governance YAML (default ${_CONFIG_ENV}; see "
                   "infra/governance.example.yaml)")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the governance commands to ``finops``."""
    report = subparsers.add_parser("report", help="chargeback, showback, FOCUS export, cost reviews, provider view")
    rsub = report.add_subparsers(dest="report_cmd", required=True,
                                 metavar="{chargeback,showback,focus,review,providers,tasks}")
    for name, text in (("chargeback", "cost per team and project with shared costs allocated to consumers"),
                       ("showback", "cost per team and project, shared costs not allocated")):
        p = rsub.add_parser(name, help=text, description=f"{text.capitalize()}: by agent and model, budget versus "
                            "actual, unpriced calls; as CSV and a self-contained HTML page with charts.")
        _period_args(p)
        _config_arg(p)
        p.add_argument("--team", default=None, help="only this team's lines (allocation is still fleet-wide)")
        p.add_argument("--csv", type=Path, default=None, help="write the CSV here ('-' for stdout)")
        p.add_argument("--html", type=Path, default=None, help="write the HTML report here")
        p.set_defaults(func=_handle_chargeback, mode=name)
    focus = rsub.add_parser("focus", help="FOCUS 1.2 export (CSV) of the period's charges")
    _period_args(focus)
    focus.add_argument("--out", type=Path, default=None, help="CSV file (default stdout)")
    focus.add_argument("--billing-account", default="agent-finops", help="BillingAccountId/Name to write")
    focus.set_defaults(func=_handle_focus)
    review = rsub.add_parser("review", help="weekly (operators) or monthly (leadership) cost review",
                             description="Build the review due now (the last full week or month), write HTML, and "
                             "post the digest to Slack (FINOPS_ALERTING_SLACK_WEBHOOK_URL) with --send. --schedule "
                             "keeps running and does so whenever the next review is due.")
    cadence = review.add_mutually_exclusive_group(required=True)
    cadence.add_argument("--weekly", action="store_const", const="weekly", dest="cadence",
                         help="review the last full week, for operators (this or --monthly is required)")
    cadence.add_argument("--monthly", action="store_const", const="monthly", dest="cadence",
                         help="review the last full month, for leadership (this or --weekly is required)")
    _config_arg(review)
    review.add_argument("--html", type=Path, default=None, help="write the HTML review here (with --schedule: a "
                        "directory)")
    review.add_argument("--send", action="store_true", help="post the Slack digest")
    review.add_argument("--schedule", action="store_true", help="run until interrupted, on the configured schedule")
    review.add_argument("--now", default=None, help="pretend it is this UTC time (ISO), e.g. to re-send a review")
    review.set_defaults(func=_handle_review)
    prov = rsub.add_parser("providers", help="spend by provider and model per month, projection, discount what-ifs")
    prov.add_argument("--period", default=None, help="last month shown, YYYY-MM (default: the current month)")
    prov.add_argument("--months", type=int, default=6, help="months of history (default 6)")
    prov.add_argument("--discount", type=_decimal, default=None, help="what a PCT %% discount would have saved")
    prov.add_argument("--commit", type=_decimal, default=None, help="committed USD per month ...")
    prov.add_argument("--commit-discount", type=_decimal, default=None, help="... at PCT %% off")
    prov.add_argument("--html", type=Path, default=None, help="write the HTML view here")
    prov.set_defaults(func=_handle_providers)
    tasks = rsub.add_parser("tasks", help="cost per task with its sub-agents (task trees), each call counted once",
                            description="Per task: its own cost, its sub-agents' (every task below it), the total, "
                            "depth and number of sub-agent tasks; a tree's outcome is its root task's. Diamonds keep "
                            "the parent seen first, cycles are broken at the task that started first (both flagged).")
    _period_args(tasks)
    tasks.add_argument("--team", default="", help="only this team's tasks")
    tasks.add_argument("--task", default="", help="show the tree holding this task")
    tasks.add_argument("--limit", type=int, default=20, help="trees shown, costliest first (default 20)")
    tasks.add_argument("--json", action="store_true", help="print JSON")
    tasks.set_defaults(func=_handle_tasks)

    rec = subparsers.add_parser("recommend", help="savings: model tiering, caching, retry waste, prompt bloat, "
                                "prompt-cache utilisation")
    _period_args(rec)
    _config_arg(rec)
    rec.add_argument("--kind", action="append", default=None,
                     choices=("model_tiering", "caching", "retry_waste", "prompt_bloat", "prompt_cache"),
                     help="only this kind of recommendation (repeatable; default every kind)")
    rec.add_argument("--json", action="store_true", help="print JSON")
    rec.add_argument("--record", action="store_true", help="also store them as waste_signals (v_waste_percentage)")
    rec.set_defaults(func=_handle_recommend)

    rep = subparsers.add_parser("reprice", help="re-rate a time range with a corrected catalogue or price book",
                                description="Price [--from, --to) again and write correction rows for the "
                                "difference (originals stay); prints a diff report of the rows that changed.")
    rep.add_argument("--from", dest="start", required=True, help="start, YYYY-MM-DD or ISO datetime (UTC)")
    rep.add_argument("--to", dest="end", required=True, help="end, exclusive")
    rep.add_argument("--price-book", type=Path, default=None, help="price book YAML (default FINOPS_STREAM_PRICE_BOOK)")
    rep.add_argument("--dry-run", action="store_true", help="compute and report, write nothing")
    rep.add_argument("--diff-csv", type=Path, default=None, help="write every changed row here")
    rep.add_argument("--limit", type=int, default=20, help="rows shown in the diff report (default 20)")
    rep.set_defaults(func=_handle_reprice)

    agent = subparsers.add_parser("agent", help="agent registry and approvals")
    asub = agent.add_subparsers(dest="agent_cmd", required=True, metavar="{request,approve,list,check}")
    req = asub.add_parser("request", help="register an agent (approval needed above the configured cost)")
    req.add_argument("--agent", required=True, help="the agent's id, as its events' agent_id")
    req.add_argument("--team", required=True, help="the agent's team (its leads approve it)")
    req.add_argument("--owner", required=True, help="who is responsible for the agent")
    req.add_argument("--expected-monthly-cost", type=_decimal, required=True, help="USD per month")
    req.add_argument("--by", default=None, help="who asks (default: the owner)")
    req.add_argument("--note", default="", help="free text kept with the entry (default none)")
    _config_arg(req)
    req.set_defaults(func=_handle_agent_request)
    app = asub.add_parser("approve", help="approve (or --reject) a registered agent as a team lead")
    app.add_argument("--agent", required=True, help="the agent's id, as registered by `finops agent request`")
    app.add_argument("--by", required=True, help="the approving team lead")
    app.add_argument("--reject", action="store_true", help="reject the agent instead of approving it")
    app.add_argument("--note", default="", help="free text kept with the decision (default: the request's note)")
    _config_arg(app)
    app.set_defaults(func=_handle_agent_approve)
    lst = asub.add_parser("list", help="registered agents")
    lst.add_argument("--team", default=None, help="only this team's agents (default every team)")
    lst.add_argument("--status", default=None, choices=("requested", "approved", "rejected"),
                     help="only agents in this state (default every state)")
    lst.set_defaults(func=_handle_agent_list)
    chk = asub.add_parser("check", help="alert on unapproved agents that emit events")
    chk.add_argument("--window-hours", type=float, default=24.0,
                     help="hours of events before now to look at; their spend is projected to a month (default 24)")
    chk.add_argument("--no-alert", action="store_true", help="only print, do not publish alerts")
    _config_arg(chk)
    chk.set_defaults(func=_handle_agent_check)


# ---------------------------------------------------------------------------------------------------- plumbing


def _settings() -> Any:
    from finops.settings import load_settings

    return load_settings()


def _config(args: argparse.Namespace) -> Any:
    from governance.config import load_governance_config

    return load_governance_config(getattr(args, "config", None) or os.environ.get(_CONFIG_ENV) or None)


def _with_client(settings: Any, readonly: bool, work: Callable[[Any, str], int]) -> int:
    database = settings.clickhouse.database
    client, where = open_client(settings.clickhouse_url(), database, settings.clickhouse.query_url,
                                readonly=readonly, data_dir=settings.data_dir)
    print(f"-- {where}, database {database}", file=sys.stderr)
    try:
        return work(client, database)
    finally:
        client.close()


def _period(args: argparse.Namespace) -> Any:
    from governance.period import parse_period

    return parse_period(args.period, start=args.start, end=args.end, now=utc_now())


def _write(path: Path | None, text: str, what: str) -> None:
    if path is None:
        return
    if str(path) == "-":
        sys.stdout.write(text)
        return
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot write {what} to {path}: {err.strerror}") from err
    print(f"{what}: {path}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------- handlers


def _handle_chargeback(args: argparse.Namespace) -> int:
    from governance.chargeback import build_chargeback, render_csv, render_html, render_text

    settings, config, period = _settings(), _config(args), _period(args)

    def work(client: Any, database: str) -> int:
        report = build_chargeback(client, database, period, config, mode=args.mode, team_filter=args.team)
        _write(args.csv, render_csv(report), "CSV")
        _write(args.html, render_html(report), "HTML report")
        if str(args.csv) != "-":
            sys.stdout.write(render_text(report))
        return 0 if report.balanced else 1

    return _with_client(settings, True, work)


def _handle_focus(args: argparse.Namespace) -> int:
    from governance.focus import build_focus_rows, render_focus_csv, summarise

    settings, period = _settings(), _period(args)

    def work(client: Any, database: str) -> int:
        rows = build_focus_rows(client, database, period, billing_account=args.billing_account)
        text = render_focus_csv(rows)
        if args.out is None:
            sys.stdout.write(text)
        else:
            _write(args.out, text, "FOCUS CSV")
        totals = ", ".join(f"{k} {v}" for k, v in summarise(rows).items())
        print(f"FOCUS 1.2 export {period.label}: {len(rows)} rows; {totals}", file=sys.stderr)
        return 0

    return _with_client(settings, True, work)


def _review_once(args: argparse.Namespace, settings: Any, config: Any, now: datetime) -> None:
    from governance.review import build_review, build_slack_digest, render_html, send_digest

    def work(client: Any, database: str) -> int:
        review = build_review(client, database, args.cadence, now, recommend=config.recommend)
        html_path = args.html
        if html_path is not None and args.schedule:
            html_path.mkdir(parents=True, exist_ok=True)
            html_path = html_path / f"review-{args.cadence}-{review.period.label}.html"
        _write(html_path, render_html(review), "HTML review")
        digest = build_slack_digest(review)
        if args.send:
            url = settings.alerting.slack_webhook_url
            if url is None:
                raise ConfigError("--send needs FINOPS_ALERTING_SLACK_WEBHOOK_URL (the Slack incoming webhook)")
            send_digest(digest, url.get_secret_value())
            print("digest sent to slack", file=sys.stderr)
        else:
            print(digest["text"])
            print(digest["blocks"][1]["text"]["text"])
        return 0

    _with_client(settings, True, work)


def _handle_review(args: argparse.Namespace) -> int:
    from governance.review import compute_next_run

    settings, config = _settings(), _config(args)
    now = datetime.fromisoformat(args.now.replace("Z", "+00:00")).astimezone(UTC) if args.now else utc_now()
    if not args.schedule:
        _review_once(args, settings, config, now)
        return 0
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.is_set():
            due = compute_next_run(utc_now(), args.cadence, config.review)
            print(f"next {args.cadence} review at {due:%Y-%m-%d %H:%M} UTC", file=sys.stderr)
            # Wait on the stop event (interruptible), not a sleep: a signal ends the wait at once.
            if stop.wait(max(0.0, (due - utc_now()).total_seconds())):
                break
            _review_once(args, settings, config, due)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _handle_providers(args: argparse.Namespace) -> int:
    from governance.period import parse_period
    from governance.providers import build_provider_view, render_html, render_text

    settings = _settings()
    last = parse_period(args.period, now=utc_now())

    def work(client: Any, database: str) -> int:
        view = build_provider_view(client, database, last, months=args.months, discount_pct=args.discount,
                                   commit_usd=args.commit, commit_discount_pct=args.commit_discount)
        _write(args.html, render_html(view), "HTML view")
        sys.stdout.write(render_text(view))
        return 0

    return _with_client(settings, True, work)


def _handle_tasks(args: argparse.Namespace) -> int:
    from governance.tasks import build_task_report, render_json, render_text

    if args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: must be at least 1")
    settings, period = _settings(), _period(args)

    def work(client: Any, database: str) -> int:
        report = build_task_report(client, database, period, team=args.team, task=args.task, limit=args.limit)
        sys.stdout.write(render_json(report) if args.json else render_text(report))
        return 0

    return _with_client(settings, True, work)


def _handle_recommend(args: argparse.Namespace) -> int:
    from governance.recommend import KINDS, build_recommendations, load_waste, render_text, to_waste_signals

    settings, config, period = _settings(), _config(args), _period(args)
    kinds = tuple(args.kind) if args.kind else KINDS

    def work(client: Any, database: str) -> int:
        report = build_recommendations(client, database, period, config.recommend, kinds=kinds)
        if args.record and report.items:
            rows = to_waste_signals(report, detected_at=utc_now())
            client.insert("waste_signals", [list(r.values()) for r in rows], column_names=list(rows[0]),
                          database=database)
            print(f"{len(rows)} waste signals recorded", file=sys.stderr)
            report.waste = load_waste(client, database, period)  # the waste figure now counts them
        if args.json:
            print(json.dumps({"period": period.label, "total_spend_usd": str(report.total_spend_usd),
                              "monthly_saving_usd": str(report.monthly_saving_usd),
                              "waste_pct": None if report.waste_pct is None else str(report.waste_pct),
                              "recorded_avoidable_usd": str(report.waste.avoidable_usd) if report.waste else None,
                              "recommendations": [{**r.__dict__, "saving_usd": str(r.saving_usd),
                                                   "monthly_saving_usd": str(r.monthly_saving_usd),
                                                   "sql": r.sql_command()} for r in report.items]},
                             default=str, indent=2))
        else:
            sys.stdout.write(render_text(report))
        return 0

    return _with_client(settings, not args.record, work)


def _handle_reprice(args: argparse.Namespace) -> int:
    from finops.pricing.pricebook import load_price_book
    from governance.period import parse_period
    from governance.reprice import render_diff, render_diff_csv, reprice

    settings = _settings()
    period = parse_period(None, start=args.start, end=args.end)
    book_path = args.price_book or settings.stream.price_book
    book = load_price_book(book_path) if book_path else None
    digest = hashlib.sha256(Path(book_path).read_bytes()).hexdigest() if book_path else ""
    from finops.pricing.catalogue import build_pricer

    # The same catalogue (``finops prices update``) and cost basis as the stream job, with this run's price book.
    pricer = build_pricer(settings.stream, settings.core.data_dir, price_book=book)

    def work(client: Any, database: str) -> int:
        result = reprice(client, database, period.start, period.end, pricer, now=utc_now(),
                         price_book_digest=digest, dry_run=args.dry_run)
        sys.stdout.write(render_diff(result, limit=args.limit))
        _write(args.diff_csv, render_diff_csv(result), "diff CSV")
        return 0 if result.exact in (True, None) else 1

    return _with_client(settings, args.dry_run, work)


def _print_entry(entry: Any) -> None:
    print(f"{entry.agent_id:<28} {entry.team:<16} {entry.owner:<16} {entry.expected_monthly_cost_usd:>12.2f} "
          f"{entry.status:<10} {entry.decided_by}")


def _handle_agent_request(args: argparse.Namespace) -> int:
    from governance.registry import request_agent

    settings, config = _settings(), _config(args)

    def work(client: Any, database: str) -> int:
        entry = request_agent(client, database, agent_id=args.agent, team=args.team, owner=args.owner,
                              expected_monthly_cost_usd=args.expected_monthly_cost, requested_by=args.by or args.owner,
                              policy=config.approval, now=utc_now(), note=args.note)
        _print_entry(entry)
        if entry.status == "requested":
            approvers = ", ".join(config.approval.approvers(entry.team)) or (
                "none configured (approval.team_leads in the governance config: `--config FILE` or "
                "FINOPS_GOVERNANCE_CONFIG, as in infra/governance.example.yaml)")
            print(f"needs approval by a lead of {entry.team}: {approvers}", file=sys.stderr)
        return 0

    return _with_client(settings, False, work)


def _handle_agent_approve(args: argparse.Namespace) -> int:
    from governance.registry import approve_agent

    settings, config = _settings(), _config(args)

    def work(client: Any, database: str) -> int:
        _print_entry(approve_agent(client, database, agent_id=args.agent, approver=args.by, policy=config.approval,
                                   now=utc_now(), reject=args.reject, note=args.note))
        return 0

    return _with_client(settings, False, work)


def _handle_agent_list(args: argparse.Namespace) -> int:
    from governance.registry import list_agents

    def work(client: Any, database: str) -> int:
        for entry in list_agents(client, database, team=args.team, status=args.status):
            _print_entry(entry)
        return 0

    return _with_client(_settings(), True, work)


def _handle_agent_check(args: argparse.Namespace) -> int:
    from finops.alerts import publish_alerts
    from finops.topics import TopicNames
    from governance.registry import build_unapproved_alerts, find_unapproved

    settings, config = _settings(), _config(args)
    now = utc_now()

    def work(client: Any, database: str) -> int:
        found = find_unapproved(client, database, config.approval, now=now,
                                window=timedelta(hours=args.window_hours))
        for agent in found:
            print(f"{agent.agent_id} ({agent.team}): {agent.reason}")
        if found and not args.no_alert:
            publish_alerts(settings.kafka, TopicNames(settings.kafka.topic_prefix).alerts,
                           build_unapproved_alerts(found, config.approval, now=now))
            print(f"{len(found)} approval alerts published", file=sys.stderr)
        return 1 if found else 0

    return _with_client(settings, True, work)
