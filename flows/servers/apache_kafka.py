"""A real Apache Kafka 4.x broker (KRaft, one node) as a second embedded broker.

tansu (flows.servers.embedded) stays the embedded default, so nobody needs Java. Tests marked
``apache_kafka``, the fault suite and the bench use this broker when Java is present,
to check tetik against the broker production runs.

Rules of the interface:

* :func:`find_java` finds a Java 17+ (``JAVA_HOME``, else ``java`` on PATH) or says None.
* :func:`ensure_jars` puts the broker's jars in ``CACHE/apache-kafka-VERSION/lib`` once,
  with Maven (``mvn dependency:copy-dependencies`` on ``java/apache-kafka/pom.xml``, so
  from Maven Central: nothing else is downloaded), reporting progress lines meanwhile;
  later calls only check the directory. CACHE is ``TETIK_CACHE_DIR``, else
  ``$XDG_CACHE_HOME/tetik``, else ``~/.cache/tetik``; VERSION is
  ``TETIK_APACHE_KAFKA_VERSION``, else :data:`DEFAULT_VERSION`.
* :func:`start_apache_kafka` formats a data dir once (random cluster id) and runs
  ``java -cp 'lib/*' kafka.Kafka server.properties`` in combined mode
  (``process.roles=broker,controller``), listening on 127.0.0.1 only, automatic topic
  creation off (tetik creates its topics), internal topics with one replica, a 512 MiB
  heap. It returns a :class:`flows.servers.process.EmbeddedServer`: ``.bootstrap``,
  ``.pid``, ``.stop()``, ``.kill()`` (SIGKILL), ``.restart()`` (same port and data
  dir, so the log and the consumers' committed offsets survive it).
* The first start also records the classes the broker loads into a class-data
  archive next to the jars (about 50 MB), which later starts map instead of loading
  the jars again.
* Failures raise :class:`flows.servers.process.ServerStartError`: one line saying what to do
  when Java, Maven or the jars are missing (install them, or use the default tansu
  broker); the broker's last log lines when it fails to start, as for the other
  embedded servers.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from flows.servers.process import (
    HOST,
    EmbeddedServer,
    ServerStartError,
    free_port,
    kafka_answers,
    start_server,
)

__all__ = [
    "DEFAULT_VERSION",
    "EMBEDDED_KAFKA_ENV",
    "Sasl",
    "cache_root",
    "ensure_jars",
    "find_java",
    "java_major",
    "kafka_version",
    "start_apache_kafka",
]

# Set to "apache", it makes flows.servers.embedded.servers() start this broker instead
# of tansu when no Kafka is configured.
EMBEDDED_KAFKA_ENV = "TETIK_EMBEDDED_KAFKA"
# The newest 4.x that Maven Central serves here; its classes target Java 17.
DEFAULT_VERSION = "4.4.0"
VERSION_ENV = "TETIK_APACHE_KAFKA_VERSION"
CACHE_ENV = "TETIK_CACHE_DIR"
MIN_JAVA = 17
POM = Path(__file__).resolve().parents[2] / "java" / "apache-kafka" / "pom.xml"
# A JVM on a busy 2-core machine can take a while; Kafka's clean shutdown too.
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
FETCH_REPORT_S = 10.0
_TOOL_TIMEOUT_S = 120.0
_NAME = "apache-kafka"
_FALLBACK = f"or use the default embedded tansu broker (unset {EMBEDDED_KAFKA_ENV})"

# Broker and controller in one process; small internal topics, since tests create
# and read them often on a small machine. After a SIGKILL the restarted broker may
# register only once the controller has fenced its previous life: a 4 s session
# (default 9 s) makes that restart take about 6 s instead of 12.
_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{controller}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller}
advertised.listeners=PLAINTEXT://{host}:{advertised}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=4000
num.network.threads=2
num.io.threads=4
"""

# Kafka's own INFO lines are many; warnings and errors are what a log tail needs.
_LOG4J2 = """\
status = warn
shutdownHook = disable
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""


def kafka_version() -> str:
    """The Apache Kafka version to run: ``TETIK_APACHE_KAFKA_VERSION``, else the default."""
    return os.environ.get(VERSION_ENV, "").strip() or DEFAULT_VERSION


def cache_root() -> Path:
    """Where fetched jars are kept: ``TETIK_CACHE_DIR``, else ``$XDG_CACHE_HOME/tetik``,
    else ``~/.cache/tetik``."""
    configured = os.environ.get(CACHE_ENV, "")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tetik"


@functools.cache
def _banner(java: str) -> str:
    """What ``java -version`` prints, or "" if it does not run."""
    try:
        done = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stderr + done.stdout if done.returncode == 0 else ""


def java_major(java: str) -> int:
    """The major version of ``java`` (17 for "17.0.15", 8 for "1.8.0"), 0 if it won't run."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', _banner(java))
    if match is None:
        return 0
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> str | None:
    """``JAVA_HOME/bin/java``, else ``java`` on PATH, if it runs and is Java 17+; else None."""
    home = os.environ.get("JAVA_HOME", "")
    candidates = [str(Path(home) / "bin" / "java")] if home else []
    candidates.append(shutil.which("java") or "")
    for java in filter(None, candidates):
        if os.access(java, os.X_OK) and java_major(java) >= MIN_JAVA:
            return java
    return None


def _require_java() -> str:
    java = find_java()
    if java is None:
        raise ServerStartError(
            f"Apache Kafka needs Java {MIN_JAVA} or newer and none was found (JAVA_HOME, "
            f"PATH): install one (e.g. apt-get install openjdk-17-jdk-headless), {_FALLBACK}."
        )
    return java


def ensure_jars(
    version: str | None = None,
    progress: Callable[[str], None] | None = None,
    cache: Path | None = None,
) -> Path:
    """The directory holding Apache Kafka ``version``'s jars, fetched with Maven if absent.

    The first call for a version runs Maven (minutes on a cold Maven cache) and reports
    to ``progress`` every few seconds; the directory appears only when complete, so an
    interrupted fetch starts again next time.
    """
    version = version or kafka_version()
    lib = (cache or cache_root()) / f"{_NAME}-{version}" / "lib"
    if (lib / f"kafka_2.13-{version}.jar").is_file():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServerStartError(
            f"the Apache Kafka {version} jars are not in {lib.parent} and fetching them "
            f"needs Maven (mvn on PATH) once: install it (e.g. apt-get install maven), "
            f"{_FALLBACK}."
        )
    if not POM.is_file():
        raise ServerStartError(
            f"{POM} is missing: run from a tetik checkout to fetch the Apache Kafka jars, "
            f"{_FALLBACK}."
        )
    _fetch(mvn, version, lib, progress or (lambda _line: None))
    return lib


def _fetch(mvn: str, version: str, lib: Path, say: Callable[[str], None]) -> None:
    """Run Maven into a private directory, then move it to ``lib`` in one rename."""
    lib.parent.mkdir(parents=True, exist_ok=True)
    partial = lib.parent / f"lib.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    say(
        f"{_NAME}: fetching Apache Kafka {version} jars with Maven into {lib} "
        "(once; this can take minutes)"
    )
    started = time.monotonic()
    argv = [
        mvn, "-B", "-f", str(POM), "dependency:copy-dependencies", "-DincludeScope=runtime",
        f"-Dkafka.version={version}", f"-DoutputDirectory={partial}",
    ]  # fmt: skip
    try:
        errors = _run_maven(argv, started, say)
        if errors is not None:
            raise ServerStartError(
                f"Maven could not fetch the Apache Kafka {version} jars ({errors}): check "
                f"that Maven Central is reachable and {VERSION_ENV} names a 4.x release, "
                f"{_FALLBACK}."
            )
        try:
            partial.rename(lib)
        except OSError:  # another process finished first: keep its copy
            if not lib.is_dir():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    size = sum(f.stat().st_size for f in lib.iterdir()) / 2**20
    count = len(list(lib.iterdir()))
    say(f"{_NAME}: {count} jars ({size:.0f} MiB) ready after {time.monotonic() - started:.0f} s")


def _run_maven(argv: list[str], started: float, say: Callable[[str], None]) -> str | None:
    """Run Maven, reporting the downloads every FETCH_REPORT_S; None if it succeeded,
    else its first error line."""
    downloads, reported, first_error = 0, started, ""
    try:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    except OSError as exc:
        return f"cannot run {argv[0]}: {exc}"
    assert proc.stdout is not None
    with proc:
        for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            downloads += "Downloaded from" in line
            if line.startswith("[ERROR]") and not first_error:
                first_error = line.removeprefix("[ERROR]").strip()
            if time.monotonic() - reported >= FETCH_REPORT_S:
                reported = time.monotonic()
                say(f"{_NAME}: ... {downloads} files downloaded, {reported - started:.0f} s")
    if proc.returncode == 0:
        return None
    return first_error or f"exit code {proc.returncode}"


def _cluster_id() -> str:
    """A random cluster id as Kafka writes them (URL-safe base64 of 16 bytes)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # as Kafka's Uuid.randomUuid: never like an option
            return text


def _java_argv(
    java: str, lib: Path, workdir: Path, heap: str, main: str, extra: Sequence[str] = ()
) -> list[str]:
    """``java`` with a modest heap, logging per _LOG4J2, running ``main`` on ``lib``."""
    return [
        java, f"-Xmx{heap}", "-Xms128m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true", *extra,
        f"-Dlog4j2.configurationFile={workdir / 'log4j2.properties'}",
        "-cp", f"{lib}/*", main,
    ]  # fmt: skip


@dataclass(frozen=True)
class Sasl:
    """A second listener, ``SASL_PLAINTEXT`` on ``port``, taking PLAIN and SCRAM-SHA-256/512
    logins of ``users`` (name -> password); the PLAINTEXT listener stays for the broker's
    own use and the start-up probe."""

    port: int
    users: tuple[tuple[str, str], ...]

    def properties(self, text: str, host: str, advertised: int) -> str:
        """``text`` (the broker's properties) with this listener added."""
        plain = " ".join(f'user_{name}="{word}"' for name, word in self.users)
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        lines = {
            "listeners": f"{_line(text, 'listeners')},SASL_PLAINTEXT://{host}:{self.port}",
            "advertised.listeners": f"PLAINTEXT://{host}:{advertised},"
            f"SASL_PLAINTEXT://{host}:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,"
            "SASL_PLAINTEXT:SASL_PLAINTEXT",
        }
        kept = [line for line in text.splitlines() if line.split("=", 1)[0] not in lines]
        return "\n".join([
            *kept, *(f"{key}={value}" for key, value in lines.items()),
            "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config="
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain};",
            f"listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config={scram}",
            f"listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config={scram}",
        ]) + "\n"  # fmt: skip

    def format_args(self) -> list[str]:
        """``kafka-storage format`` arguments that create the SCRAM credentials."""
        return [
            arg
            for name, word in self.users
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
            for arg in ("--add-scram", f"{mechanism}=[name={name},password={word}]")
        ]


def _line(text: str, key: str) -> str:
    return next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}="))


def _format(java: str, lib: Path, workdir: Path, heap: str, sasl: Sasl | None = None) -> None:
    """Format the data dir of ``workdir/server.properties`` unless it already is."""
    argv = _java_argv(java, lib, workdir, heap, "kafka.tools.StorageTool")
    argv += ["format", "--ignore-formatted", "-t", _cluster_id(), "-c", "server.properties"]
    argv += sasl.format_args() if sasl else []
    try:
        done = subprocess.run(
            argv, cwd=workdir, capture_output=True, text=True, timeout=_TOOL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServerStartError(f"cannot format Kafka storage in {workdir}: {exc}") from exc
    if done.returncode != 0:
        last = (done.stderr + done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ServerStartError(
            f"formatting Kafka storage in {workdir} failed (exit {done.returncode}): {last[0]}"
        )


def _args_for(
    java: str,
    lib: Path,
    advertised_port: int | None,
    heap: str,
    extra: Sequence[str] = (),
    sasl: Sasl | None = None,
) -> Callable[[int, Path], list[str]]:
    """Write the configuration into the work dir, format it once, return the command."""

    def args(port: int, workdir: Path) -> list[str]:
        settings = _PROPERTIES.format(
            host=HOST,
            port=port,
            controller=free_port(),  # a clash makes the broker exit: started again
            advertised=advertised_port or port,
            data=workdir / "data",
        )
        if sasl is not None:
            settings = sasl.properties(settings, HOST, advertised_port or port)
        (workdir / "server.properties").write_text(settings)
        (workdir / "log4j2.properties").write_text(_LOG4J2)
        _format(java, lib, workdir, heap, sasl)
        argv = _java_argv(java, lib, workdir, heap, "kafka.Kafka", extra)
        return [*argv[1:], "server.properties"]

    return args


def start_apache_kafka(
    workdir: Path | None = None,
    port: int | None = None,
    advertised_port: int | None = None,
    *,
    version: str | None = None,
    progress: Callable[[str], None] | None = None,
    heap: str = "512m",
    sasl: Sasl | None = None,
) -> EmbeddedServer:
    """Start a one-node Apache Kafka broker on 127.0.0.1 and wait until it answers.

    ``workdir`` keeps the configuration, data and log (default: a temp dir removed at
    ``stop()``; a given one is kept, and its data is used again by a later start);
    ``port`` defaults to a free one; ``advertised_port`` is the port clients are told
    to reconnect to (a TCP proxy in front of the broker), by default ``port``.
    The returned server's ``bootstrap`` is ``127.0.0.1:PORT`` (the listening port).
    ``sasl`` adds a SASL listener (:class:`Sasl`) beside it.
    """
    java = _require_java()
    lib = ensure_jars(version, progress)
    faster = _class_archive(java, lib, heap, progress or (lambda _line: None))
    server = start_server(
        _NAME,
        java,
        _args_for(java, lib, advertised_port, heap, faster, sasl),
        kafka_answers,
        port=port,
        workdir=workdir,
        timeout=START_TIMEOUT_S,
        version=version or kafka_version(),
    )
    server.stop_timeout = STOP_TIMEOUT_S
    return server


def _class_archive(java: str, lib: Path, heap: str, say: Callable[[str], None]) -> list[str]:
    """JVM options loading the broker's classes from a class-data archive made once per
    Java and Kafka version, or [] if it cannot be made. Loading classes is most of a
    start: with it a broker starts in about 5 s instead of 8 on a busy 2-core machine."""
    key = hashlib.sha256(f"{os.path.realpath(java)}\n{_banner(java)}".encode()).hexdigest()
    archive = lib.parent / f"classes-{key[:12]}.jsa"
    if not archive.is_file():
        _record_classes(java, lib, heap, archive, say)
    return [f"-XX:SharedArchiveFile={archive}"] if archive.is_file() else []


def _record_classes(
    java: str, lib: Path, heap: str, archive: Path, say: Callable[[str], None]
) -> None:
    """Start a throw-away broker and stop it: at exit its JVM writes the classes it
    loaded to ``archive`` (moved there complete). A failure only leaves no archive."""
    say(f"{_NAME}: recording the broker's classes once, for faster starts")
    partial = archive.with_name(f"{archive.name}.partial-{os.getpid()}")
    record = [f"-XX:ArchiveClassesAtExit={partial}"]
    try:
        server = start_server(
            _NAME, java, _args_for(java, lib, None, heap, record), kafka_answers,
            timeout=START_TIMEOUT_S, version="",
        )  # fmt: skip
        server.stop_timeout = STOP_TIMEOUT_S
        server.stop()  # SIGTERM: a clean exit, which writes the archive
        if partial.is_file():
            partial.replace(archive)
    except (ServerStartError, OSError):
        pass  # the real start reports what is wrong; the archive only saves time
    finally:
        partial.unlink(missing_ok=True)
