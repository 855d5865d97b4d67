"""``finops intake run`` (the OTLP/HTTP receiver role) and ``finops intake token issue|revoke|list``."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from finops.clock import utc_now
from producers.replay import open_sink
from schemas.errors import FinopsError

# Imports inside functions: each handler imports what it runs, so `finops --help` loads no role's
# dependencies (start-up cost; measure with `python -X importtime -m finops.cli --help`).

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``intake`` to the ``finops`` command line."""
    intake = sub.add_parser("intake", help="zero-code intake: OTLP/HTTP receiver for GenAI telemetry, and its tokens")
    intake_sub = intake.add_subparsers(dest="intake_cmd", required=True, metavar="{run,token}")
    run = intake_sub.add_parser(
        "run", help="serve OTLP/HTTP (POST /v1/traces, /v1/logs, /v1/metrics) and turn GenAI telemetry into usage "
        "events on Kafka (FINOPS_INTAKE_HOST / _PORT, default 127.0.0.1:4318)")
    run.add_argument("--host", default=None, help="listen address (default FINOPS_INTAKE_HOST)")
    run.add_argument("--port", type=int, default=None, help="listen port (default FINOPS_INTAKE_PORT, 4318)")
    run.set_defaults(func=_run)

    backfill = intake_sub.add_parser(
        "backfill-openclaw", help="publish OpenClaw session transcripts (~/.openclaw/agents/*/sessions/*.jsonl) as "
        "usage events; ids are stable, so running it again (or after the live export started) counts nothing twice")
    backfill.add_argument("files", nargs="+", type=Path, help="session .jsonl files")
    backfill.add_argument("--team", default="", help="team of these sessions (default: unattributed)")
    backfill.add_argument("--project", default="", help="project of these sessions (default: unattributed)")
    backfill.add_argument("--source", default="openclaw-transcripts", help="the events' source")
    backfill.add_argument("--out", type=Path, default=None, help="write JSON lines to this file instead of Kafka")
    backfill.set_defaults(func=_backfill_openclaw)

    token = intake_sub.add_parser("token", help="issue, revoke and list intake tokens (one per source)")
    token_sub = token.add_subparsers(dest="intake_token_cmd", required=True, metavar="{issue,revoke,list}")
    issue = token_sub.add_parser("issue", help="issue a token for one source (printed once; only its hash is kept)")
    issue.add_argument("--source", required=True, help="the source's name: becomes the events' `source`")
    issue.add_argument("--team", default="", help="team of calls whose telemetry names none")
    issue.add_argument("--project", default="", help="project of calls whose telemetry names none")
    issue.add_argument("--json", action="store_true", help="print JSON (token and record)")
    issue.set_defaults(func=_token_issue)
    revoke = token_sub.add_parser("revoke", help="revoke a token by its id (refused from the next request on)")
    revoke.add_argument("token_id", help="the id shown by `finops intake token list` (the part after fi_)")
    revoke.set_defaults(func=_token_revoke)
    listing = token_sub.add_parser("list", help="list tokens (ids, sources, defaults; never secrets)")
    listing.add_argument("--json", action="store_true", help="print JSON (one record per token; never secrets)")
    listing.set_defaults(func=_token_list)


def tokens_path(settings: Any) -> Path:
    return Path(settings.intake.tokens_file or settings.data_dir / "intake" / "tokens.json")


def _store(settings: Any) -> Any:
    from producers.intake.tokens import IntakeTokenStore

    return IntakeTokenStore(tokens_path(settings))


def _token_issue(args: argparse.Namespace) -> int:
    from finops.settings import load_settings

    text, record = _store(load_settings()).issue(args.source, team=args.team, project=args.project,
                                                 created_by=getpass.getuser(), now=utc_now())
    if args.json:
        print(json.dumps({"token": text, **record.as_json()}))
    else:
        print(text)
        print(f"intake token {record.token_id} for source {record.source} (default team "
              f"{record.team or '-'}, project {record.project or '-'}); shown once, keep it secret", file=sys.stderr)
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    from finops.settings import load_settings

    if not _store(load_settings()).revoke(args.token_id, now=utc_now()):
        print(f"finops: no active intake token {args.token_id!r}", file=sys.stderr)
        return 1
    print(f"intake token {args.token_id} revoked")
    return 0


def _token_list(args: argparse.Namespace) -> int:
    from finops.settings import load_settings

    records = _store(load_settings()).list()
    if args.json:
        print(json.dumps([r.as_json() for r in records]))
        return 0
    for r in records:
        state = f"revoked {r.revoked_at}" if r.revoked_at else "active"
        print(f"{r.token_id}  {r.source:<24}  team={r.team or '-':<16}  project={r.project or '-':<16}  {state}")
    return 0


def _backfill_openclaw(args: argparse.Namespace) -> int:
    from producers.intake.openclaw_transcripts import iter_transcript_events
    # Checked before anything is published. A shell leaves a glob that matches nothing as it is, so
    # `~/.openclaw/agents/*/sessions/*.jsonl` on a host without OpenClaw sessions arrives here literally.
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        raise FinopsError(
            f"backfill-openclaw: no such session file: {', '.join(missing)}; pass OpenClaw's session transcripts "
            "(~/.openclaw/agents/<agent>/sessions/<session>.jsonl; a shell glob that matches nothing is passed on "
            "as it is). Nothing was published")
    events = 0
    with open_sink(args.out, source_label=args.source) as sink:
        for path in args.files:
            for event in iter_transcript_events(path, team=args.team, project=args.project, source=args.source):
                sink.emit(event)
                events += 1
    print(f"backfill-openclaw: {len(args.files)} session files -> {events:,} events; {sink.report}", file=sys.stderr)
    if sink.lost:
        print(f"backfill-openclaw: {sink.lost:,} events could not be delivered nor spooled", file=sys.stderr)
        return 1
    return 0


def build_attribution(settings: Any) -> Any:
    from producers.intake.calls import Attribution

    i = settings.intake
    return Attribution(team=tuple(i.team_attributes), project=tuple(i.project_attributes),
                       agent=tuple(i.agent_attributes), task=tuple(i.task_attributes),
                       parent_task=tuple(i.parent_task_attributes), environment=tuple(i.environment_attributes))


def _run(args: argparse.Namespace) -> int:
    """Settings, build (producer with its spool, token store, receiver), signal handlers, serve, close in reverse."""
    from aiohttp import web

    from finops.settings import load_settings
    from producers.intake.receiver import IntakeReceiver, build_runner
    from producers.producer import UsageProducer

    settings = load_settings()
    intake = settings.intake
    host = args.host or intake.host
    port = args.port or intake.port
    tokens = _store(settings)
    if not tokens.list():
        log.warning("intake: no tokens in %s: every request will get 401; issue one with "
                    "`finops intake token issue --source NAME`", tokens.path)
    # No broker check: with the broker away, events go to the spool and are answered 2xx (DESIGN §5).
    producer = UsageProducer.from_settings(
        settings, spool_dir=intake.spool_dir or settings.data_dir / "spool-intake",
        spool_max_bytes=intake.spool_max_bytes, source=f"intake-{settings.producer.source}",
    )
    receiver = IntakeReceiver(producer, tokens, attribution=build_attribution(settings),
                              max_body_bytes=intake.max_body_bytes, retry_after=intake.retry_after_seconds,
                              delivery_timeout=intake.delivery_timeout_seconds)

    async def serve() -> None:
        runner = build_runner(receiver)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
            except OSError as err:
                raise FinopsError(f"intake: cannot listen on {host}:{port} ({err}); set FINOPS_INTAKE_PORT or stop "
                                  "what holds the port") from err
            print(f"intake: OTLP/HTTP on http://{host}:{port} (/v1/traces, /v1/logs, /v1/metrics), tokens "
                  f"{tokens.path}", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()  # stops accepting, lets handlers in flight finish

    try:
        asyncio.run(serve())
    finally:
        left = producer.close()
        if left:
            log.warning("intake: %d events stay in the spool; the next `finops intake run` sends them", left)
    return 0
