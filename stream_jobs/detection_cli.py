"""CLI of detection and governance: ``finops policy apply FILE [--dry-run] [--prune] [--allow-rescope]``,
``finops policy list``, ``finops detect run``. Registered through ``COMMAND_MODULES`` in ``finops/cli.py``; heavy
imports stay inside the handlers so ``finops --help`` is fast. Handlers follow STYLE's order: logging, settings,
connectivity, build, signal handlers, run, close in reverse."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from finops.clock import utc_now

# Imports inside functions: each handler imports what it runs, so `finops --help` loads no role's
# dependencies (start-up cost; measure with `python -X importtime -m finops.cli --help`).

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    policy = subparsers.add_parser("policy", help="budget policies as code (finops.policies.v1)")
    policy_sub = policy.add_subparsers(dest="policy_cmd", required=True, metavar="{apply,list}")
    apply = policy_sub.add_parser(
        "apply", help="validate a policy YAML file and publish what changed (nothing is published on any error)")
    apply.add_argument("file", help="policy YAML file (see infra/policies.example.yaml)")
    apply.add_argument("--dry-run", action="store_true", help="show the diff against the published policies only")
    apply.add_argument("--prune", action="store_true", help="delete published policies that are not in the file")
    apply.add_argument("--allow-rescope", action="store_true",
                       help="publish updates that move a published policy to another scope (a finops admin's "
                            "decision: it takes the budget from its current owner)")
    apply.set_defaults(func=_apply)
    listing = policy_sub.add_parser("list", help="list the published policies")
    listing.set_defaults(func=_list)

    detect = subparsers.add_parser("detect", help="budgets, anomalies and waste detection")
    detect_sub = detect.add_subparsers(dest="detect_cmd", required=True, metavar="{run}")
    run = detect_sub.add_parser("run", help="run the detection service (standalone, without the Faust worker)")
    run.add_argument("--from-earliest", action="store_true",
                     help="a new consumer group starts at the oldest priced event instead of the newest")
    run.add_argument("--no-clickhouse", action="store_true", help="do not reconcile or seed from ClickHouse")
    run.set_defaults(func=_run)


def _context() -> tuple[Any, Any]:
    """(settings, topic names) from the environment (entry points only read it)."""
    from finops.settings import load_settings
    from finops.topics import TopicNames

    settings = load_settings()
    return settings, TopicNames(settings.kafka.topic_prefix)


def _apply(args: argparse.Namespace) -> int:
    from stream_jobs.policies import (
        check_rescopes,
        compute_diff,
        load_policy_file,
        load_published_policies,
        publish_changes,
        render_diff,
    )

    # Validate before touching Kafka: a bad file is refused even when the broker is down.
    wanted = load_policy_file(Path(args.file), now=utc_now())
    settings, topics = _context()
    config = settings.kafka.client_config()
    published = load_published_policies(config, topics.policies)
    changes = compute_diff(wanted, published, prune=args.prune)
    print(render_diff(changes))
    if args.dry_run:
        print("(dry run: nothing published)")
        return 0
    check_rescopes(changes, allow=args.allow_rescope)
    count = publish_changes(config, topics.policies, changes)
    print(f"published {count} change(s) to {topics.policies}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from stream_jobs.policies import load_published_policies, render_policies

    settings, topics = _context()
    print(render_policies(load_published_policies(settings.kafka.client_config(), topics.policies)))
    return 0


def _run(args: argparse.Namespace) -> int:
    from stream_jobs.detection import (
        DetectionService,
        build_detection_config,
        build_drift_tiers,
        build_ledger_reader,
    )

    log = logging.getLogger("stream_jobs.detection")
    settings, topics = _context()
    detection_config = build_detection_config(settings)
    if args.from_earliest:
        detection_config = replace(detection_config, start_from="earliest")
    ledger = None if args.no_clickhouse else build_ledger_reader(settings)
    service = DetectionService(settings.kafka.client_config(), topics, detection_config, ledger=ledger,
                               drift_tiers=build_drift_tiers(settings))
    service.start()

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping after the current batch", signum)
        service.request_stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    service.run()
    print(f"detection stopped: {service.stats}", file=sys.stderr)
    return 0
