"""Every job creates tetik's topics as ``Settings.topic_layout()`` lays them out.

Whichever job meets a fresh broker first (``tetik run``, ``tetik deliver``, ``tetik
produce``...), the topics get the same names and partition counts, so the jobs of
one deployment agree on them.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from cli.deliver import add_commands
from flows.jobs.produce import produce_file
from flows.settings import from_env

pytestmark = pytest.mark.integration


def _deliver(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="tetik")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["deliver", "--idle-exit", "0.5"])
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:  # tetik deliver installs signal handlers
        assert args.func(args) == 0
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])


def _produce(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"event_id": "e1", "type": "login", "ts": 1, "user_id": "u1"}\n')
    assert produce_file(str(events)) == 0


@pytest.mark.parametrize("job", [_deliver, _produce], ids=["deliver", "produce"])
def test_each_job_creates_the_whole_topic_layout_of_its_settings(
    job: object,
    redis_url: str,
    kafka_bootstrap: str,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    env = {
        "TETIK_REDIS_URL": redis_url,
        "TETIK_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TETIK_PREFIX": unique,
        "TETIK_EVENTS_TOPIC": f"{unique}.events",
        "TETIK_DLQ_TOPIC": f"{unique}.events.dlq",
        "TETIK_ACTIONS_TOPIC": f"{unique}.actions",
        "TETIK_ACTIONS_DLQ_TOPIC": f"{unique}.actions.dlq",
        "TETIK_EVENTS_PARTITIONS": "3",
        "TETIK_DLQ_PARTITIONS": "2",
        "TETIK_ACTIONS_PARTITIONS": "5",
        "TETIK_ACTIONS_DLQ_PARTITIONS": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    job(tmp_path)  # type: ignore[operator]
    topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    created = {name: len(t.partitions) for name, t in topics.items() if name.startswith(unique)}
    assert created == from_env(env).topic_layout()
