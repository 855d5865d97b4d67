"""finops.kafka.clients: the only constructor of confluent-kafka clients, and the configs of its roles."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

from finops.kafka import clients
from finops.kafka.clients import Kind, Role, client_config, redacted
from finops.settings import load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("finops", "producers", "schemas", "stream_jobs", "sinks", "alerting", "governance", "dashboard")
CLIENTS = {"Producer", "Consumer", "AdminClient"}
RUNTIME = ROOT / "finops" / "kafka"
SECRET = "s3cr3t-pw-for-the-test"


def client_constructions(source: str) -> list[tuple[int, str]]:
    """(line, name) of each call of a confluent-kafka Producer/Consumer/AdminClient in ``source``: names imported
    from confluent_kafka (aliases included) and attribute calls on the confluent_kafka modules."""
    tree = ast.parse(source)
    names: dict[str, str] = {}  # local name -> client class
    modules: set[str] = set()  # local names bound to confluent_kafka or confluent_kafka.admin
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "confluent_kafka":
            for alias in node.names:
                if alias.name in CLIENTS:
                    names[alias.asname or alias.name] = alias.name
                elif alias.name == "admin":
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "confluent_kafka":
                    modules.add(alias.asname or alias.name.split(".")[0])
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in names:
            found.append((node.lineno, names[func.id]))
        elif isinstance(func, ast.Attribute) and func.attr in CLIENTS:
            base = func.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in modules:
                found.append((node.lineno, func.attr))
    return found


def package_sources() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py")) if RUNTIME not in p.parents]


def test_no_client_is_constructed_outside_the_runtime() -> None:
    offenders = [f"{p.relative_to(ROOT)}:{line} {name}(...)" for p in package_sources()
                 for line, name in client_constructions(p.read_text(encoding="utf-8"))]
    assert offenders == [], "construct Kafka clients with finops.kafka.clients.build_*: " + ", ".join(offenders)


@pytest.mark.parametrize("source", [
    "from confluent_kafka import Producer\np = Producer({})\n",
    "from confluent_kafka import Consumer as C\nc = C({})\n",
    "from confluent_kafka.admin import AdminClient\na = AdminClient({})\n",
    "import confluent_kafka\np = confluent_kafka.Producer({})\n",
    "import confluent_kafka as ck\nc = ck.Consumer({})\n",
    "import confluent_kafka.admin\na = confluent_kafka.admin.AdminClient({})\n",
    "from confluent_kafka import admin\na = admin.AdminClient({})\n",
    "def f():\n    from confluent_kafka import Producer\n    return Producer({})\n",
])
def test_the_scan_finds_every_spelling(source: str) -> None:
    assert len(client_constructions(source)) == 1


def test_the_scan_ignores_other_calls() -> None:
    assert client_constructions("from producers.producer import UsageProducer\nUsageProducer('a', 'b')\n"
                                "from confluent_kafka import TopicPartition\nTopicPartition('t', 0)\n") == []


def test_the_runtime_module_is_where_the_constructions_are() -> None:
    found = {name for _, name in client_constructions((RUNTIME / "clients.py").read_text(encoding="utf-8"))}
    assert found == CLIENTS


def test_idempotence_is_written_once() -> None:
    hits = [p for p in [*package_sources(), RUNTIME / "clients.py"]
            if '"enable.idempotence": True' in p.read_text(encoding="utf-8")]
    assert hits == [RUNTIME / "clients.py"]
    assert (RUNTIME / "clients.py").read_text(encoding="utf-8").count('"enable.idempotence": True') == 1


@pytest.mark.parametrize("role", list(Role))
def test_every_producer_is_idempotent_with_acks_all(role: Role) -> None:
    conf = client_config({"bootstrap.servers": "b:9092"}, Kind.PRODUCER, role)
    assert conf["enable.idempotence"] is True
    assert conf["acks"] == "all"
    assert conf["client.id"].startswith("finops-")


@pytest.mark.parametrize("role", list(Role))
def test_no_consumer_commits_on_a_timer(role: Role) -> None:
    conf = client_config({"bootstrap.servers": "b:9092"}, Kind.CONSUMER, role, group_id="g")
    assert conf["enable.auto.commit"] is False
    assert conf["group.id"] == "g"


def test_hotpath_profile() -> None:
    consumer = client_config({"bootstrap.servers": "b:9092"}, Kind.CONSUMER, Role.HOTPATH, group_id="g")
    assert consumer["client.id"] == "finops-usage-hotpath"
    assert consumer["enable.auto.offset.store"] is False
    assert consumer["auto.offset.reset"] == "earliest"
    assert consumer["queued.max.messages.kbytes"] == 16 * 1024
    assert consumer["fetch.max.bytes"] == 16 * 1024 * 1024
    assert consumer["partition.assignment.strategy"] == "range"
    producer = client_config({"bootstrap.servers": "b:9092"}, Kind.PRODUCER, Role.HOTPATH)
    assert producer["delivery.report.only.error"] is True
    assert (producer["linger.ms"], producer["batch.num.messages"], producer["compression.type"]) == (50, 10_000, "lz4")
    assert producer["queue.buffering.max.kbytes"] == 64 * 1024
    assert producer["queue.buffering.max.messages"] == 200_000
    assert producer["message.timeout.ms"] == 120_000


def test_sink_profile() -> None:
    conf = client_config({"bootstrap.servers": "b:9092"}, Kind.CONSUMER, Role.SINK, group_id="g")
    assert conf["enable.auto.offset.store"] is False
    assert conf["auto.offset.reset"] == "earliest"
    assert conf["partition.assignment.strategy"] == "cooperative-sticky"
    assert conf["queued.max.messages.kbytes"] == 65536
    assert (conf["max.poll.interval.ms"], conf["session.timeout.ms"]) == (300000, 45000)
    assert client_config({}, Kind.PRODUCER, Role.SINK)["linger.ms"] == 5


def test_sdk_profile_and_overrides_win() -> None:
    conf = client_config({"bootstrap.servers": "b:9092"}, Kind.PRODUCER, Role.SDK, client_id="finops-producer-x",
                         overrides={"linger.ms": 7})
    assert conf["client.id"] == "finops-producer-x"
    assert conf["linger.ms"] == 7
    assert conf["queue.buffering.max.kbytes"] == 32 * 1024
    assert conf["message.timeout.ms"] == 30_000
    assert conf["socket.keepalive.enable"] is True


def sasl_settings() -> object:
    return load_settings({"FINOPS_DATA_DIR": "/tmp/x", "FINOPS_KAFKA_BOOTSTRAP": "k1:9093,k2:9093",
                          "FINOPS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "FINOPS_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                          "FINOPS_KAFKA_SASL_USERNAME": "svc", "FINOPS_KAFKA_SASL_PASSWORD": SECRET}).kafka


@pytest.mark.parametrize("kind", list(Kind))
def test_security_settings_reach_every_client(kind: Kind) -> None:
    conf = client_config(sasl_settings(), kind, Role.DETECTION, group_id="g")  # type: ignore[arg-type]
    assert conf["bootstrap.servers"] == "k1:9093,k2:9093"
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (conf["sasl.username"], conf["sasl.password"]) == ("svc", SECRET)
    # a mapping built from the settings (what the workers receive) gives the same connection
    again = client_config(sasl_settings().client_config(), kind, Role.DETECTION, group_id="g")  # type: ignore[attr-defined]
    assert again == conf


class FakeClient:
    """Stands in for the confluent-kafka classes: records the config instead of starting librdkafka."""

    made: list[tuple[dict[str, object], dict[str, object]]] = []

    def __init__(self, conf: dict[str, object], **kwargs: object) -> None:
        FakeClient.made.append((conf, kwargs))


def test_secrets_are_not_printed(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("Producer", "Consumer", "AdminClient"):
        monkeypatch.setattr(clients, name, FakeClient)
    FakeClient.made.clear()
    conf = client_config(sasl_settings(), Kind.PRODUCER, Role.CONTROL)  # type: ignore[arg-type]
    assert SECRET not in repr(redacted(conf))
    assert redacted(conf)["sasl.username"] == "svc"
    assert SECRET not in repr(sasl_settings())
    librdkafka_log = logging.getLogger("test.librdkafka")
    with caplog.at_level(logging.DEBUG, logger=clients.__name__):
        clients.build_producer(sasl_settings(), Role.CONTROL, logger=librdkafka_log)  # type: ignore[arg-type]
        clients.build_admin(sasl_settings())  # type: ignore[arg-type]
        clients.build_consumer(sasl_settings(), Role.READER, "g")  # type: ignore[arg-type]
    assert "kafka producer for control" in caplog.text
    assert "SCRAM-SHA-512" in caplog.text
    assert SECRET not in caplog.text
    # the clients themselves get the real secret, and the logger when one is given (else the kernel's), throttled
    assert [made[0]["sasl.password"] for made in FakeClient.made] == [SECRET] * 3
    kernel_log = logging.getLogger(clients.LIBRDKAFKA_LOGGER)
    assert [made[0]["logger"] for made in FakeClient.made] == [librdkafka_log, kernel_log, kernel_log]
    assert [made[1] for made in FakeClient.made] == [{}, {}, {}]
    assert all(any(isinstance(f, clients.LogThrottle) for f in made[0]["logger"].filters)  # type: ignore[attr-defined]
               for made in FakeClient.made)


def librdkafka_record(name: str, fac: str, text: str, logger: str = "test.rdk",
                      level: int = logging.ERROR) -> logging.LogRecord:
    """A record as confluent-kafka's log callback makes it (``logger.log(level, "%s [%s] %s", fac, name, text)``)."""
    return logging.LogRecord(logger, level, "librdkafka", 0, "%s [%s] %s", (fac, name, text), None)


def test_repeated_librdkafka_lines_pass_once_per_interval_per_client_and_facility() -> None:
    now = [0.0]
    throttle = clients.LogThrottle(interval_s=30.0, clock=lambda: now[0])
    refused = "Connect to ipv4#127.0.0.1:1 failed: Connection refused"
    passed = []
    for step in range(100):  # a reconnect attempt every 50 ms for 5 s, from two clients
        now[0] = step * 0.05
        passed += [throttle.filter(librdkafka_record("finops-reader#consumer-1", "FAIL", refused)),
                   throttle.filter(librdkafka_record("finops-control#producer-2", "FAIL", refused))]
    assert passed.count(True) == 2  # the first line of each client
    # another facility of the same client is a line of its own
    assert throttle.filter(librdkafka_record("finops-reader#consumer-1", "ERROR", "1/1 brokers are down"))
    now[0] = 30.0
    again = librdkafka_record("finops-reader#consumer-1", "FAIL", refused)
    assert throttle.filter(again)  # an interval later it passes again, saying how many were held back
    assert again.getMessage().endswith("(99 more like it in the last 30s, at DEBUG)")
    other = logging.LogRecord("test.rdk", logging.INFO, "x", 0, "assigned %s", ([1],), None)
    assert all(throttle.filter(other) for _ in range(3))  # not a librdkafka line: untouched


def test_held_back_lines_go_out_at_debug_when_debug_is_on() -> None:
    throttle = clients.LogThrottle(interval_s=30.0, clock=lambda: 0.0)
    logger = logging.getLogger("test.rdk.debug")
    logger.setLevel(logging.DEBUG)
    try:
        assert throttle.filter(librdkafka_record("c#consumer-1", "FAIL", "refused", logger=logger.name))
        held = librdkafka_record("c#consumer-1", "FAIL", "refused", logger=logger.name)
        assert throttle.filter(held) and held.levelno == logging.DEBUG and held.levelname == "DEBUG"
    finally:
        logger.setLevel(logging.NOTSET)
    quiet = librdkafka_record("c#consumer-1", "FAIL", "refused", logger="test.rdk.quiet")
    assert not throttle.filter(quiet)  # DEBUG off: dropped


def test_secrets_are_masked_in_librdkafka_lines() -> None:
    throttle = clients.LogThrottle()
    throttle.add_secrets([SECRET, None, ""])
    record = librdkafka_record("c#producer-1", "CONFWARN", f"sasl.password={SECRET} looks odd")
    assert throttle.filter(record)
    assert SECRET not in record.getMessage() and "sasl.password=********** looks odd" in record.getMessage()


def test_a_dead_broker_logs_through_python_logging_once_and_fails_in_time(
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    """A real librdkafka client against a port nothing listens on: its reconnect failures reach the kernel's logger
    (not raw stderr), one line for the client, and :func:`require_broker` fails naming the address and the fix."""
    conf = {"bootstrap.servers": "127.0.0.1:1", "sasl.password": SECRET}
    with caplog.at_level(logging.DEBUG, logger=clients.LIBRDKAFKA_LOGGER):
        logging.getLogger(clients.LIBRDKAFKA_LOGGER).setLevel(logging.INFO)
        try:
            producer = clients.build_producer({"bootstrap.servers": "127.0.0.1:1"}, Role.CONTROL,
                                              overrides={"reconnect.backoff.ms": 10, "reconnect.backoff.max.ms": 10})
            with pytest.raises(clients.BrokerUnreachable) as caught:
                clients.require_broker(producer, conf, what="publish to t on", timeout=1.0)
            producer.poll(0.5)  # serves the queued log lines
        finally:
            logging.getLogger(clients.LIBRDKAFKA_LOGGER).setLevel(logging.NOTSET)
    message = str(caught.value)
    assert message.startswith("cannot publish to t on the broker at 127.0.0.1:1 (")
    assert "`finops stack up`" in message and "FINOPS_KAFKA_BOOTSTRAP" in message and SECRET not in message
    fails = [r for r in caplog.records if r.name == clients.LIBRDKAFKA_LOGGER and r.args and r.args[0] == "FAIL"]
    assert len(fails) == 1, [r.getMessage() for r in fails]
    assert "Connection refused" in fails[0].getMessage()
    assert "%3|" not in capfd.readouterr().err  # nothing printed by librdkafka itself


def test_a_role_waits_for_the_broker_with_one_line_per_ask(caplog: pytest.LogCaptureFixture) -> None:
    from confluent_kafka import KafkaError, KafkaException

    class DeadClient:
        asks: list[float] = []

        def list_topics(self, topic: str | None = None, timeout: float = 0.0) -> object:
            DeadClient.asks.append(timeout)
            now[0] += timeout
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    now = [0.0]
    with caplog.at_level(logging.INFO, logger=clients.__name__), pytest.raises(clients.BrokerUnreachable) as caught:
        clients.wait_for_broker(DeadClient(), {"bootstrap.servers": "10.0.0.9:9092"}, what="list the topics of",
                                timeout=12.0, interval=5.0, clock=lambda: now[0])
    assert DeadClient.asks == [5.0, 5.0, 2.0]
    waits = [r.getMessage() for r in caplog.records if "waiting for the Kafka broker" in r.getMessage()]
    assert len(waits) == 2 and all("10.0.0.9:9092" in w for w in waits)
    assert "cannot list the topics of the broker at 10.0.0.9:9092" in str(caught.value)


def test_a_role_goes_on_once_the_broker_answers() -> None:
    from confluent_kafka import KafkaError, KafkaException

    answers: list[object] = [KafkaException(KafkaError(KafkaError._TRANSPORT)), "metadata"]

    class LateClient:
        def list_topics(self, topic: str | None = None, timeout: float = 0.0) -> object:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    assert clients.wait_for_broker(LateClient(), {"bootstrap.servers": "b:1"}, timeout=30.0, interval=0.1) == "metadata"
