"""Apache Kafka (4.x, KRaft, one combined broker+controller) on loopback, for local runs and tests.

The broker's jars come from Maven Central through ``kafka/pom.xml`` (a pinned release plus the
log4j2 runtime Kafka 4 leaves out of its POM) into the git-ignored ``.kafka/lib``. Storage lives
in a fresh temporary folder that is removed on stop: like the embedded broker, every start is an
empty cluster. ``make kafka`` (``rating kafka``) and the ``RATING_TEST_BROKER=kafka`` test
fixture both use :class:`LocalKafka`.
"""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from rating.broker import BrokerError, free_port, stop_child, wait_for_port, wait_in_foreground

REPO = Path(__file__).resolve().parents[2]
POM = REPO / "kafka" / "pom.xml"
LIB = REPO / ".kafka" / "lib"
NEEDS = "Java 17 and Maven are needed for make test-kafka"
MIN_JAVA = 17

# Loopback, one node: internal topics cannot have more than one replica, and a group's first
# rebalance should not wait (tests start workers one after another).
_SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{controller_port}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}/logs
metadata.log.dir={data}/metadata
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# As in docker-compose.yml: topics are created on purpose, never by a stray producer.
auto.create.topics.enable=false
log.flush.interval.messages=9223372036854775807
"""

_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = out
logger.state.name = state.change.logger
logger.state.level = warn
logger.request.name = kafka.request.logger
logger.request.level = warn
"""


class LocalKafkaError(BrokerError):
    pass


def pinned_version(pom: Path = POM) -> str:
    """The Kafka release ``kafka/pom.xml`` pins (its ``kafka.version`` property)."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom.read_text("utf-8"))
    if match is None:
        raise LocalKafkaError(f"{pom}: no <kafka.version> property")
    return match.group(1).strip()


def java_major(java: str) -> int:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        raise LocalKafkaError(f"{NEEDS}: cannot read the version of {java}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError(f"{NEEDS}: no `java` on PATH")
    major = java_major(java)
    if major < MIN_JAVA:
        raise LocalKafkaError(f"{NEEDS}: {java} is Java {major}")
    return java


def ensure_jars(pom: Path = POM, lib: Path = LIB) -> Path:
    """Resolve the pinned broker into ``lib`` with Maven unless it is there already."""
    version = pinned_version(pom)
    if (lib / f"kafka_2.13-{version}.jar").is_file():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError(f"{NEEDS}: no `mvn` on PATH to resolve Kafka {version}")
    if lib.is_dir():  # another version's jars must not share the class path
        shutil.rmtree(lib)
    print(f"resolving Apache Kafka {version} with Maven into {lib} ...", file=sys.stderr)
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(pom), "package"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0 or not (lib / f"kafka_2.13-{version}.jar").is_file():
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise LocalKafkaError(f"{NEEDS}: `mvn -f {pom} package` failed:\n{tail}")
    return lib


def cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def format_options(cid: str, props: Path) -> list[str]:
    """StorageTool's options. The id goes in the same argument as its option: one in 64 ids
    starts with "-", which the tool's parser would take for an option of its own."""
    return ["--ignore-formatted", f"--cluster-id={cid}", f"--config={props}"]


async def _broker_answers(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
    from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        await admin.list_topics()
    except (KafkaError, OSError):
        return False
    finally:
        await admin.close()
    return True


@dataclass
class LocalKafka:
    """One Apache Kafka node as a child process; use as a context manager."""

    host: str = "127.0.0.1"
    port: int = 0
    controller_port: int = 0
    log: Path | None = None
    heap: str = "512m"
    log_level: str = "INFO"
    pom: Path = POM
    lib: Path = LIB
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    version: str = field(default="", init=False)
    _data: Path | None = field(default=None, init=False)
    _log_file: IO[bytes] | None = field(default=None, init=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 90.0) -> LocalKafka:
        java = find_java()
        lib = ensure_jars(self.pom, self.lib)
        self.version = pinned_version(self.pom)
        self.port = self.port or free_port(self.host)
        self.controller_port = self.controller_port or free_port(self.host)
        self._data = Path(tempfile.mkdtemp(prefix="rating-kafka-"))
        try:
            self._launch(java, lib, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, java: str, lib: Path, timeout: float) -> None:
        assert self._data is not None
        props = self._data / "server.properties"
        props.write_text(
            _SERVER_PROPERTIES.format(
                host=self.host,
                port=self.port,
                controller_port=self.controller_port,
                data=self._data,
            ),
            encoding="utf-8",
        )
        log4j = self._data / "log4j2.properties"
        log4j.write_text(_LOG4J2.format(level=self.log_level), encoding="utf-8")
        base = [
            java,
            f"-Xmx{self.heap}",
            f"-Xms{min_heap(self.heap)}",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{lib}/*",
        ]
        out: int | IO[bytes] = subprocess.DEVNULL
        if self.log is not None:
            self._log_file = self.log.open("ab")
            out = self._log_file
        fmt = subprocess.run(
            [
                *base,
                "kafka.tools.StorageTool",
                "format",
                *format_options(cluster_id(), props),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=timeout,
        )
        if fmt.returncode != 0:
            raise LocalKafkaError(f"kafka StorageTool format exited {fmt.returncode} (see log)")
        # Own process group: a Ctrl-C meant for the test runner is not also the broker's.
        self.proc = subprocess.Popen(
            [*base, "kafka.Kafka", str(props)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        wait_for_port(self.host, self.port, timeout, self.proc)
        while not asyncio.run(_broker_answers(self.bootstrap)):
            if self.proc.poll() is not None:
                raise LocalKafkaError(f"kafka exited with code {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise LocalKafkaError(f"kafka on {self.bootstrap} not answering after {timeout}s")
            time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        log_file, self._log_file = self._log_file, None
        stop_child(proc, log_file, timeout)
        if self._data is not None:
            shutil.rmtree(self._data, ignore_errors=True)
            self._data = None

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def min_heap(heap: str) -> str:
    """Start at a quarter of the maximum heap: the test broker rarely needs more."""
    match = re.fullmatch(r"(\d+)([kmg])", heap.lower())
    if match is None:
        return heap
    return f"{max(1, int(match.group(1)) // 4)}{match.group(2)}"


def run_foreground(host: str, port: int) -> int:
    """`rating kafka`: run until Ctrl-C / SIGTERM, then stop the broker cleanly."""
    print("rating kafka: starting Apache Kafka (JVM; takes a few seconds) ...", flush=True)
    log = LIB.parent / "kafka.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        kafka = LocalKafka(host=host, port=port, log=log).start()
    except LocalKafkaError as exc:
        print(f"rating kafka: {exc}", file=sys.stderr)
        return 2
    print(
        f"rating kafka: Apache Kafka {kafka.version} (KRaft, one node) on {kafka.bootstrap}; "
        f"storage in a temporary folder, removed on stop",
        flush=True,
    )
    print(f"  export RATING_KAFKA_BOOTSTRAP={kafka.bootstrap}", flush=True)
    print(f"  broker log: {log}", flush=True)
    assert kafka.proc is not None
    return wait_in_foreground("rating kafka", kafka.proc, kafka.stop)
