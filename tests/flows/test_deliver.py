"""``tetik deliver`` end to end: real broker, real Redis, real HTTP and SMTP receivers.

One delivery run over a topic with every kind of record is shared by the
module (a consumer group takes ~3 s to join on tansu); the re-runs happen
concurrently in one test.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from channels.config import load_config
from channels.onsite import read_inbox
from cli.deliver import add_commands
from engine.actions import Action, to_json
from engine.errors import ConfigError
from engine.events import decode_event
from engine.state import UserState, apply, dumps
from flows.jobs.deliver import Tally, run_deliver
from flows.kafka.producer import produce_records
from flows.kafka.topics import ensure_topics
from flows.retry import connect
from flows.settings import Settings
from flows.stores.keys import Keys
from flows.stores.states import ShardStore, ShardWrite
from tests.channels.support import (
    HookServer,
    MailCatcher,
    Request,
    make_action,
    serve_hooks,
    serve_mail,
)

pytestmark = pytest.mark.integration

IDLE_EXIT = 1.5
GARBAGE = b'{"action_id": "x", "status": "maybe"}'


@dataclass
class World:
    """The topic, the receivers, and what the first run did."""

    settings: Settings
    actions_topic: str
    dlq_topic: str
    config_path: Path
    jsonl: Path
    hook: HookServer
    mail: MailCatcher
    actions: dict[str, Action]
    tally: Tally = field(default_factory=Tally)
    progress: list[str] = field(default_factory=list)
    first_push: list[Request] = field(default_factory=list)

    @property
    def group(self) -> str:
        return f"g-{self.settings.prefix}"

    @property
    def rerun_settings(self) -> Settings:
        """Re-runs write elsewhere, so the first run's topics stay as it left them."""
        return dataclasses.replace(
            self.settings,
            actions_dlq_topic=f"{self.dlq_topic}-rerun",
            events_topic=f"{self.settings.events_topic}-rerun",
        )


def _actions() -> dict[str, Action]:
    """One action per case, named by what should happen to it."""
    return {
        "mailed": make_action(1, user_id="u1"),
        "no_address": make_action(2, user_id="u2"),
        "sms": make_action(3, user_id="u1", channel="sms", content={"text": "hi"}),
        "push_down": make_action(4, user_id="u1", channel="push", content={"title": "t"}),
        "onsite": make_action(5, user_id="u1", channel="onsite", content={"body": "b"}),
        "whatsapp": make_action(6, user_id="u1", channel="whatsapp", content={"text": "w"}),
        "suppressed": make_action(7, user_id="u1", status="suppressed", reason="quiet_hours"),
    }


def _config(path: Path, hook: HookServer, mail_port: int, jsonl: Path) -> Path:
    fast = "retries: 1, backoff: 5ms, timeout: 2s"
    path.write_text(
        f"email: {{adapter: smtp, port: {mail_port}, sender: shop@example.com, {fast}, "
        "starttls: false}\n"  # the loopback catcher has no TLS
        f'sms: {{adapter: webhook, url: "{hook.url("/sms")}", {fast}}}\n'
        f'push: {{adapter: webhook, url: "{hook.url("/push")}", {fast}}}\n'
        "onsite: {adapter: onsite}\n"
        f'default: {{adapter: jsonl, path: "{jsonl}"}}\n'
    )
    return path


def _store_email(settings: Settings, user: str, address: str) -> None:
    event = {"event_id": "p1", "type": "profile", "ts": 1, "user_id": user}
    event["attributes"] = {"email": address}
    state = UserState(key=user)
    apply(state, decode_event(orjson.dumps(event)), 2)
    keys = settings.keys
    store = ShardStore(redis.Redis.from_url(settings.redis_url), keys.of(user), 0)
    store.commit(ShardWrite(states=[(user, dumps(state), None)]), 0)


def _produce(world: World) -> None:
    records = [(a.user_id.encode(), to_json(a)) for a in world.actions.values()]
    sms = world.actions["sms"]
    records.insert(3, (sms.user_id.encode(), to_json(sms)))  # the same action twice
    records += [(b"u9", GARBAGE), (b"u9", None)]  # type: ignore[list-item]  # a tombstone
    produce_records(world.settings.kafka_bootstrap, world.actions_topic, records)


@pytest.fixture(scope="module")
def world(
    redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    unique = f"t{uuid.uuid4().hex[:12]}"
    actions_topic, dlq_topic = f"actions-{unique}", f"actions.dlq-{unique}"
    settings = Settings(
        redis_url,
        kafka_bootstrap,
        events_topic=f"events-{unique}",
        dlq_topic=f"events.dlq-{unique}",
        actions_topic=actions_topic,
        actions_dlq_topic=dlq_topic,
        prefix=unique,
        events_partitions=2,
        actions_partitions=2,
    )
    ensure_topics(kafka_bootstrap, {actions_topic: 2, dlq_topic: 1, settings.events_topic: 2})
    tmp = tmp_path_factory.mktemp("deliver")
    for hook in serve_hooks(HookServer(paths={"/push": 503})):
        for mail, port in serve_mail():
            jsonl = tmp / "out.jsonl"
            config = _config(tmp / "channels.yaml", hook, port, jsonl)
            world = World(settings, actions_topic, dlq_topic, config, jsonl, hook, mail, _actions())
            _store_email(settings, "u1", "ayse@example.com")
            _produce(world)
            world.tally = _run(world, world.group, progress=world.progress.append)
            world.first_push = list(hook.on("/push"))
            yield world


def _run(world: World, group: str, settings: Settings | None = None, **extra: object) -> Tally:
    return run_deliver(
        settings or world.settings,
        config=load_config(world.config_path),
        group=group,
        idle_exit=IDLE_EXIT,
        progress_every=0.2,
        **extra,  # type: ignore[arg-type]
    )


def read_topic(bootstrap: str, topic: str, expect: int) -> list[Message]:
    """Every record of a topic: read until ``expect`` arrived, then a short grace."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "t", "fetch.wait.max.ms": 50})
    partitions = consumer.list_topics(topic, timeout=5).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    found: list[Message] = []
    deadline, grace = time.monotonic() + 15, None
    while time.monotonic() < (grace or deadline):
        message = consumer.poll(0.1)
        if message is not None and message.error() is None:
            found.append(message)
        if grace is None and len(found) >= expect:
            grace = time.monotonic() + 0.5
    consumer.close()
    return found


def outcomes(tally: Tally) -> dict[str, int]:
    return {o: tally.total(o) for o in sorted({o for o, _ in tally.counts})}


def test_every_record_gets_exactly_one_outcome(world: World) -> None:
    assert outcomes(world.tally) == {
        "bounced": 1,
        "delivered": 4,
        "duplicate": 1,
        "failed": 1,
        "invalid": 2,
        "suppressed": 1,
    }
    assert world.tally.counts[("delivered", "email")] == 1
    assert world.tally.counts[("bounced", "email")] == 1
    assert world.tally.counts[("duplicate", "sms")] == 1


def test_each_sent_action_reaches_its_target_once(world: World) -> None:
    a = world.actions
    [mail] = world.mail.mails
    assert mail.recipients == ["ayse@example.com"]
    assert mail.message["X-Tetik-Action-Id"] == a["mailed"].action_id
    [sms] = world.hook.on("/sms")  # produced twice, delivered once
    assert sms.headers["Idempotency-Key"] == a["sms"].action_id
    inbox = read_inbox(connect(world.settings.redis_url), world.settings.keys, "u1")
    assert [m["action_id"] for m in inbox] == [a["onsite"].action_id]
    lines = [orjson.loads(line) for line in world.jsonl.read_bytes().splitlines()]
    assert [doc["action_id"] for doc in lines] == [a["whatsapp"].action_id]


def test_suppressed_actions_are_never_sent(world: World) -> None:
    suppressed = world.actions["suppressed"].action_id
    assert all(m.message["X-Tetik-Action-Id"] != suppressed for m in world.mail.mails)
    assert suppressed not in world.jsonl.read_text()


def test_a_failing_webhook_parks_the_action_in_the_dlq(world: World) -> None:
    dlq = read_topic(world.settings.kafka_bootstrap, world.dlq_topic, 3)
    by_value = {m.value(): m for m in dlq}
    assert len(dlq) == 3
    push = world.actions["push_down"]
    parked = by_value[to_json(push)]
    headers = {k: v.decode() for k, v in parked.headers() or []}
    assert "HTTP 503" in headers["tetik.error.reason"]
    assert (headers["tetik.channel"], headers["tetik.attempts"]) == ("push", "2")
    assert headers["tetik.adapter"] == "webhook"
    assert headers["tetik.source.topic"] == world.actions_topic
    assert parked.key() == b"u1"
    assert len(world.first_push) == 2  # first try + 1 retry, same key
    assert {r.headers["Idempotency-Key"] for r in world.first_push} == {push.action_id}
    garbage = dict(by_value[GARBAGE].headers() or [])
    assert b"not an action" in garbage["tetik.error.reason"]
    assert b"Invalid enum value 'maybe'" in garbage["tetik.error.reason"]
    tombstone = dict(by_value[None].headers() or [])
    assert b"tombstone" in tombstone["tetik.error.reason"]


def test_outcomes_come_back_as_valid_engagement_events(world: World) -> None:
    records = read_topic(world.settings.kafka_bootstrap, world.settings.events_topic, 5)
    events = [decode_event(m.value()) for m in records]  # raises if any is invalid
    a = world.actions
    expected = {
        (a["mailed"].action_id, "email", "delivered"),
        (a["no_address"].action_id, "email", "bounced"),
        (a["sms"].action_id, "sms", "delivered"),
        (a["onsite"].action_id, "onsite", "delivered"),
        (a["whatsapp"].action_id, "whatsapp", "delivered"),
    }
    assert {(e.action_id, e.channel, e.kind) for e in events} == expected
    assert all(
        e.type == "engagement" and e.event_id == f"tetik-{e.kind}-{e.action_id}" for e in events
    )
    assert all(m.key() == decode_event(m.value()).key.encode() for m in records)
    # The duplicate sms record re-emits its feedback under the same event_id.
    assert len(events) == 6
    assert len({e.event_id for e in events}) == 5


def test_the_ledger_holds_final_outcomes_only(world: World) -> None:
    client = redis.Redis.from_url(world.settings.redis_url)
    key = world.settings.keys.delivered
    for name in ("mailed", "no_address", "sms", "onsite", "whatsapp"):
        assert client.pttl(key(world.actions[name].action_id)) > 0, name
    for name in ("push_down", "suppressed"):
        assert not client.exists(key(world.actions[name].action_id)), name
    assert client.get(key(world.actions["no_address"].action_id)).startswith(b"bounced smtp ")


def test_progress_shows_counts_by_outcome_and_channel(world: World) -> None:
    assert world.progress
    assert "delivered 4 (email 1, onsite 1, sms 1, whatsapp 1)" in world.progress[-1]
    assert "failed 1 (push 1)" in world.progress[-1]


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tetik")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def _env(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETIK_REDIS_URL", world.settings.redis_url)
    monkeypatch.setenv("TETIK_KAFKA_BOOTSTRAP", world.settings.kafka_bootstrap)
    monkeypatch.setenv("TETIK_PREFIX", world.settings.prefix)
    monkeypatch.setenv("TETIK_EVENTS_TOPIC", world.settings.events_topic)


def test_reruns_send_nothing_twice(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same group: offsets were committed. New group: the ledger; a K-record limit.

    The failed push action is not in the ledger, so a new group re-drives it.
    """
    results: dict[str, Tally] = {}
    rerun = world.rerun_settings
    same = threading.Thread(target=lambda: results.update(same=_run(world, world.group, rerun)))
    limited = threading.Thread(
        target=lambda: results.update(limited=_run(world, f"{world.group}-k", rerun, max_actions=3))
    )
    same.start()
    limited.start()
    _env(world, monkeypatch)
    monkeypatch.setenv("TETIK_EVENTS_TOPIC", rerun.events_topic)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:  # the CLI path, in the main thread (it installs signal handlers)
        argv = ["deliver", "--config", str(world.config_path), "--group", f"{world.group}-new"]
        argv += ["--idle-exit", str(IDLE_EXIT), "--actions-topic", world.actions_topic]
        assert _cli([*argv, "--dlq-topic", rerun.actions_dlq_topic]) == 0
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    same.join()
    limited.join()
    assert results["same"].total() == 0
    assert results["limited"].total() == 3
    err = capsys.readouterr().err
    assert "delivering" in err
    assert "duplicate 6" in err  # all but the failed, the suppressed and the two invalid
    assert len(world.mail.mails) == 1
    assert len(world.hook.on("/sms")) == 1
    assert len(world.jsonl.read_bytes().splitlines()) == 1
    assert len(world.hook.on("/push")) > len(world.first_push)  # re-driven, failed again


def test_tetik_onsite_prints_the_inbox(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _env(world, monkeypatch)
    assert _cli(["onsite", "u1"]) == 0
    inbox = orjson.loads(capsys.readouterr().out)
    assert [m["action_id"] for m in inbox] == [world.actions["onsite"].action_id]


def test_commands_without_servers_say_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TETIK_REDIS_URL", "TETIK_KAFKA_BOOTSTRAP"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="TETIK_REDIS_URL and TETIK_KAFKA_BOOTSTRAP"):
        _cli(["deliver"])
    with pytest.raises(ConfigError, match="TETIK_REDIS_URL"):
        _cli(["onsite", "u1"])
    with pytest.raises(ConfigError, match="TETIK_KAFKA_BOOTSTRAP"):
        run_deliver(Settings(redis_url="redis://127.0.0.1:1"))


def test_a_set_stop_event_ends_the_job_before_any_record(world: World) -> None:
    stop = threading.Event()
    stop.set()
    start = time.monotonic()
    assert _run(world, f"{world.group}-stopped", stop=stop).total() == 0
    assert time.monotonic() - start < 2.0


def _cli_in_main_thread(argv: list[str]) -> int:
    """``_cli``, restoring the signal handlers that ``tetik deliver`` installs."""
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        return _cli(argv)
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])


@pytest.fixture(params=["redis", "cluster"])
def server_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """The session's Redis, or its three-master Redis Cluster (``redis+cluster://``)."""
    if request.param == "cluster":
        return str(request.getfixturevalue("valkey_cluster").url)
    return redis_url


def test_tetik_deliver_reads_the_actions_topic_of_tetik_actions_topic(
    server_url: str,
    kafka_bootstrap: str,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The topic ``tetik run`` writes (TETIK_ACTIONS_TOPIC) is the one deliver reads;
    on one Redis and on a Redis Cluster, with ``tetik onsite`` reading the inbox back."""
    actions_topic = f"{unique}.actions"
    for name, value in {
        "TETIK_REDIS_URL": server_url,
        "TETIK_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TETIK_PREFIX": unique,
        "TETIK_EVENTS_TOPIC": f"{unique}.events",
        "TETIK_ACTIONS_TOPIC": actions_topic,
        "TETIK_ACTIONS_DLQ_TOPIC": f"{unique}.actions.dlq",
    }.items():
        monkeypatch.setenv(name, value)
    ensure_topics(kafka_bootstrap, {actions_topic: 1})
    action = make_action(1, user_id="u1", channel="onsite", content={"body": "b"})
    produce_records(kafka_bootstrap, actions_topic, [(b"u1", to_json(action))])
    argv = ["deliver", "--idle-exit", str(IDLE_EXIT), "--group", f"g-{unique}"]
    assert _cli_in_main_thread(argv) == 0
    client, keys = connect(server_url), Keys(unique)
    inbox = read_inbox(client, keys, "u1")
    assert [m["action_id"] for m in inbox] == [action.action_id]
    assert f"delivering {actions_topic} " in capsys.readouterr().err
    assert client.get(keys.delivered(action.action_id)).startswith(b"delivered onsite ")
    assert _cli(["onsite", "u1"]) == 0
    assert [m["action_id"] for m in orjson.loads(capsys.readouterr().out)] == [action.action_id]
