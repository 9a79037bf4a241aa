"""The Grafana dashboard and the Prometheus scrape config read only declared metrics."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import yaml

from flows.metrics.names import SPECS

ROOT = Path(__file__).resolve().parents[3]
SERIES = re.compile(r"\btetik_[a-z_]+")
SUFFIXES = ("_bucket", "_count", "_sum")


def declared(series: str) -> bool:
    if series in SPECS:
        return True
    return any(series.endswith(s) and SPECS.get(series.removesuffix(s)) for s in SUFFIXES)


def test_every_dashboard_query_reads_declared_metrics_and_labels() -> None:
    dashboard = orjson.loads((ROOT / "deploy" / "grafana" / "tetik.json").read_bytes())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {s for expr in exprs for s in SERIES.findall(expr)}
    assert used, "the dashboard queries no tetik series"
    assert not [s for s in used if not declared(s)]
    labels = {label for spec in SPECS.values() for label in spec.labels} | {"le", "job"}
    grouped = {
        g.strip()
        for expr in exprs
        for m in re.findall(r"by \(([^)]*)\)", expr)
        for g in m.split(",")
    }
    assert grouped <= labels
    wanted = {
        "tetik_events_total",
        "tetik_actions_total",
        "tetik_consumer_lag",
        "tetik_event_to_action_seconds_bucket",
        "tetik_timers_pending",
        "tetik_errors_total",
        "tetik_deliveries_total",
    }
    assert wanted <= used


def test_the_scrape_config_names_each_job() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {"tetik-run", "tetik-deliver", "tetik-collect"}
    assert all(job["static_configs"][0]["targets"] for job in config["scrape_configs"])
