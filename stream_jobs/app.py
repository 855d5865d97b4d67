"""The stream job: one Faust app that hosts the usage hot path as a service and runs Faust agents on the low-volume
topics. ``finops stream run`` starts it (``stream_jobs/cli.py``).

Role (faust-streaming ``docs/userguide/application.rst`` layout): :class:`HotPathService` runs the hot path, a
confluent-kafka batch consumer, in its own thread, because the usage topic carries every model call and Faust's
per-message cost is too high for it (DESIGN §9); Faust agents serve the low-volume topics, where tables, windows
and timers earn their cost (here: closed 1-minute team windows -> a per-team, per-UTC-day spend table).

Guarantee (DESIGN §5): Faust runs ``at_least_once``; the team-day table skips a partial it applied before
(:func:`compute_team_day_update`), so redeliveries and re-emitted windows are counted once; a failing hot path
crashes the app, so the worker exits non-zero instead of running on without its main job.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import faust
import mode

from finops.topics import TopicNames
from schemas.errors import FinopsError
from schemas.wire import AvroCodec
from stream_jobs.hotpath import build_hot_path

if TYPE_CHECKING:
    from finops.settings import FinopsSettings
    from stream_jobs.hotpath import HotPath

__all__ = [
    "MINUTES_PER_DAY",
    "HotPathService",
    "StreamApp",
    "build_app",
    "compute_team_day_key",
    "compute_team_day_update",
]

log = logging.getLogger(__name__)

MINUTES_PER_DAY = 24 * 60
_MINUTE_US = 60_000_000
_DAY_US = MINUTES_PER_DAY * _MINUTE_US


# ---- pure logic of the team-day spend table (no Faust or Kafka objects in or out) -----------------------------------
def compute_team_day_key(team: str, window_start_us: int) -> str:
    """The table key of a team's spend on the UTC day of ``window_start_us``: ``<team>|<YYYY-MM-DD>``."""
    day = datetime.fromtimestamp(window_start_us // _DAY_US * 86_400, UTC).date().isoformat()
    return f"{team}|{day}"


def compute_team_day_update(value: Mapping[str, Any] | None, partial: Mapping[str, Any]) -> dict[str, Any] | None:
    """Apply one ``team`` SpendAggregate partial (a decoded Avro dict) to a team-day value; return the new value, or
    ``None`` when this partial was applied before (a redelivery or a re-emission: same window, team, partition).

    Faust's ``exactly_once`` has open duplicate and crash bugs, so the app runs ``at_least_once`` and the guard lives
    in the table value itself, so the changelog and the dedupe move together: every ``team`` partial applied is one
    bit (its minute of the day) per source partition, and a partial whose bit is set is skipped. That is exact
    whatever order the partials arrive in (the spend topic is keyed by ``aggregate_id``, so one team's partials are
    spread over its partitions, and a per-partition "highest offset applied" guard could drop a late older minute).
    The partials are repartitioned by team (``group_by``) so each table key is written from one partition.

    Value (JSON-serialisable): ``{"cost_usd": "<decimal>", "calls": int, "unpriced_calls": int, "errors": int,
    "applied": {"<source_partition>": "<hex bitmask over the minutes of the day>"}}``. Minutes are counted from
    the UTC day start, so a partial of 1-minute windows maps to one bit; windows of other sizes set the bit of
    their first minute (still exact: one window, one bit).
    """
    start = partial["window_start"]
    start_us = start if isinstance(start, int) else _to_us(start)
    minute = (start_us % _DAY_US) // _MINUTE_US
    partition = str(partial["source_partition"])
    applied: dict[str, str] = dict((value or {}).get("applied", {}))
    bits = int(applied.get(partition, "0"), 16)
    bit = 1 << minute
    if bits & bit:
        return None
    applied[partition] = format(bits | bit, "x")
    old_cost = Decimal((value or {}).get("cost_usd", "0"))
    return {
        "cost_usd": str(old_cost + partial["cost_usd"]),
        "calls": int((value or {}).get("calls", 0)) + int(partial["calls"]),
        "unpriced_calls": int((value or {}).get("unpriced_calls", 0)) + int(partial["unpriced_calls"]),
        "errors": int((value or {}).get("errors", 0)) + int(partial["errors"]),
        "applied": applied,
    }


def _to_us(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# ---- the hot path as a service of the app -------------------------------------------------------------------------
class HotPathService(mode.Service):
    """Runs a :class:`HotPath` in its own thread for as long as the app runs.

    Promises: ``on_start`` returns once the thread is started (the hot path subscribes there); ``on_stop`` asks the
    hot path to finish its batch, flush and commit, and waits for the thread (in an executor, so the event loop
    stays free). A failure of the hot path crashes the app with that error (mode re-raises it from the worker).
    """

    def __init__(self, factory: Callable[[], HotPath], *, join_timeout_s: float = 60.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._factory = factory
        self._join_timeout_s = join_timeout_s
        self.hot_path: HotPath | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._finished = asyncio.Event()

    async def on_start(self) -> None:
        loop = asyncio.get_running_loop()
        self._finished = asyncio.Event()
        self.hot_path = self._factory()
        hot_path = self.hot_path

        def target() -> None:
            try:
                hot_path.run()
            except BaseException as err:  # noqa: BLE001 - handed to the event loop, which crashes the app
                self.error = err
                log.critical("usage hot path stopped: %s", err, exc_info=err)
            finally:
                loop.call_soon_threadsafe(self._finished.set)

        self._thread = threading.Thread(target=target, name="finops-usage-hotpath", daemon=True)
        self._thread.start()

    @mode.Service.task
    async def _watch(self) -> None:
        await self._finished.wait()
        if self.error is not None and not self.should_stop:
            await self.crash(self.error)

    async def on_stop(self) -> None:
        if self.hot_path is not None:
            self.hot_path.request_stop()
        thread = self._thread
        if thread is not None and thread.is_alive():
            await asyncio.get_running_loop().run_in_executor(None, thread.join, self._join_timeout_s)
            if thread.is_alive():
                log.error("usage hot path did not stop within %.0f s", self._join_timeout_s)

    @property
    def finished(self) -> asyncio.Event:
        """Set when the hot-path thread has returned (stopped or failed)."""
        return self._finished


# ---- the app ---------------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class StreamApp:
    """The built app and the handles tests and the CLI need. ``hot_path`` is set when the app starts the service
    (Faust instantiates services after table recovery)."""

    app: faust.App
    spend_by_team_day: Any  # faust Table
    spend_agent: Any  # faust Agent
    stats: dict[str, int]
    hot_path: HotPathService | None = None


def _broker_credentials(settings: FinopsSettings) -> Any:
    kafka = settings.kafka
    if kafka.security_protocol == "PLAINTEXT":
        return None
    context = ssl.create_default_context() if kafka.security_protocol.endswith("SSL") else None
    if kafka.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
        return faust.SASLCredentials(
            username=kafka.sasl_username or "",
            password=password,
            mechanism=kafka.sasl_mechanism or "PLAIN",
            ssl_context=context,
        )
    return faust.SSLCredentials(context)


def build_app(
    settings: FinopsSettings,
    *,
    hot_path_factory: Callable[[], HotPath] | None = None,
    with_hot_path: bool = True,
    app_id: str | None = None,
) -> StreamApp:
    """The Faust app for ``settings``: the hot-path service (built lazily at start by ``hot_path_factory``,
    default :func:`stream_jobs.hotpath.build_hot_path`) and the spend agent with its table.

    Nothing connects here; ``faust.Worker(app).execute_from_commandline()`` (or ``await app.start()``) does.
    Raises ConfigError for bad settings.
    """
    names = TopicNames(settings.kafka.topic_prefix)
    partitions = settings.kafka.usage_partitions
    # Faust creates <datadir> itself but not its parents (the data dir may not exist on a fresh machine).
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id or f"{settings.kafka.topic_prefix}finops-stream",
        broker=[f"kafka://{server.strip()}" for server in settings.kafka.bootstrap.split(",")],
        broker_credentials=_broker_credentials(settings),
        # No rocksdb binding is installed; the table is rebuilt from its changelog at start (small: teams x days).
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        processing_guarantee="at_least_once",
        web_enabled=False,
        producer_acks=-1,
        autodiscover=False,
    )
    codec = AvroCodec()
    stats = {"spend_messages": 0, "team_partials": 0, "applied": 0, "skipped_replays": 0, "undecodable": 0}

    spend_topic = app.topic(names.spend, key_type=bytes, value_type=bytes, partitions=partitions)
    table = app.Table(
        "spend-team-day",
        default=None,
        partitions=partitions,
        # Keys and values are plain JSON (str key, dict value): readable in the changelog, no model classes.
        schema=faust.Schema(key_serializer="json", value_serializer="json"),
    )

    def team_of(value: bytes) -> str:
        return str(codec.decode(value)[1]["key"])

    async def spend_agent(stream: Any) -> None:
        # Thin: decode, keep team partials, repartition by team, apply the pure update, write.
        async for value in stream.filter(_is_team_partial(codec, stats)).group_by(team_of, name="team"):
            try:
                _, partial = codec.decode(value)
                key = compute_team_day_key(partial["key"], _window_start_us(partial))
                updated = compute_team_day_update(table.get(key), partial)
            except Exception as err:
                # Faust acknowledges an event whose handler raised, so raising would skip it: crash the worker
                # instead (the offset is not committed; the restart meets the event again).
                log.critical("spend agent failed on a team partial; stopping the worker: %s", err, exc_info=err)
                await app.crash(err)
                raise
            if updated is None:
                stats["skipped_replays"] += 1
                continue
            table[key] = updated
            stats["applied"] += 1

    agent = app.agent(spend_topic, name="finops-spend-team-day")(spend_agent)

    built = StreamApp(app=app, spend_by_team_day=table, spend_agent=agent, stats=stats)
    if with_hot_path:
        factory = hot_path_factory
        if factory is None:
            def factory() -> HotPath:
                return build_hot_path(settings)

        class BoundHotPathService(HotPathService):
            """The hot-path service of this app (Faust instantiates registered service classes itself)."""

            def __init__(self, **kwargs: Any) -> None:
                assert factory is not None
                super().__init__(factory, **kwargs)
                built.hot_path = self

        app.service(BoundHotPathService)  # started after table recovery, stopped with the app
    return built


def _window_start_us(partial: Mapping[str, Any]) -> int:
    start = partial["window_start"]
    return start if isinstance(start, int) else _to_us(start)


def _is_team_partial(codec: AvroCodec, stats: dict[str, int]) -> Callable[[bytes], bool]:
    def keep(value: bytes) -> bool:
        stats["spend_messages"] += 1
        try:
            name, record = codec.decode(value)
        except FinopsError as err:
            # The hot path writes this topic; an undecodable message is a bug there, not input to skip silently.
            stats["undecodable"] += 1
            log.error("spend topic: undecodable message skipped by the team-day table: %s", err)
            return False
        if name != "SpendAggregate" or record["dimension"] != "team":
            return False
        stats["team_partials"] += 1
        return True

    return keep
