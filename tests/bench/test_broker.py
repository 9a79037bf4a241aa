"""Which Kafka broker ``tetik bench`` measures on, and that every output names it.

The choice (bench.e2e.choose_broker): ``--broker`` if given, else
``TETIK_EMBEDDED_KAFKA``, else Apache Kafka where Java 17 and Maven (or its cached
jars) are present, else tansu. The unmarked tests need no server; the
``apache_kafka`` ones run the bench on a real Apache Kafka broker it starts itself.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.cli import _with_broker
from bench.e2e import Plan, bench_e2e, broker_version, choose_broker
from bench.markdown import e2e_tables, render
from bench.report import machine, write_results
from engine.errors import ConfigError
from flows.servers.apache_kafka import EMBEDDED_KAFKA_ENV, find_java, kafka_version
from flows.servers.embedded import KAFKA_BOOTSTRAP_ENV

APACHE = {"name": "apache-kafka", "version": "4.4.0", "bootstrap": "127.0.0.1:9", "why": "x"}


@pytest.fixture(autouse=True)
def _no_broker_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The choice as a user without broker settings sees it."""
    monkeypatch.delenv(EMBEDDED_KAFKA_ENV, raising=False)
    monkeypatch.delenv(KAFKA_BOOTSTRAP_ENV, raising=False)


def _java_only_path(tmp_path: Path) -> str:
    """A PATH directory holding java (if present) and nothing else: no mvn."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    java = find_java()
    if java is not None:
        (bin_dir / "java").symlink_to(java)
    return str(bin_dir)


def test_an_explicit_broker_wins() -> None:
    assert choose_broker("tansu") == ("tansu", "--broker")
    assert choose_broker("Apache") == ("apache", "--broker")


def test_the_environment_chooses_when_no_broker_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EMBEDDED_KAFKA_ENV, "tansu")
    assert choose_broker() == ("tansu", EMBEDDED_KAFKA_ENV)
    assert choose_broker("apache") == ("apache", "--broker")


def test_an_unknown_broker_is_a_one_line_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"unknown broker 'redpanda' \(--broker\): use one of"):
        choose_broker("redpanda")
    monkeypatch.setenv(EMBEDDED_KAFKA_ENV, "kafka")
    with pytest.raises(ConfigError, match=f"\\({EMBEDDED_KAFKA_ENV}\\)"):
        choose_broker()


def test_a_broker_and_a_configured_bootstrap_conflict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KAFKA_BOOTSTRAP_ENV, "127.0.0.1:9092")
    with pytest.raises(ConfigError, match=f"--broker apache and {KAFKA_BOOTSTRAP_ENV}"):
        choose_broker("apache")


def test_apache_kafka_by_default_where_java_and_maven_are_present() -> None:
    if find_java() is None or shutil.which("mvn") is None:
        pytest.skip("needs Java 17 and Maven")
    assert choose_broker() == ("apache", "Java 17 and Maven are present")


def test_tansu_by_default_without_java(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no java, no mvn
    monkeypatch.delenv("JAVA_HOME", raising=False)
    kind, why = choose_broker()
    assert kind == "tansu"
    assert why == "no Apache Kafka: no Java 17 or newer (JAVA_HOME, PATH)"


def test_without_maven_only_cached_jars_make_apache_kafka_usable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if find_java() is None:
        pytest.skip("needs Java 17")
    monkeypatch.setenv("PATH", _java_only_path(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("TETIK_CACHE_DIR", str(tmp_path / "empty-cache"))
    assert choose_broker() == ("tansu", f"no Apache Kafka: no Maven to fetch the "
                                        f"Apache Kafka {kafka_version()} jars")  # fmt: skip


def test_broker_versions() -> None:
    assert broker_version("apache") == kafka_version()
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", broker_version("tansu"))


def test_memory_runs_on_the_chosen_broker_and_records_it() -> None:
    """The memory bench starts its broker with servers(), which reads the environment."""

    def bench(quick: bool) -> dict[str, Any]:
        return {"sizes": [], "seen": os.environ.get(EMBEDDED_KAFKA_ENV), "quick": quick}

    result = _with_broker(bench, True, "tansu")
    assert result["seen"] == "tansu"
    assert result["quick"] is True
    assert result["broker"] == {"name": "tansu", "version": broker_version("tansu"),
                                "why": "--broker"}  # fmt: skip
    assert EMBEDDED_KAFKA_ENV not in os.environ  # restored


def test_memory_on_a_configured_bootstrap_is_external(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KAFKA_BOOTSTRAP_ENV, "10.0.0.9:9092")
    result = _with_broker(lambda quick: {"sizes": []}, False, None)
    assert result["broker"]["name"] == "external"
    assert result["broker"]["bootstrap"] == "10.0.0.9:9092"


def test_reports_name_the_broker() -> None:
    e2e = {"broker": APACHE, "systems": {}, "ratios": {}}
    assert e2e_tables(e2e).startswith("Broker: **apache-kafka 4.4.0** at 127.0.0.1:9 (x).")
    memory = {"sizes": [], "broker": {"name": "tansu", "version": "0.6.0", "why": "y"}}
    doc = {"machine": machine(), "params": {}, "results": {"e2e": e2e, "memory": memory}}
    text = render(doc)
    assert "Live figures measured on **apache-kafka 4.4.0** at 127.0.0.1:9 (x)." in text
    assert "Broker: **tansu 0.6.0** (y)." in text.split("## Memory")[1]


# --- on a real Apache Kafka, started by the bench ---------------------------------------

TINY = Plan(
    step_s=1.0,
    first_rate=400,
    max_rate=400,
    warm_rate=200,
    warm_s=0.5,
    drain_s=30,
    users=2_000,
    restart_each_step=False,
    live_s=1.0,  # the settle before measuring: latency figures are not what these test
)


@pytest.fixture
def apache_ok() -> None:
    if find_java() is None:
        pytest.skip("Apache Kafka needs Java 17 or newer: none found (JAVA_HOME, PATH)")


@pytest.mark.integration
@pytest.mark.apache_kafka
@pytest.mark.usefixtures("apache_ok")
def test_e2e_measures_on_apache_kafka_by_default_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --broker: Apache Kafka where Java and Maven are (else asked for by name)."""
    maven = shutil.which("mvn") is not None
    e2e = bench_e2e(plan=TINY, systems=("handwritten",), broker=None if maven else "apache")
    broker = e2e["broker"]
    assert broker["name"] == "apache-kafka"
    assert broker["version"] == kafka_version()
    assert broker["why"] == ("Java 17 and Maven are present" if maven else "--broker")
    assert re.fullmatch(r"127\.0\.0\.1:\d+", broker["bootstrap"])
    (step,) = e2e["systems"]["handwritten"]["steps"]
    assert step["sent"] == 400
    assert step["latency_ms"]["count"] > 0  # cart actions came back through the broker
    assert step["cpu_pct"]["kafka"] is not None  # the broker's JVM, measured
    err = capsys.readouterr().err
    assert f"e2e: measuring on apache-kafka {kafka_version()} at {broker['bootstrap']}" in err
    assert f"events/s on apache-kafka {kafka_version()}" in err
    paths = write_results(tmp_path, {"e2e": e2e}, {"what": "e2e"})
    doc = orjson.loads(paths[0].read_bytes())
    assert doc["results"]["e2e"]["broker"] == broker
    assert f"measured on **apache-kafka {kafka_version()}**" in paths[1].read_text()
