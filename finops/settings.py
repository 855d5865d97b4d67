"""One frozen settings object, read from the environment (prefix ``FINOPS_``) at the entry points only.

Each section is a pydantic-settings class with its own prefix (``FINOPS_KAFKA_*``, ``FINOPS_CLICKHOUSE_*`` ...), so
a variable's name is the section prefix plus the field name in upper case. :func:`load_settings` builds every
section, collects *all* validation errors and raises one :class:`~schemas.errors.ConfigError` that names each
variable and what it expects (quix-streams' configuration habit). Secrets are ``SecretStr`` and print masked.
"""

from __future__ import annotations

import json
import os
import re
import socket
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas.errors import ConfigError


def _section(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, frozen=True, extra="ignore", case_sensitive=False)


class KafkaSettings(BaseSettings):
    """How to reach Kafka and where topics live."""

    model_config = _section("FINOPS_KAFKA_")

    bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    topic_prefix: str = Field("", description="prefix for every topic name (isolates environments and tests)")
    replication_factor: int = Field(1, ge=1, description="replication factor for topics created by finops")
    usage_partitions: int = Field(6, ge=1, description="partitions of the usage topics (the unit of parallelism)")
    schema_registry_url: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("FINOPS_SCHEMA_REGISTRY_URL", "FINOPS_KAFKA_SCHEMA_REGISTRY_URL"),
        description="Confluent Schema Registry URL; unset = Avro single-object encoding without a registry",
    )

    @field_validator("bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            if not re.fullmatch(r"\[?[A-Za-z0-9_.:-]+\]?:\d{1,5}", server.strip()):
                raise ValueError(f"expected host:port[,host:port], got {server!r}")
        return value

    def client_config(self) -> dict[str, Any]:
        """librdkafka configuration (confluent-kafka) for these settings, secrets included: never log it."""
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        return conf


class ClickHouseSettings(BaseSettings):
    """Where the analytics store is: embedded chdb (default) or a ClickHouse server."""

    model_config = _section("FINOPS_CLICKHOUSE_")

    url: SecretStr | None = Field(
        None,
        description="chdb:///abs/path (embedded) or http(s)://user:password@host:port/database; "
        "default chdb://<FINOPS_DATA_DIR>/clickhouse",
    )
    database: str = Field("finops", description="database holding the finops tables")
    query_url: str | None = Field(
        None,
        description="in embedded mode, the HTTP endpoint of the process that owns the chdb path "
        "(other roles query through it); default http://127.0.0.1:8124",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value()
        parts = urlsplit(raw)
        if parts.scheme == "chdb":
            if not (parts.path or parts.netloc):
                raise ValueError("chdb URL needs a data path: chdb:///abs/path")
        elif parts.scheme in ("http", "https"):
            if not parts.hostname:
                raise ValueError("http(s) URL needs a host: http(s)://user:password@host:port/database")
        else:
            raise ValueError(
                "expected chdb:///abs/path (embedded) or http(s)://user:password@host:port/database "
                f"(got a value with scheme {parts.scheme!r})"
            )
        return value

    @field_validator("database")
    @classmethod
    def _check_database(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", value):
            raise ValueError("expected an identifier: letters, digits and _ (not starting with a digit)")
        return value


class ProducerSettings(BaseSettings):
    """The agent-side SDK."""

    model_config = _section("FINOPS_PRODUCER_")

    source: str = Field(default_factory=socket.gethostname, description="the emitting service's name")
    spool_dir: Path | None = Field(
        None, description="on-disk spool for when the broker is down; default <data dir>/spool")
    spool_max_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="spool bound in bytes")
    compression: Literal["lz4", "zstd", "snappy", "gzip", "none"] = "lz4"
    linger_ms: int = Field(20, ge=0, description="batching delay")
    reasoning_conventions: str = Field(
        "",
        description="per source, how its gateway counts reasoning tokens: 'SOURCE=exclusive|inclusive|auto,...' "
        "(exclusive: completion_tokens leaves reasoning out; auto: exclusive when reasoning > completion)",
    )


class StreamSettings(BaseSettings):
    """The stream jobs (pricing hot path and detection)."""

    model_config = _section("FINOPS_STREAM_")

    group_id: str = Field("finops-usage-hotpath", description="consumer group of the usage hot path")
    window_seconds: int = Field(60, ge=1)
    grace_seconds: int = Field(10, ge=0, description="how late an event may be and still count in its window")
    idle_close_seconds: int = Field(30, ge=1, description="close windows of a quiet partition after this wall time")
    dedupe_window_hours: int = Field(24, ge=1)
    dedupe_max_entries: int = Field(5_000_000, ge=1000)
    dlq_max_ratio: float = Field(0.5, gt=0, le=1, description="stop when this share of a window's events is bad")
    dlq_ratio_window: int = Field(1000, ge=10, description="events per bad-input ratio window")
    price_book: Path | None = Field(None, description="organisation price book (YAML)")
    cost_basis: str = Field(
        "",
        description="which cost is authoritative, per source or provider: 'provider:openrouter=reported,"
        "source:NAME=catalogue,*=reported_if_unpriced' (catalogue | reported | reported_if_unpriced); default: "
        "reported for openrouter, reported_if_unpriced otherwise",
    )
    catalogue_dir: Path | None = Field(
        None, description="where `finops prices update` installs catalogue snapshots; default <data dir>/prices"
    )
    catalogue_poll_seconds: float = Field(
        5.0, gt=0, description="how often a stream worker looks for a catalogue installed by `finops prices update`"
    )
    catalogue_max_age_days: int = Field(
        30, ge=1, description="`finops prices status` warns when the price catalogue is older than this"
    )


class AlertingSettings(BaseSettings):
    """Alert destinations. URLs and keys are secrets: they never appear in logs or the delivery log."""

    model_config = _section("FINOPS_ALERTING_")

    slack_webhook_url: SecretStr | None = None
    pagerduty_routing_key: SecretStr | None = None
    pagerduty_url: str = "https://events.pagerduty.com/v2/enqueue"
    webhook_url: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    dashboard_url: str = "http://127.0.0.1:8080"


class ControlSettings(BaseSettings):
    """Signing of control commands and the operator key."""

    model_config = _section("FINOPS_CONTROL_")

    signing_key: SecretStr | None = Field(
        None, description="HMAC key that signs control commands; default: this installation's, generated in "
        "<data dir>/secrets/control-signing.key"
    )
    key_id: str = "k1"
    operator_key: SecretStr | None = Field(
        None, description="the operator key presented to `finops control suspend|throttle|resume`; checked against "
        "<data dir>/secrets/control-operator.key"
    )


_Paths = Annotated[list[str], NoDecode]  # read as comma-separated text (or a JSON list), not as JSON only


class IntakeSettings(BaseSettings):
    """The intake role (``finops intake run``): the OTLP/HTTP receiver and gateway webhooks."""

    model_config = _section("FINOPS_INTAKE_")

    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 to take other machines' telemetry)")
    port: int = Field(4318, ge=1, le=65535, description="OTLP/HTTP port (4318 is the OTLP default)")
    tokens_file: Path | None = Field(
        None, description="intake bearer tokens (hashed); default <data dir>/intake/tokens.json")
    spool_dir: Path | None = Field(None, description="the intake producer's spool; default <data dir>/spool-intake")
    spool_max_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="spool bound; when full, answer 503")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest request body, after gunzip")
    retry_after_seconds: int = Field(5, ge=1, description="Retry-After of a 503 (spool full, broker error)")
    delivery_timeout_seconds: float = Field(60.0, gt=0, description="longest wait for Kafka or the spool")
    team_attributes: _Paths = Field(["attr:team.name", "resource:team.name"],
                                    description="where a call's team comes from: comma-separated attr:/resource: paths")
    project_attributes: _Paths = Field(["attr:project.name", "resource:project.name"])
    agent_attributes: _Paths = Field(["attr:gen_ai.agent.id", "attr:gen_ai.agent.name", "resource:gen_ai.agent.id",
                                      "resource:service.name"])
    task_attributes: _Paths = Field(["attr:gen_ai.conversation.id", "attr:session.id",
                                     "resource:gen_ai.conversation.id"])
    parent_task_attributes: _Paths = Field(["span:parent"])
    environment_attributes: _Paths = Field(["resource:deployment.environment.name", "resource:deployment.environment"])

    @field_validator("team_attributes", "project_attributes", "agent_attributes", "task_attributes",
                     "parent_task_attributes", "environment_attributes", mode="before")
    @classmethod
    def _check_paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except ValueError as err:
                    raise ValueError(f"not a JSON list ({err}); or give comma-separated paths") from err
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        if isinstance(value, list):
            for path in value:
                if not isinstance(path, str) or not (
                        path == "span:parent" or re.fullmatch(r"(attr|resource):[^\s,]+", path)):
                    raise ValueError(f"{path!r} is not a path: use attr:<attribute>, resource:<attribute> or "
                                     "span:parent")
        return value


class BillsSettings(BaseSettings):
    """The providers' own cost and usage reports (``finops bills import --api``) and their reconciliation.

    The keys are organisation admin keys (OpenAI admin key, Anthropic Admin API key, OpenRouter management key):
    secrets, never logged. The base URLs are overridable so a test (or a proxy) can stand in for the provider."""

    model_config = _section("FINOPS_BILLS_")

    openai_admin_key: SecretStr | None = Field(None, description="OpenAI organization admin key (sk-admin-...)")
    anthropic_admin_key: SecretStr | None = Field(None, description="Anthropic Admin API key (sk-ant-admin...)")
    openrouter_management_key: SecretStr | None = Field(None, description="OpenRouter management key")
    openai_base_url: str = "https://api.openai.com"
    anthropic_base_url: str = "https://api.anthropic.com"
    openrouter_base_url: str = "https://openrouter.ai"
    accounts: dict[str, str] = Field(default_factory=dict,
                                     description="JSON: provider project / workspace / key id -> ledger project")
    tolerance_usd: Decimal = Field(Decimal("0.01"), ge=0, description="a cell matches within this many USD, or ...")
    tolerance_pct: Decimal = Field(Decimal(1), ge=0, description="... or this percentage of its bill")
    max_retries: int = Field(5, ge=0, le=20, description="retries of a 429 / 5xx answer per page")
    max_retry_wait_seconds: float = Field(60.0, gt=0, description="longest wait for one retry (caps Retry-After)")
    timeout_seconds: float = Field(30.0, gt=0, description="HTTP timeout per request")


class CoreSettings(BaseSettings):
    model_config = _section("FINOPS_")

    # ./.finops of the working directory, resolved when the settings are loaded: never inside the installed package.
    data_dir: Path = Field(default_factory=lambda: Path.cwd() / ".finops",
                           description="local state: broker data, chdb data, spool")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


_SECTIONS: dict[str, type[BaseSettings]] = {
    "kafka": KafkaSettings,
    "clickhouse": ClickHouseSettings,
    "producer": ProducerSettings,
    "stream": StreamSettings,
    "alerting": AlertingSettings,
    "control": ControlSettings,
    "intake": IntakeSettings,
    "bills": BillsSettings,
}


class FinopsSettings:
    """The effective configuration: one frozen section per part."""

    __slots__ = ("alerting", "bills", "clickhouse", "control", "core", "intake", "kafka", "producer", "stream")

    def __init__(self, core: CoreSettings, **sections: Any) -> None:
        object.__setattr__(self, "core", core)
        for name in _SECTIONS:
            object.__setattr__(self, name, sections[name])

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("settings are frozen")

    core: CoreSettings
    kafka: KafkaSettings
    clickhouse: ClickHouseSettings
    producer: ProducerSettings
    stream: StreamSettings
    alerting: AlertingSettings
    control: ControlSettings
    intake: IntakeSettings
    bills: BillsSettings

    @property
    def data_dir(self) -> Path:
        return self.core.data_dir

    def clickhouse_url(self) -> str:
        """The ClickHouse URL to use (secret: contains the password of a server URL)."""
        if self.clickhouse.url is not None:
            return self.clickhouse.url.get_secret_value()
        return f"chdb://{(self.core.data_dir / 'clickhouse').resolve()}"

    def spool_dir(self) -> Path:
        return self.producer.spool_dir or (self.core.data_dir / "spool")

    def masked(self) -> dict[str, dict[str, Any]]:
        """Every setting with its environment variable name and value, secrets masked, for display."""
        out: dict[str, dict[str, Any]] = {}
        for name in ("core", *_SECTIONS):
            section = getattr(self, name)
            prefix = section.model_config.get("env_prefix", "")
            rows: dict[str, Any] = {}
            for field, info in type(section).model_fields.items():
                env = _env_name(prefix, field, info)
                value = getattr(section, field)
                if isinstance(value, str) and field.endswith("url"):
                    # A plain-str URL (e.g. clickhouse.query_url) may still carry user:password@.
                    value = mask_url(value)
                elif isinstance(value, SecretStr):
                    value = (
                        mask_url(value.get_secret_value(), keep_path=(name != "alerting"))
                        if "url" in field
                        else "**********"
                    )
                rows[env] = value
            if name == "clickhouse" and section.url is None:
                rows["FINOPS_CLICKHOUSE_URL"] = f"(default) {self.clickhouse_url()}"
            out[name] = rows
        return out


def _env_name(prefix: str, field: str, info: Any) -> str:
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        return str(first)
    return f"{prefix}{field}".upper()


def mask_url(url: str, *, keep_path: bool = True) -> str:
    """The URL with any password and query string (which may hold tokens) replaced by ****.

    ``keep_path=False`` also hides the path: webhook URLs (Slack, generic webhooks) carry their secret there.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "****"
    if parts.scheme == "chdb":
        return url  # a local path, no credentials
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        netloc = f"{user}:****@{host}{port}"
    elif parts.username is not None and "@" in netloc:
        netloc = "****@" + netloc.split("@", 1)[1]
    path = parts.path if keep_path else ("/****" if parts.path not in ("", "/") else parts.path)
    query = "****" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, path, query, ""))


def load_settings(environ: dict[str, str] | None = None) -> FinopsSettings:
    """Read every section from the environment (or ``environ`` when given, for tests and tools).

    Raises:
        ConfigError: listing every invalid variable with what it expects; secret values are never echoed.
    """
    saved: dict[str, str] | None = None
    if environ is not None:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(environ)
    try:
        problems: list[str] = []
        built: dict[str, Any] = {}
        sections: dict[str, type[BaseSettings]] = {"core": CoreSettings, **_SECTIONS}
        for name, cls in sections.items():
            try:
                built[name] = cls()
            except ValidationError as err:
                prefix = cls.model_config.get("env_prefix", "")
                for e in err.errors():
                    field = str(e["loc"][0]) if e["loc"] else ""
                    info = cls.model_fields.get(field)
                    env = _env_name(prefix, field, info) if info else f"{prefix}{field}".upper()
                    # e["input"] may be a secret: never include it.
                    problems.append(f"{env}: {e['msg']}")
        if problems:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
        return FinopsSettings(**built)
    finally:
        if saved is not None:
            os.environ.clear()
            os.environ.update(saved)
