"""Settings: one frozen object, every error at once naming the variable, secrets never printed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from finops.settings import load_settings, mask_url
from schemas.errors import ConfigError

pytestmark = pytest.mark.unit


def test_defaults_are_local_and_embedded() -> None:
    s = load_settings({"FINOPS_DATA_DIR": "/tmp/x"})
    assert s.kafka.bootstrap == "127.0.0.1:9092"
    assert s.clickhouse_url() == "chdb:///tmp/x/clickhouse"
    assert s.kafka.schema_registry_url is None
    with pytest.raises(AttributeError):
        s.kafka = None  # type: ignore[misc,assignment]
    with pytest.raises(ValidationError, match="frozen"):
        s.kafka.bootstrap = "x:1"  # type: ignore[misc]


def test_all_errors_reported_at_once_naming_each_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            {
                "FINOPS_CLICKHOUSE_URL": "nonsense",
                "FINOPS_KAFKA_BOOTSTRAP": "no-port-here",
                "FINOPS_STREAM_GRACE_SECONDS": "-3",
            }
        )
    text = str(info.value)
    assert "FINOPS_CLICKHOUSE_URL" in text and "chdb:///" in text
    assert "FINOPS_KAFKA_BOOTSTRAP" in text
    assert "FINOPS_STREAM_GRACE_SECONDS" in text


def test_secret_values_never_in_errors_or_display() -> None:
    secret_url = "https://hooks.slack.example/services/T000/B000/SECRETSECRET"
    with pytest.raises(ConfigError) as info:
        load_settings({"FINOPS_CLICKHOUSE_URL": "ftp://admin:hunter2@db:9000/x"})
    assert "hunter2" not in str(info.value)
    s = load_settings(
        {
            "FINOPS_CLICKHOUSE_URL": "https://admin:hunter2@ch.internal:8443/finops",
            "FINOPS_ALERTING_SLACK_WEBHOOK_URL": secret_url,
            "FINOPS_CONTROL_SIGNING_KEY": "k3y-material",
            "FINOPS_SCHEMA_REGISTRY_URL": "http://reg:8081",
        }
    )
    shown = repr(s.masked())
    assert "hunter2" not in shown and "SECRETSECRET" not in shown and "k3y-material" not in shown
    assert "https://admin:****@ch.internal:8443/finops" in shown
    assert s.kafka.schema_registry_url is not None
    assert s.kafka.schema_registry_url.get_secret_value() == "http://reg:8081"


def test_mask_url() -> None:
    assert mask_url("http://u:p@h:1/d?token=abc") == "http://u:****@h:1/d?****"
    assert mask_url("chdb:///var/lib/x") == "chdb:///var/lib/x"


def test_config_check_command_exits_nonzero_naming_the_variable() -> None:
    env = {**os.environ, "FINOPS_CLICKHOUSE_URL": "nonsense"}
    done = subprocess.run(
        [sys.executable, "-m", "finops.cli", "config", "check"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "FINOPS_CLICKHOUSE_URL" in done.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "finops.cli", "config", "check"],
        env={k: v for k, v in os.environ.items() if not k.startswith("FINOPS_")},
        capture_output=True, text=True, timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "FINOPS_KAFKA_BOOTSTRAP = 127.0.0.1:9092" in ok.stdout


def test_plain_url_settings_are_masked_too() -> None:
    s = load_settings({"FINOPS_CLICKHOUSE_QUERY_URL": "http://reader:pa55word@127.0.0.1:8124"})
    shown = repr(s.masked())
    assert "pa55word" not in shown and "http://reader:****@127.0.0.1:8124" in shown
