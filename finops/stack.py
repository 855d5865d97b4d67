"""The local single-node Kafka broker (KRaft) from the official Maven Central artifacts.

``infra/kafka/pom.xml`` lists the broker and a log4j2 backend; :meth:`KafkaStack.ensure_artifacts` copies them into
a git-ignored cache (Maven is used from PATH, or fetched once from Maven Central when missing). The broker's data
lives on disk under ``<data dir>/kafka`` so topics and messages survive ``down`` / ``up``. Several instances may run
side by side on different ports (the fault tests stop their own broker, never the shared one).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from finops.kafka.clients import build_admin
from schemas.errors import FinopsError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
INFRA_KAFKA = REPO_ROOT / "infra" / "kafka"
DEFAULT_CACHE = REPO_ROOT / ".cache"
MAVEN_VERSION = "3.9.9"
MAVEN_CENTRAL = "https://repo.maven.apache.org/maven2"


class StackError(FinopsError):
    """The local stack could not be prepared, started or stopped."""


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); check its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return True


def find_java() -> str:
    """Path of a java executable (JAVA_HOME first, then PATH)."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise StackError("java not found: install Java 17 or newer (e.g. apt-get install openjdk-17-jre-headless)")
    return found


def find_maven(cache_dir: Path) -> str:
    """``mvn`` from PATH, else Apache Maven downloaded once from Maven Central into the cache."""
    found = shutil.which("mvn")
    if found:
        return found
    home = cache_dir / f"apache-maven-{MAVEN_VERSION}"
    mvn = home / "bin" / "mvn"
    if mvn.exists():
        return str(mvn)
    url = f"{MAVEN_CENTRAL}/org/apache/maven/apache-maven/{MAVEN_VERSION}/apache-maven-{MAVEN_VERSION}-bin.tar.gz"
    log.info("mvn not on PATH: fetching Apache Maven %s from Maven Central", MAVEN_VERSION)
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = cache_dir / f"apache-maven-{MAVEN_VERSION}-bin.tar.gz"
    try:
        urllib.request.urlretrieve(url, archive)  # noqa: S310 - fixed https URL
        with tarfile.open(archive) as tar:
            tar.extractall(cache_dir, filter="data")
    except OSError as err:
        raise StackError(f"could not fetch Maven from {url}: {err}; install Maven (apt-get install maven)") from err
    return str(mvn)


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    home: Path
    detail: str


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A port p such that p and p + 1 are both free on ``host`` now (a broker and its controller).

    Raises StackError when none is found after 200 tries. The ports can be taken by another process before the
    caller binds them; a broker that then fails to start says so in its log.
    """
    for _ in range(200):
        with socket.socket() as first:
            first.bind((host, 0))
            port = int(first.getsockname()[1])
        if port >= 65535:
            continue
        with socket.socket() as second:
            try:
                second.bind((host, port + 1))
            except OSError:
                continue
        return port
    raise StackError(f"no two consecutive free ports found on {host}")


class KafkaStack:
    """One local broker instance: its home directory holds config, data, log and pid file."""

    def __init__(
        self,
        home: Path,
        *,
        port: int = 9092,
        controller_port: int = 9093,
        cache_dir: Path = DEFAULT_CACHE,
        heap: str = "768m",
        pom: Path = INFRA_KAFKA / "pom.xml",
    ) -> None:
        self.home = home
        self.port = port
        self.controller_port = controller_port
        self.cache_dir = cache_dir
        self.heap = heap
        self.pom = pom
        self.data_dir = home / "data"
        self.pid_file = home / "broker.pid"
        self.log_file = home / "broker.log"
        self.properties = home / "server.properties"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- artifacts -------------------------------------------------------------------------------------------
    def libs_dir(self) -> Path:
        digest = hashlib.sha256(self.pom.read_bytes()).hexdigest()[:12]
        return self.cache_dir / "kafka" / digest / "libs"

    def ensure_artifacts(self) -> Path:
        """Copy the broker jars listed in infra/kafka/pom.xml into the cache (once per pom version)."""
        libs = self.libs_dir()
        marker = libs / ".complete"
        if marker.exists():
            return libs
        mvn = find_maven(self.cache_dir)
        tmp = libs.with_name("libs.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            mvn, "-q", "-B", "-f", str(self.pom), "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}", "-DincludeScope=runtime",
        ]
        log.info("fetching Kafka artifacts: %s", " ".join(cmd))
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise StackError(
                f"Maven could not fetch the Kafka artifacts (exit {done.returncode}):\n{done.stdout[-2000:]}"
                f"{done.stderr[-2000:]}"
            )
        shutil.rmtree(libs, ignore_errors=True)
        tmp.rename(libs)
        marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        return libs

    # -- lifecycle -------------------------------------------------------------------------------------------
    def _write_properties(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.properties.write_text(
            "\n".join(
                [
                    "# written by finops.stack; edit infra, not this file",
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={self.data_dir}",
                    "num.partitions=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=10",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    "log.retention.check.interval.ms=60000",
                    "",
                ]
            )
        )

    def _java(self, libs: Path, main: str, *args: str, heap: str = "256m") -> list[str]:
        # -XX:TieredStopAtLevel=1: the client compiler only. This broker shares a small machine with every role
        # for minutes to hours, and HotSpot's optimising compiler (C2) compiles through the first heavy minutes:
        # in the bench's capacity burst that compiling was about half of the broker's CPU, while the request
        # threads used no more CPU per event with C1 alone (the README's Performance section has the figures).
        # KAFKA_OPTS, Kafka's own variable for extra JVM options, comes last and wins (-XX:TieredStopAtLevel=4).
        return [
            find_java(), f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
            *shlex.split(os.environ.get("KAFKA_OPTS", "")),
            f"-Dlog4j2.configurationFile={INFRA_KAFKA / 'log4j2.properties'}",
            "-cp", f"{libs}/*", main, *args,
        ]

    def _format_storage(self, libs: Path) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = uuid.uuid4().hex[:22]
        cmd = self._java(libs, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.properties))
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise StackError(f"formatting KRaft storage failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def status(self) -> BrokerStatus:
        pid = self._read_pid()
        alive = pid is not None and _pid_alive(pid)
        answering = _port_open("127.0.0.1", self.port)
        if alive and answering:
            detail = "running"
        elif alive:
            detail = "starting (process alive, port not answering yet)"
        elif answering:
            detail = f"port {self.port} answers but no broker of this stack runs there (another process?)"
        else:
            detail = "stopped"
        return BrokerStatus(alive and answering, pid if alive else None, self.bootstrap, self.home, detail)

    def up(self, timeout: float = 90.0) -> BrokerStatus:
        """Start the broker unless it runs already; block until it answers metadata requests.

        Raises StackError with the tail of the broker log when it does not come up within ``timeout``.
        """
        current = self.status()
        if current.running:
            return current
        if current.pid is None and _port_open("127.0.0.1", self.port):
            raise StackError(current.detail + "; free the port or choose another (FINOPS_KAFKA_BOOTSTRAP)")
        libs = self.ensure_artifacts()
        self._write_properties()
        self._format_storage(libs)
        if current.pid is None:
            with open(self.log_file, "ab") as out:
                proc = subprocess.Popen(
                    self._java(libs, "kafka.Kafka", str(self.properties), heap=self.heap),
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,  # survives the CLI that started it; Ctrl-C in a shell does not reach it
                )
            self.pid_file.write_text(str(proc.pid))
        self._wait_ready(timeout)
        return self.status()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        admin = build_admin({"bootstrap.servers": self.bootstrap}, overrides={"log_level": 0})
        while time.monotonic() < deadline:
            pid = self._read_pid()
            if pid is None or not _pid_alive(pid):
                raise StackError(f"the broker exited during start; log tail:\n{self.log_tail()}")
            if _port_open("127.0.0.1", self.port):
                try:
                    md = admin.list_topics(timeout=2)
                    if md.brokers:
                        return
                except Exception:  # noqa: BLE001, S110 - not ready yet; retried until the deadline
                    pass
            time.sleep(0.25)
        raise StackError(f"the broker did not answer within {timeout:.0f}s; log tail:\n{self.log_tail()}")

    def down(self, timeout: float = 60.0) -> bool:
        """Stop the broker (controlled shutdown on SIGTERM, SIGKILL after ``timeout``). True if one was running."""
        pid = self._read_pid()
        if pid is None or not _pid_alive(pid):
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(pid):
            self._reap(pid)
            time.sleep(0.2)
        if _pid_alive(pid):
            log.warning("broker %s did not stop within %.0fs: SIGKILL", pid, timeout)
            os.kill(pid, signal.SIGKILL)
            self._reap(pid)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL the broker (fault tests)."""
        pid = self._read_pid()
        if pid is not None and _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _pid_alive(pid):
                self._reap(pid)
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)

    @staticmethod
    def _reap(pid: int) -> None:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no broker log)"


def stack_from_settings(data_dir: Path, bootstrap: str) -> KafkaStack:
    """The local stack matching FINOPS_KAFKA_BOOTSTRAP's port (which must be on 127.0.0.1/localhost)."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        raise StackError(
            f"FINOPS_KAFKA_BOOTSTRAP={bootstrap} is not local: `finops stack` manages a broker on 127.0.0.1 only; "
            "unset it or point it at 127.0.0.1:<port>"
        )
    p = int(port)
    return KafkaStack(data_dir / "kafka", port=p, controller_port=p + 1)
