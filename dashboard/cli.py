"""``finops serve`` (dashboard, API, /healthz, /metrics) and ``finops token issue|revoke|list``.

Both reach ClickHouse like ``finops sql`` does (:func:`dashboard.store.open_store`): in embedded mode through the
store owner's endpoint when the system runs, else the chdb path itself.

``token issue`` and ``token revoke`` are finops_admin actions (issue 14): they run for the installation's owner (who
can read ``<data dir>/secrets/store-writer.password``, 0600: the demo bootstraps its first admin token this way) or
for the holder of a finops_admin token (``--admin-token`` or ``FINOPS_ADMIN_TOKEN``); anyone else is refused before
anything is written.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from typing import Any

from dashboard.auth import ROLES
from finops.clickhouse import is_embedded
from finops.clock import utc_now
from finops.secrets import (
    STORE_WRITER_PASSWORD,
    SecretUnreadableError,
    load_control_signing_key,
    read_secret,
    secret_path,
)

# Imports inside functions: each handler imports what it runs, so `finops --help` loads no role's
# dependencies (start-up cost; measure with `python -X importtime -m finops.cli --help`).

__all__ = ["register"]


_ADMIN_TOKEN_HELP = ("a finops_admin token authorising this (default: env FINOPS_ADMIN_TOKEN); not needed by the "
                     "installation's owner, who can read <data dir>/secrets")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``serve`` and ``token`` to the ``finops`` command line."""
    serve = subparsers.add_parser(
        "serve",
        help="serve the web dashboard and the HTTP API (JSON under /api/, /healthz, /metrics)",
        description="Serve the dashboard and API. Callers authenticate with a token from `finops token issue`; "
        "every read is filtered by the token's teams. Reaches ClickHouse via FINOPS_CLICKHOUSE_URL (in embedded "
        "mode through the store endpoint FINOPS_CLICKHOUSE_QUERY_URL when the system runs).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.add_argument("--refresh", type=float, default=5.0, help="seconds between page refreshes (default 5)")
    serve.add_argument("--database", default=None, help="database (default FINOPS_CLICKHOUSE_DATABASE)")
    serve.add_argument("--no-kafka", action="store_true",
                       help="do not use Kafka (no control commands, budget changes or lag metrics)")
    serve.set_defaults(func=_handle_serve)

    token = subparsers.add_parser("token", help="issue, revoke and list dashboard/API tokens")
    token_sub = token.add_subparsers(dest="token_cmd", required=True, metavar="{issue,revoke,list}")
    issue = token_sub.add_parser("issue", help="issue a token (printed once; only its hash is stored)")
    issue.add_argument("--role", required=True, choices=ROLES,
                       help="the holder's role (what each role may do: the permission matrix in dashboard/auth.py)")
    issue.add_argument("--team", action="append", default=[], metavar="TEAM",
                       help="a team the holder may see (repeatable; '*' = every team)")
    issue.add_argument("--project", action="append", default=[], metavar="PROJECT",
                       help="narrow to these projects of the teams (repeatable; default every project)")
    issue.add_argument("--subject", default=None, help="who holds the token (default: your user name)")
    issue.add_argument("--database", default=None, help="database (default FINOPS_CLICKHOUSE_DATABASE)")
    issue.add_argument("--json", action="store_true", help="print JSON (token and record)")
    issue.add_argument("--admin-token", default=None, help=_ADMIN_TOKEN_HELP)
    issue.set_defaults(func=_handle_issue)
    revoke = token_sub.add_parser("revoke", help="revoke a token by its id (refused from the next request on)")
    revoke.add_argument("token_id", help="the id shown by `finops token list` (the part after fo_)")
    revoke.add_argument("--database", default=None, help="database (default FINOPS_CLICKHOUSE_DATABASE)")
    revoke.add_argument("--admin-token", default=None, help=_ADMIN_TOKEN_HELP)
    revoke.set_defaults(func=_handle_revoke)
    listing = token_sub.add_parser("list", help="list tokens (ids, roles, teams; never secrets)")
    listing.add_argument("--database", default=None, help="database (default FINOPS_CLICKHOUSE_DATABASE)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_handle_list)


def _open(args: argparse.Namespace, *, owner_wait: float = 0.0) -> tuple[Any, Any]:
    from dashboard.store import open_store
    from finops.settings import load_settings

    settings = load_settings()
    database = args.database or settings.clickhouse.database
    return settings, open_store(settings.clickhouse_url(), database, settings.clickhouse.query_url,
                                data_dir=settings.data_dir, owner_wait=owner_wait)


def _audit_cli(store: Any, action: str, target: str, details: dict[str, Any], *, actor: str) -> None:
    from dashboard.auth import audit_row
    from dashboard.server import json_dumps

    store.insert("admin_audit", [audit_row(None, action, target, "ok", json_dumps(details), utc_now(),
                                           actor=actor)])


def authorise_admin(args: argparse.Namespace, settings: Any, store: Any, action: str) -> str:
    """Who may run a finops_admin command from the shell; returns the actor for the audit row.

    Allowed: the holder of a finops_admin token (``--admin-token`` / ``FINOPS_ADMIN_TOKEN``, checked against the
    store), or the installation's owner: whoever can read the data dir's 0600 store secret, or opened the chdb
    files themselves (the system is stopped).

    Raises:
        AuthenticationError: the token is invalid or revoked.
        PermissionDeniedError: the token is not finops_admin, or there is neither a token nor access to the secret.
        SecretFileError: the secret file is readable by others (the message names the chmod).
    """
    from dashboard.auth import PermissionDeniedError, TokenStore
    token = getattr(args, "admin_token", None) or os.environ.get("FINOPS_ADMIN_TOKEN")
    if token:
        principal = TokenStore(store).authenticate(token.strip())
        if principal.role != "finops_admin":
            raise PermissionDeniedError(f"`finops token {action}` needs a finops_admin token; the one given is "
                                        f"{principal.role} ({principal.token_id})")
        return f"{principal.subject} (cli, token {principal.token_id})"
    if is_embedded(store.writer):
        # The store's files were opened directly (the system is stopped): whoever can do that owns the data.
        return f"{getpass.getuser()} (cli, store files)"
    secret = secret_path(settings.data_dir, STORE_WRITER_PASSWORD)
    try:
        owner = read_secret(secret) is not None
    except SecretUnreadableError:
        owner = False
    if not owner:
        raise PermissionDeniedError(
            f"`finops token {action}` needs finops_admin credentials: pass a finops_admin token with --admin-token "
            f"(or FINOPS_ADMIN_TOKEN), or run it as the installation's owner, who can read {secret} (created 0600 "
            "when the store starts; same FINOPS_DATA_DIR as the running system)"
        )
    return f"{getpass.getuser()} (cli, installation owner)"


def _handle_issue(args: argparse.Namespace) -> int:
    from dashboard.auth import TokenStore

    settings, store = _open(args)
    try:
        actor = authorise_admin(args, settings, store, "issue")
        subject = args.subject or getpass.getuser()
        token, record = TokenStore(store).issue(
            args.role, args.team, projects=args.project, subject=subject,
            created_by=actor, now=utc_now(),
        )
        _audit_cli(store, "token.issue", record.token_id,
                   {"role": record.role, "teams": record.teams, "projects": record.projects, "subject": subject},
                   actor=actor)
    finally:
        store.close()
    if args.json:
        from dashboard.server import json_dumps

        print(json_dumps({"token": token, **record.as_json()}))
    else:
        print(token)
        print(f"token {record.token_id}: {record.role} for {', '.join(record.teams) or 'every team'} "
              f"(subject {record.subject}); shown once, only its hash is stored", file=sys.stderr)
    return 0


def _handle_revoke(args: argparse.Namespace) -> int:
    from dashboard.auth import TokenStore

    settings, store = _open(args)
    try:
        actor = authorise_admin(args, settings, store, "revoke")
        revoked = TokenStore(store).revoke(args.token_id, now=utc_now())
        if revoked:
            _audit_cli(store, "token.revoke", args.token_id, {}, actor=actor)
    finally:
        store.close()
    if not revoked:
        print(f"finops: no active token {args.token_id!r}", file=sys.stderr)
        return 1
    print(f"token {args.token_id} revoked")
    return 0


def _handle_list(args: argparse.Namespace) -> int:
    from dashboard.auth import TokenStore
    from dashboard.server import json_dumps

    _, store = _open(args)
    try:
        records = TokenStore(store).list()
    finally:
        store.close()
    if args.json:
        print(json_dumps([r.as_json() for r in records]))
        return 0
    for r in records:
        state = f"revoked {r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "active"
        print(f"{r.token_id}  {r.role:<12}  {','.join(r.teams) or '*':<24}  {r.subject:<20}  {state}")
    return 0


def _handle_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from dashboard.server import DashboardConfig, KafkaPublisher, build_app
    from finops.clickhouse import ROLE_STORE_WAIT_S
    from finops.topics import TopicNames

    settings, store = _open(args, owner_wait=ROLE_STORE_WAIT_S)  # started with the sink: wait for its endpoint
    publisher: KafkaPublisher | None = None
    kafka_config: dict[str, Any] | None = None
    topics = TopicNames(settings.kafka.topic_prefix)
    if not args.no_kafka:
        kafka_config = settings.kafka.client_config()
        publisher = KafkaPublisher(kafka_config)
    # FINOPS_CONTROL_SIGNING_KEY, else the installation's key in <data dir>/secrets (the one the guards verify).
    secret = load_control_signing_key(
        settings.data_dir,
        settings.control.signing_key.get_secret_value() if settings.control.signing_key else None,
        create=True,
    ) if not args.no_kafka else None
    from finops.topics import LEDGER_SINK_GROUP, SPEND_SINK_GROUP

    config = DashboardConfig(
        store=store, publisher=publisher, control_topic=topics.control, policies_topic=topics.policies,
        signing_key_id=settings.control.key_id, signing_secret=secret, kafka_config=kafka_config,
        consumer_groups={
            settings.stream.group_id: (topics.usage,),
            LEDGER_SINK_GROUP: (topics.priced,),
            SPEND_SINK_GROUP: (topics.spend,),
        },
        dlq_topic=topics.dlq, refresh_seconds=args.refresh,
    )
    print(f"dashboard: http://{args.host}:{args.port}/ (ClickHouse: {store.where}); "
          "issue a token with `finops token issue`", flush=True)
    try:
        # run_app installs SIGINT/SIGTERM handlers and shuts the server down gracefully.
        web.run_app(build_app(config), host=args.host, port=args.port, print=None, access_log=None)
    finally:
        if publisher is not None:
            publisher.close()
        store.close()
    print(json.dumps({"dashboard": "stopped"}), flush=True)
    return 0
