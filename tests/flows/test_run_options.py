"""``tetik run``'s options and settings reach every child process whole (one serialised object)."""

from __future__ import annotations

import msgspec

from flows.jobs.run import Launch, RunOptions, _child
from flows.settings import from_env


def test_a_child_gets_every_option_and_setting_of_the_parent() -> None:
    settings = from_env(
        {"TETIK_PREFIX": "p1", "TETIK_SHARDS": "16", "TETIK_ACTIONS_TOPIC": "acts"}
    ).with_endpoints("redis://h:1/0", "k:9092")
    options = RunOptions(workers=3, processes=2, batch_size=77, lateness_ms=55, tail=False)
    child = _child(options, 1, ("127.0.0.1:1", "127.0.0.1:2"))
    launch = Launch(settings, child, "/tmp/rec")
    decoded = msgspec.json.decode(msgspec.json.encode(launch), type=Launch)
    assert decoded.options.batch_size == 77  # it never reached the children before
    assert decoded.options == RunOptions(
        workers=3,
        processes=2,
        batch_size=77,
        lateness_ms=55,
        tail=False,
        process_id=1,
        addresses=("127.0.0.1:1", "127.0.0.1:2"),
    )
    assert decoded.settings == settings
    assert decoded.settings.shards == 16
    assert decoded.settings.actions_topic == "acts"


def test_settings_own_the_kafka_clients_and_the_delivery_knobs() -> None:
    settings = from_env(
        {"TETIK_DELIVER_GROUP": "g1", "TETIK_DELIVERY_TTL_DAYS": "45"}
    ).with_endpoints("redis://h:1/0", "k:9092")
    assert settings.kafka_client() == {"bootstrap.servers": "k:9092"}
    outbox = settings.producer_config(exactly_once=True)
    assert (outbox["enable.idempotence"], outbox["message.timeout.ms"]) == (True, 0)
    assert settings.producer_config()["acks"] == "all"
    assert settings.consumer_config("g2", **{"fetch.wait.max.ms": 50}) == {
        "bootstrap.servers": "k:9092",
        "group.id": "g2",
        "fetch.wait.max.ms": 50,
    }
    assert settings.deliver_group == "g1"
    assert settings.delivery_ttl_ms == 45 * 86_400_000
