"""``finops control suspend | throttle | resume | status`` for operators, and ``finops alerts run``.

Role: operator commands publish a signed ControlCommand on ``agent.control.v1`` for one scope (``--agent``,
``--team`` or ``--project``) with a reason, an optional expiry and ``issued_by = operator:<name>``; ``status`` folds
the topic by the guard's rules (:func:`compute_control_state`), so it shows what agents obey.

Guarantee: commands are refused without the installation's operator key (:func:`authorize`) and signed with the
installation's signing key (:func:`_signing`); a tombstone or forged command after a genuine one is reported as
ignored, never shown as the state. The alert worker writes every command, forged ones included, to the audit table.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import signal
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finops.clickhouse import ROLE_STORE_WAIT_S, open_client
from finops.clock import as_utc, utc_now
from finops.secrets import (
    CONTROL_OPERATOR_KEY,
    CONTROL_SIGNING_KEY,
    SecretFileError,
    load_control_signing_key,
    load_or_create_secret,
    operator_key_matches,
    secret_path,
)
from schemas.errors import ConfigError, FinopsError

if TYPE_CHECKING:
    pass

# Imports inside functions: each handler imports what it runs, so `finops --help` loads no role's
# dependencies (start-up cost; measure with `python -X importtime -m finops.cli --help`).

__all__ = [
    "NotAuthorized",
    "authorize",
    "parse_expiry",
    "register",
]

_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class NotAuthorized(FinopsError):
    """The caller does not hold the operator role."""


def authorize(presented: str | None, data_dir: Path) -> None:
    """Raise :class:`NotAuthorized` unless ``presented`` is the installation's operator key (the stored
    ``<data dir>/secrets/control-operator.key``; see :func:`finops.secrets.operator_key_matches`). Neither key
    appears in a message. The key is presented with ``--operator-key`` or ``FINOPS_CONTROL_OPERATOR_KEY`` and checked
    against the stored file (0600, generated per installation), never against a variable the caller sets; ``status``
    needs no operator key (it only reads)."""
    where = secret_path(data_dir, CONTROL_OPERATOR_KEY)
    if not presented:
        # Generated here on first use too, so the file this message points the owner at exists (on a fresh
        # installation nothing else may have created it yet); a user who cannot write the data dir gets the same
        # message.
        try:
            load_or_create_secret(where)
        except SecretFileError:
            pass
        raise NotAuthorized("operator role required: present this installation's operator key with --operator-key "
                            f"or FINOPS_CONTROL_OPERATOR_KEY; the installation's owner finds it in {where} "
                            f"(generated at first use), e.g. --operator-key \"$(cat {where})\"")
    if not operator_key_matches(data_dir, presented.strip()):
        raise NotAuthorized(f"operator role required: the operator key presented is not valid (not the one in {where})")


def parse_expiry(text: str | None, now: datetime) -> datetime | None:
    """``30m``, ``2h``, ``1d12h`` (from ``now``) or an ISO 8601 timestamp (UTC if no zone); None for None.
    Raises :class:`ConfigError` for anything else or a time not in the future."""
    if text is None:
        return None
    value = text.strip()
    if _DURATION.fullmatch(value) or re.fullmatch(r"(\d+\s*[smhdw]\s*)+", value):
        seconds = sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(value))
        when = now + timedelta(seconds=seconds)
    else:
        try:
            when = as_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError as err:
            raise ConfigError(f"--expires {text!r}: expected a duration like 30m, 2h, 1d or an ISO 8601 time") \
                from err
    if when <= now:
        raise ConfigError(f"--expires {text!r} is not in the future")
    return when.astimezone(UTC)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    control = sub.add_parser("control", help="operator control of agents: suspend, throttle, resume, status")
    csub = control.add_subparsers(dest="control_cmd", required=True, metavar="{suspend,throttle,resume,status}")

    def scoped(p: argparse.ArgumentParser, *, required: bool = True) -> None:
        group = p.add_mutually_exclusive_group(required=required)
        group.add_argument("--agent", help="the agent_id")
        group.add_argument("--team", help="the team")
        group.add_argument("--project", help="the project")

    def operator_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--reason", required=True, help="why (shown to agents, operators and the audit)")
        p.add_argument("--expires", help="lapse by itself after a duration (30m, 2h, 1d) or at an ISO time")
        p.add_argument("--operator", help="your identity (default: the login name)")
        p.add_argument("--operator-key",
                       help="this installation's operator key (default: env FINOPS_CONTROL_OPERATOR_KEY)")

    for name, help_text in (("suspend", "refuse every model call of the scope"),
                            ("throttle", "limit the scope's model calls per minute"),
                            ("resume", "lift suspension, throttle or downgrade of the scope")):
        p = csub.add_parser(name, help=help_text)
        scoped(p)
        operator_args(p)
        if name == "throttle":
            p.add_argument("--rate", type=int, required=True, help="allowed calls per minute (>= 1)")
        p.set_defaults(func=_operator_command, action=name)
    status = csub.add_parser("status", help="current control state per scope (reads the compacted topic)")
    scoped(status, required=False)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--timeout", type=float, default=15.0, help="seconds to read the topic (default 15)")
    status.set_defaults(func=_status)

    alerts = sub.add_parser("alerts", help="the alert worker")
    asub = alerts.add_subparsers(dest="alerts_cmd", required=True, metavar="{run}")
    run = asub.add_parser("run", help="consume alerts; enforce; deliver to Slack, PagerDuty and webhooks")
    run.add_argument("--routes", type=Path, help="routing rules YAML (default: FINOPS_ALERTING_* destinations)")
    run.add_argument("--outbox", type=Path, help="outbox SQLite file (default <data dir>/alerting/outbox.sqlite)")
    run.add_argument("--cooldown", type=float, default=300.0, help="seconds between notifications per key")
    run.add_argument("--group", default="finops-alerts", help="consumer group (default finops-alerts)")
    run.set_defaults(func=_alerts_run)


def _scope(args: argparse.Namespace) -> tuple[str, str] | None:
    for name in ("agent", "team", "project"):
        if getattr(args, name, None):
            return name, getattr(args, name)
    return None


def _signing(settings: Any) -> tuple[str, bytes]:
    """The key id and key that sign control commands (FINOPS_CONTROL_SIGNING_KEY, else the installation's).

    The installation's key is ``<data dir>/secrets/control-signing.key``, which every role finds by itself."""
    configured = settings.control.signing_key.get_secret_value() if settings.control.signing_key else None
    key = load_control_signing_key(settings.data_dir, configured, create=True)
    if not key:
        raise ConfigError("no control signing key: set FINOPS_CONTROL_SIGNING_KEY or let finops generate one in "
                          "<data dir>/secrets")
    return settings.control.key_id, key


def _operator_command(args: argparse.Namespace) -> int:
    from alerting.worker import publish_commands
    from finops.kafka.clients import Role, build_producer, require_broker
    from finops.settings import load_settings
    from finops.topics import TopicNames
    from schemas.models import ControlCommand, sign
    from schemas.wire import AvroCodec

    settings = load_settings()
    if os.environ.get("FINOPS_OPERATOR_KEY") and not (args.operator_key or settings.control.operator_key):
        raise NotAuthorized("FINOPS_OPERATOR_KEY is no longer read: present the operator key as "
                            "FINOPS_CONTROL_OPERATOR_KEY or --operator-key")
    presented = args.operator_key or (
        settings.control.operator_key.get_secret_value() if settings.control.operator_key else None)
    authorize(presented, settings.data_dir)
    key_id, secret = _signing(settings)
    scope = _scope(args)
    assert scope is not None  # argparse requires one
    now = utc_now()
    operator = args.operator or getpass.getuser()
    cmd = ControlCommand(
        command_id=f"op-{uuid.uuid4()}", scope_type=scope[0], scope_value=scope[1],  # type: ignore[arg-type]
        action=args.action, rate_per_minute=getattr(args, "rate", None), reason=args.reason,
        issued_by=f"operator:{operator}", issued_at=now, expires_at=parse_expiry(args.expires, now),
        key_id="", signature="")
    cmd = sign(cmd, key_id, secret)
    topic = TopicNames(settings.kafka.topic_prefix).control
    producer = build_producer(settings.kafka, Role.CONTROL)
    require_broker(producer, settings.kafka, what=f"publish to {topic} on")
    publish_commands(producer, topic, [cmd], AvroCodec(), timeout=30)
    expiry = cmd.expires_at.isoformat() if cmd.expires_at else "until replaced"
    print(f"{cmd.action} {scope[0]}:{scope[1]} published ({cmd.command_id}, issued by {cmd.issued_by}, "
          f"expires {expiry})")
    return 0


def _status(args: argparse.Namespace) -> int:
    from alerting.control_state import read_control_state
    from finops.settings import load_settings
    from finops.topics import TopicNames

    settings = load_settings()
    keys: dict[str, bytes] = {}
    configured = settings.control.signing_key.get_secret_value() if settings.control.signing_key else None
    signing_key = load_control_signing_key(settings.data_dir, configured, create=False)
    if signing_key is not None:
        keys[settings.control.key_id] = signing_key
    else:
        print(f"finops: warning: no control signing key (FINOPS_CONTROL_SIGNING_KEY unset and "
              f"{secret_path(settings.data_dir, CONTROL_SIGNING_KEY)} absent): no command can be verified",
              file=sys.stderr)
    state = read_control_state(settings.kafka.client_config(), TopicNames(settings.kafka.topic_prefix).control, keys,
                               timeout=args.timeout)
    scope = _scope(args)
    if scope is not None:
        state = {k: v for k, v in state.items() if k == f"{scope[0]}:{scope[1]}"}
    if args.json:
        print(json.dumps(state, indent=2, sort_keys=True))
        return 0
    if not state:
        print("no control commands")
    for key, row in sorted(state.items()):
        note = (f" ({row['ignored']} message(s) ignored, the last: {row['ignored_reason']})"
                if row.get("ignored") else "")
        if "error" in row:
            print(f"{key}: no verified command{note}")
            continue
        flags = ("live" if row["live"] else "not live") + ("" if row["verified"] else ", SIGNATURE DOES NOT VERIFY")
        extra = f" {row['rate_per_minute']}/min" if row["rate_per_minute"] else ""
        extra += f" -> {row['target_model']}" if row["target_model"] else ""
        print(f"{key}: {row['action']}{extra} [{flags}] by {row['issued_by']} at {row['issued_at']}, expires "
              f"{row['expires_at'] or 'never'}: {row['reason']}{note}")
    return 0


def _alerts_run(args: argparse.Namespace) -> int:
    from alerting.enforcement import Enforcer
    from alerting.outbox import Outbox
    from alerting.router import build_default_routes, load_routes
    from alerting.worker import AlertWorker, WorkerOptions
    from finops.settings import load_settings
    from finops.kafka.clients import ROLE_BROKER_WAIT_S
    from finops.topics import TopicNames, ensure_topics
    settings = load_settings()
    a = settings.alerting
    if args.routes:
        routes = load_routes(args.routes, dict(os.environ))
    else:
        routes = build_default_routes(slack_url=a.slack_webhook_url, pagerduty_key=a.pagerduty_routing_key,
                                      pagerduty_url=a.pagerduty_url, webhook_url=a.webhook_url,
                                      webhook_secret=a.webhook_secret)
    if not routes.destinations:
        print("finops: warning: no alert destination configured; alerts are enforced but not notified",
              file=sys.stderr)
    key_id, secret = _signing(settings)
    kafka = settings.kafka.client_config()
    ensure_topics(kafka, prefix=settings.kafka.topic_prefix, usage_partitions=settings.kafka.usage_partitions,
                  replication_factor=settings.kafka.replication_factor, connect_timeout=ROLE_BROKER_WAIT_S)
    names = TopicNames(settings.kafka.topic_prefix)
    # In embedded mode the sink owns the chdb path; write deliveries and commands through its store endpoint
    # (opening the path here would fail while the sink runs, which is exactly when the alert worker runs).
    ch, _ = open_client(settings.clickhouse_url(), settings.clickhouse.database, settings.clickhouse.query_url,
                        readonly=False, data_dir=settings.data_dir, owner_wait=ROLE_STORE_WAIT_S)
    outbox = Outbox(args.outbox or settings.data_dir / "alerting" / "outbox.sqlite")
    enforcer = Enforcer(outbox, key_id=key_id, secret=secret, scopes=outbox.enforcement_scopes)
    worker = AlertWorker(kafka_config=kafka, alerts_topic=names.alerts, control_topic=names.control, routes=routes,
                         outbox=outbox, enforcer=enforcer, verify_keys={key_id: secret},
                         options=WorkerOptions(group_id=args.group, cooldown_s=args.cooldown,
                                               dashboard_url=a.dashboard_url),
                         ch_client=ch, ch_database=settings.clickhouse.database)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"alert worker: {len(routes.destinations)} destinations ({', '.join(routes.destinations) or 'none'}), "
          f"outbox {outbox.path}", file=sys.stderr)
    try:
        worker.run(stop)
    finally:
        outbox.close()
    return 0
