"""deploy/compose.yaml and the Dockerfile hold together (no Docker engine runs here, so
this is what can be checked): every tetik command they run parses with tetik's own
command line and names files the image has, every scrape target is a service serving
metrics, and every variable they set is one tetik reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from channels.config import load_config
from cli.main import _parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SERVICES: dict[str, Any] = COMPOSE["services"]
TETIK = {name: svc for name, svc in SERVICES.items() if svc.get("image") == "tetik:latest"}
IN_IMAGE = {"/usr/share/tetik/examples/": ROOT / "examples/"}


def _local(path: str, service: dict[str, Any]) -> Path | None:
    """The repository file a path inside a tetik container is, or None."""
    for prefix, there in IN_IMAGE.items():
        if path.startswith(prefix):
            return there / path.removeprefix(prefix)
    for volume in service.get("volumes", []):
        source, _, target = str(volume).partition(":")
        target = target.split(":")[0]
        if path == target and source.startswith("./"):
            return ROOT / "deploy" / source
    return None


def test_compose_runs_run_deliver_and_collect_on_real_servers() -> None:
    assert {"kafka", "redis", "prometheus"} <= set(SERVICES)
    assert {svc["command"][0] for svc in TETIK.values()} == {"run", "deliver", "collect"}
    for svc in TETIK.values():
        env = svc["environment"]
        assert env["TETIK_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["TETIK_REDIS_URL"].startswith("redis://redis:")


@pytest.mark.parametrize("name", sorted(TETIK))
def test_each_command_parses_and_its_files_exist(name: str) -> None:
    service = TETIK[name]
    args = _parser().parse_args(service["command"])
    assert args.command == service["command"][0]
    for value in service["command"]:
        if value.startswith("/"):
            local = _local(value, service)
            assert local is not None, f"{name}: {value} is not in the image"
            assert local.is_file(), f"{name}: {value} is not in the repository"
    if args.command == "deliver":
        load_config(_local(args.config, service) or "missing")  # raises on a bad file


def test_dockerfile_command_parses_and_its_health_port_is_served() -> None:
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M)
    assert cmd is not None
    argv = yaml.safe_load(cmd.group(1))
    _parser().parse_args(argv)
    assert (ROOT / "examples" / "demo" / "journeys.yaml").is_file()
    assert "TETIK_METRICS_PORT=9108" in DOCKERFILE
    assert "/healthz" in DOCKERFILE
    workdir = re.search(r"^WORKDIR (\S+)$", DOCKERFILE.split("FROM python")[-1], re.M)
    assert workdir is not None
    assert f"TETIK_RECOVERY_DIR={workdir.group(1)}/recovery" in DOCKERFILE
    assert f'VOLUME ["{workdir.group(1)}"]' in DOCKERFILE
    copied = set(re.findall(r"^COPY (\w+) \1$", DOCKERFILE, re.M))
    assert copied >= {"engine", "flows", "channels", "clickstream", "bench", "chaos", "cli"}


def test_prometheus_scrapes_every_tetik_service_on_its_metrics_port() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    served = {f"{name}:{svc['environment']['TETIK_METRICS_PORT']}" for name, svc in TETIK.items()}
    assert targets == served
    mounted = [v for v in SERVICES["prometheus"]["volumes"] if "prometheus.yml" in v]
    assert mounted
    assert (ROOT / "deploy" / mounted[0].split(":")[0]).is_file()


def test_every_tetik_variable_set_is_one_tetik_reads() -> None:
    sources = "\n".join(p.read_text() for p in (ROOT / "flows").rglob("*.py"))
    set_here = {k for svc in TETIK.values() for k in svc["environment"]} | set(
        re.findall(r"\b(TETIK_[A-Z_]+)=", DOCKERFILE)
    )
    unread = sorted(name for name in set_here if f'"{name}"' not in sources)
    assert not unread, f"set but read nowhere: {unread}"
