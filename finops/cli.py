"""The `finops` command: one entry point, sub-commands registered by each package.

Every handler follows one order (STYLE.md): logging, settings, connectivity check, build, signal handlers, run,
close in reverse. Errors derived from FinopsError are printed as one clear message and exit 2; anything else is a
bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence

from schemas.errors import FinopsError

# Imports inside functions: each handler imports what it runs, so `finops --help` loads no role's
# dependencies (start-up cost; measure with `python -X importtime -m finops.cli --help`).

# Modules that add sub-commands through `register(subparsers)`. A module that is not present in this
# distribution is skipped; an import error *inside* a present module is a bug and is raised.
COMMAND_MODULES: tuple[str, ...] = (
    "finops.cli",
    "sinks.cli",
    "sinks.sql_cli",
    "sinks.worker_cli",
    "producers.cli",
    "producers.intake.cli",
    "stream_jobs.cli",
    "stream_jobs.detection_cli",
    "alerting.control_cli",
    "governance.cli",
    "governance.bills_cli",
    "dashboard.cli",
    "finops.bench",
    "finops.demo",
)


OUR_PACKAGES = frozenset({"finops", "schemas", "producers", "stream_jobs", "sinks", "alerting", "governance",
                          "dashboard"})


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    stack = sub.add_parser("stack", help="run the local single-node Kafka broker (KRaft) from Maven Central jars")
    stack_sub = stack.add_subparsers(dest="stack_cmd", required=True, metavar="{up,down,status}")
    up = stack_sub.add_parser("up", help="fetch artifacts, format storage, start the broker, create topics")
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the broker (default 90)")
    up.set_defaults(func=_stack_up)
    down = stack_sub.add_parser("down", help="stop the broker cleanly (data stays on disk)")
    down.set_defaults(func=_stack_down)
    status = stack_sub.add_parser("status", help="is the broker running, and which topics exist")
    status.set_defaults(func=_stack_status)

    config = sub.add_parser("config", help="inspect the configuration")
    config_sub = config.add_subparsers(dest="config_cmd", required=True, metavar="{check}")
    check = config_sub.add_parser(
        "check", help="validate FINOPS_* variables; print the effective configuration with secrets masked"
    )
    check.add_argument("--json", action="store_true", help="print JSON instead of text")
    check.set_defaults(func=_config_check)

    topics = sub.add_parser("topics", help="create the declared Kafka topics that are missing (idempotent)")
    topics.set_defaults(func=_topics_ensure)


def _stack(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from finops.settings import load_settings
    from finops.stack import stack_from_settings

    settings = load_settings()
    return settings, stack_from_settings(settings.data_dir, settings.kafka.bootstrap)


def _stack_up(args: argparse.Namespace) -> int:
    from finops.topics import ensure_topics

    settings, stack = _stack(args)
    before = stack.status()
    status = stack.up(timeout=args.timeout)
    print(f"kafka: {'already running' if before.running else 'started'} on {status.bootstrap} "
          f"(pid {status.pid}, data {stack.data_dir})")
    created = ensure_topics(
        settings.kafka.client_config(),
        prefix=settings.kafka.topic_prefix,
        usage_partitions=settings.kafka.usage_partitions,
        replication_factor=settings.kafka.replication_factor,
    )
    print(f"topics: {len(created)} created" + (f" ({', '.join(created)})" if created else ", all present"))
    return 0


def _stack_down(args: argparse.Namespace) -> int:
    _, stack = _stack(args)
    print("kafka: stopped" if stack.down() else "kafka: was not running")
    return 0


def _stack_status(args: argparse.Namespace) -> int:
    settings, stack = _stack(args)
    status = stack.status()
    print(f"kafka: {status.detail} on {status.bootstrap} (pid {status.pid}, home {status.home})")
    if not status.running:
        return 1
    from finops.kafka.clients import build_admin

    md = build_admin(settings.kafka).list_topics(timeout=10)
    for name in sorted(t for t in md.topics if not t.startswith("__")):
        print(f"  {name}  partitions={len(md.topics[name].partitions)}")
    return 0


def _config_check(args: argparse.Namespace) -> int:
    from finops.settings import load_settings

    settings = load_settings()
    effective = settings.masked()
    if args.json:
        print(json.dumps(effective, indent=2, default=str))
    else:
        for section, rows in effective.items():
            print(f"[{section}]")
            for env, value in rows.items():
                print(f"  {env} = {value}")
    print("configuration OK", file=sys.stderr)
    return 0


def _topics_ensure(args: argparse.Namespace) -> int:
    from finops.settings import load_settings
    from finops.topics import ensure_topics

    s = load_settings()
    created = ensure_topics(
        s.kafka.client_config(), prefix=s.kafka.topic_prefix,
        usage_partitions=s.kafka.usage_partitions, replication_factor=s.kafka.replication_factor,
    )
    print(f"{len(created)} topics created" + (f": {', '.join(created)}" if created else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finops",
        description="agent-finops: see, optimise and govern what your AI agents spend, in real time.",
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (default FINOPS_LOG_LEVEL)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    missing: dict[str, str] = {}
    for name in COMMAND_MODULES:
        try:
            importlib.import_module(name).register(sub)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):
                continue  # a part this distribution does not ship
            top = (err.name or "").split(".")[0]
            if not top or top in OUR_PACKAGES:
                raise  # a broken module of ours is a bug, not a missing extra
            missing[name.split(".")[0]] = top
    if missing:
        parts = ", ".join(f"{part} (needs {dep})" for part, dep in sorted(missing.items()))
        parser.epilog = (f"Not available in this install: the commands of {parts}. The base install is the agent "
                         "SDK; `pip install 'agent-finops[all]'` adds the pipeline, the dashboard and their commands.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level or "INFO")
    try:
        code = int(args.func(args))
    except FinopsError as err:
        print(f"finops: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("finops: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as err:
        top = (err.name or "").split(".")[0]
        if not top or top in OUR_PACKAGES:
            raise
        print(f"finops: error: `finops {args.command}` needs the Python package {top!r}, which this install lacks "
              "(the base install is the agent SDK): pip install 'agent-finops[all]'", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
