"""Versioned rules in a real Redis: push, list, rollback and the engine's watcher.

Every test that touches the store runs twice: on the session's Redis and on its
three-master Redis Cluster (``server_url``), where an activation's WATCH/MULTI
must stay on the one slot of the deployment's hash tag."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import pwd
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cli.rules import (
    add_rules_commands,
    history_rules,
    list_rules,
    open_store,
    push_rules,
    rollback_rules,
)
from engine.errors import ConfigError, RulesError
from engine.rules.loader import load_rules
from flows.pipeline.rules_runtime import RulesRuntime
from flows.retry import connect
from flows.settings import Settings
from flows.stores.keys import Keys
from flows.stores.rules import (
    RollbackError,
    RulesSignatureError,
    RulesStore,
    RulesVersion,
    RulesWatcher,
    default_who,
)

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CART = EXAMPLES / "abandoned_cart.yaml"
WELCOME = EXAMPLES / "welcome_series.yaml"
WINBACK = EXAMPLES / "winback.yaml"
# The typo is on line 4, column 22: the error must say so.
BAD = "version: 1\njourneys:\n  - id: x\n    trigger: {event: add_to_crt}\n    steps: [exit]\n"


def short_hash(path: Path) -> str:
    return load_rules(path.read_bytes(), path.name).source_hash[:12]


def push(store: RulesStore, path: Path, who: str = "ana") -> RulesVersion:
    return store.push(path.read_bytes(), path.name, who=who)


class Clock:
    """A hand-moved millisecond clock for the watcher's interval."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


class CountingStore(RulesStore):
    """The real store, counting the GETs the watcher makes."""

    gets = 0

    def active_version(self) -> int | None:
        self.gets += 1
        return super().active_version()


@pytest.fixture(autouse=True)
def plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No author nor rules secret from the environment unless a test sets one."""
    monkeypatch.delenv("TETIK_AUTHOR", raising=False)
    monkeypatch.delenv("TETIK_RULES_SECRET", raising=False)


@pytest.fixture(params=["redis", "cluster"])
def server_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """The session's Redis, or its Redis Cluster (``redis+cluster://``)."""
    if request.param == "cluster":
        return str(request.getfixturevalue("valkey_cluster").url)
    return redis_url


@pytest.fixture
def client(server_url: str) -> Iterator[redis.Redis]:
    """A client on ``server_url``, made as the engine makes them (flows.retry.connect)."""
    made = connect(server_url)
    yield made
    made.close()


@pytest.fixture
def store(client: redis.Redis, unique: str) -> RulesStore:
    return RulesStore(client, unique)


@pytest.fixture
def settings(server_url: str, unique: str) -> Settings:
    return Settings(redis_url=server_url, prefix=unique)


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    return path


def dead_client() -> redis.Redis:
    """A client on a loopback port nobody listens on (refused at once, no retries)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return redis.Redis(port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))


# -- push ---------------------------------------------------------------------


def test_push_stores_and_activates(store: RulesStore) -> None:
    version = push(store, CART)
    assert (version.version, version.hash, version.journeys) == (1, short_hash(CART), 1)
    assert (version.who, version.filename, version.note) == ("ana", "abandoned_cart.yaml", "")
    assert abs(version.at - time.time() * 1000) < 60_000
    assert store.active() == version
    assert store.active_version() == 1
    assert store.changes() == 1
    assert [(a.version, a.action, a.who) for a in store.history()] == [(1, "push", "ana")]


def test_stored_text_is_the_file_byte_for_byte(store: RulesStore) -> None:
    version = push(store, CART)
    assert version.text.encode() == CART.read_bytes()
    assert load_rules(version.text, version.filename).source_hash[:12] == version.hash


def test_versions_are_numbered_from_one_oldest_first(store: RulesStore) -> None:
    pushed = [push(store, path) for path in (CART, WELCOME, WINBACK)]
    assert [v.version for v in pushed] == [1, 2, 3]
    listed = store.versions()
    assert [(v.version, v.hash) for v in listed] == [
        (1, pushed[0].hash),
        (2, pushed[1].hash),
        (3, pushed[2].hash),
    ]
    assert all(v.text == "" for v in listed)  # listing skips the texts
    assert store.versions(with_text=True) == pushed
    assert store.active_version() == 3


def test_rejected_push_changes_nothing(store: RulesStore, client: redis.Redis, unique: str) -> None:
    def written() -> dict[bytes, bytes]:  # every key of the prefix, on every master
        return {key: client.dump(key) for key in client.scan_iter(match=f"*{unique}*")}

    with pytest.raises(RulesError) as first:
        store.push(BAD, "bad.yaml", who="ana")
    assert written() == {}  # not even the sequence
    push(store, CART)
    keys = written()
    assert keys
    with pytest.raises(RulesError) as second:
        store.push(BAD, "bad.yaml", who="ana")
    assert written() == keys
    assert (store.active_version(), len(store.versions()), store.changes()) == (1, 1, 1)
    for error in (first.value, second.value):
        assert re.fullmatch(r"bad\.yaml:4:22: unknown event type 'add_to_crt'.*", str(error))


def test_pushing_the_active_text_again_creates_nothing(store: RulesStore) -> None:
    first = push(store, CART)
    again, created = store.push_or_keep(CART.read_bytes(), "elsewhere.yaml", who="bob")
    assert (again, created) == (first, False)
    assert store.push(CART.read_text(), "abandoned_cart.yaml") == first  # str or bytes alike
    assert (len(store.versions()), store.changes(), len(store.history())) == (1, 1, 1)


def test_pushing_an_older_text_is_a_new_version_noted_as_such(store: RulesStore) -> None:
    push(store, CART)
    push(store, WELCOME)
    third = push(store, CART)
    assert (third.version, third.hash, third.note) == (3, short_hash(CART), "same as version 1")
    assert store.push(WINBACK.read_bytes(), "w.yaml", note="black friday").note == "black friday"


def test_concurrent_pushes_get_distinct_numbers_without_gaps(server_url: str, unique: str) -> None:
    paths = sorted(EXAMPLES.glob("*.yaml"))
    stores = [RulesStore(connect(server_url), unique) for _ in paths]
    with ThreadPoolExecutor(len(paths)) as pool:
        pushed = list(pool.map(push, stores, paths))
    assert sorted(v.version for v in pushed) == list(range(1, len(paths) + 1))
    assert stores[0].versions(with_text=True) == sorted(pushed, key=lambda v: v.version)
    assert stores[0].changes() == len(paths)
    for store in stores:
        store.client.close()


def test_by_hash_finds_the_first_version_with_that_text(store: RulesStore) -> None:
    cart = push(store, CART)
    welcome = push(store, WELCOME)
    push(store, CART)
    assert store.by_hash(cart.hash) == cart
    assert store.by_hash(load_rules(WELCOME.read_bytes()).source_hash) == welcome  # full sha
    assert store.by_hash("000000000000") is None
    assert store.get(99) is None


def test_push_publishes_the_version_number(store: RulesStore, server_url: str) -> None:
    listener = connect(server_url).pubsub()
    listener.subscribe(Keys(store.prefix).rules.changed)
    assert listener.get_message(timeout=2)["type"] == "subscribe"
    push(store, CART)
    push(store, WELCOME)
    store.rollback()
    got = [listener.get_message(timeout=2) for _ in range(3)]
    assert [m["data"] for m in got if m] == [b"1", b"2", b"1"]
    listener.close()


# -- rollback -------------------------------------------------------------------


def test_rollback_without_version_goes_to_the_previous_active(store: RulesStore) -> None:
    for path in (CART, WELCOME, WINBACK):
        push(store, path)
    back = store.rollback(who="bob")
    assert back.version == 2
    assert back == store.active()
    last = store.history()[-1]
    assert (last.version, last.action, last.who, last.previous) == (2, "rollback", "bob", 3)
    assert store.rollback().version == 3  # twice toggles, like `kubectl rollout undo`
    assert store.changes() == 5


def test_rollback_to_a_version(store: RulesStore) -> None:
    for path in (CART, WELCOME, WINBACK):
        push(store, path)
    assert store.rollback(1).version == 1
    assert store.active_version() == 1
    assert store.rollback(1).version == 1  # already active: nothing written
    assert (store.changes(), len(store.history())) == (4, 4)


def test_rollback_errors_list_what_is_known(store: RulesStore) -> None:
    with pytest.raises(RollbackError, match="no rules have been pushed yet"):
        store.rollback()
    push(store, CART)
    with pytest.raises(RollbackError, match="nothing to roll back to: version 1 is the only"):
        store.rollback()
    push(store, WELCOME)
    with pytest.raises(ConfigError, match=r"no rules version 9 \(known versions: 1, 2\)"):
        store.rollback(9)
    assert (store.active_version(), store.changes()) == (2, 2)


# -- watcher --------------------------------------------------------------------


def test_watcher_reports_each_change_once(store: RulesStore) -> None:
    clock = Clock()
    watcher = RulesWatcher(store, interval_ms=200, clock=clock)
    assert watcher.poll() is None  # nothing pushed yet
    first = push(store, CART)
    clock.now = 200
    assert watcher.poll() == first
    assert watcher.current == first
    clock.now = 400
    assert watcher.poll() is None
    store.rollback(1)  # already active: no change
    second = push(store, WELCOME)
    clock.now = 600
    assert watcher.poll() == second
    store.rollback()
    clock.now = 800
    assert watcher.poll() == first
    assert watcher.current == first


def test_watcher_first_poll_returns_the_active_version(store: RulesStore) -> None:
    push(store, CART)
    active = push(store, WELCOME)
    watcher = RulesWatcher(store)
    assert watcher.current is None
    assert watcher.poll() == active
    assert watcher.poll() is None


def test_watcher_gets_at_most_once_per_interval(client: redis.Redis, unique: str) -> None:
    store = CountingStore(client, unique)
    push(store, CART)
    clock = Clock()
    watcher = RulesWatcher(store, interval_ms=200, clock=clock)
    assert watcher.poll() is not None
    for now in (0, 1, 100, 199):
        clock.now = now
        for _ in range(100):
            assert watcher.poll() is None
    assert store.gets == 1
    clock.now = 200
    watcher.poll()
    clock.now = 399
    watcher.poll()
    assert store.gets == 2


def test_watcher_sees_another_clients_push_within_its_interval(
    store: RulesStore, server_url: str
) -> None:
    watcher = RulesWatcher(store, interval_ms=50)
    push(store, CART)
    assert watcher.poll() is not None
    other = RulesStore(connect(server_url), store.prefix)
    pushed = push(other, WELCOME, who="other")
    start = time.monotonic()
    seen = None
    while seen is None and time.monotonic() - start < 1:
        seen = watcher.poll()
        time.sleep(0.002)
    assert seen == pushed
    assert time.monotonic() - start < 0.05 + 0.1  # one interval, plus scheduling slack
    other.client.close()


def test_watcher_keeps_its_version_while_redis_is_away(store: RulesStore) -> None:
    first = push(store, CART)
    clock = Clock()
    watcher = RulesWatcher(store, interval_ms=200, clock=clock)
    assert watcher.poll() == first
    live, store.client = store.client, dead_client()
    for now in (200, 400):
        clock.now = now
        assert watcher.poll() is None
        assert watcher.current == first
    store.client = live
    second = push(store, WELCOME)
    clock.now = 600
    assert watcher.poll() == second


# -- command line -----------------------------------------------------------------


def test_cli_push_prints_one_line(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETIK_AUTHOR", "ana")
    assert push_rules(str(CART), settings=settings) == 0
    out = capsys.readouterr().out
    assert out == (
        f"pushed version 1 (hash {short_hash(CART)}, 1 journey) from {CART} by ana; "
        "running engines switch within a second\n"
    )
    assert push_rules(str(CART), settings=settings) == 0
    assert capsys.readouterr().out.startswith(f"unchanged: {CART} is active version 1")


def test_cli_push_of_a_bad_file_changes_nothing(
    settings: Settings, bad_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert push_rules(str(bad_file), settings=settings) == 1
    err = capsys.readouterr().err
    assert f"{bad_file}:4:22: unknown event type 'add_to_crt'" in err
    assert err.endswith("rules unchanged: no version is active\n")
    push_rules(str(CART), settings=settings)
    assert push_rules(str(bad_file), settings=settings) == 1
    assert capsys.readouterr().err.endswith("rules unchanged: version 1 stays active\n")
    assert push_rules(str(bad_file.with_name("missing.yaml")), settings=settings) == 1
    assert "missing.yaml: cannot read the rules file" in capsys.readouterr().err
    assert open_store(settings).versions()[0].version == 1


def test_cli_list(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert list_rules(settings) == 0
    assert "`tetik rules push FILE`" in capsys.readouterr().out
    for author, command in (
        ("ana", lambda: push_rules(str(CART), settings=settings)),
        ("bob", lambda: push_rules(str(WELCOME), settings=settings)),
        ("cem", lambda: rollback_rules(settings=settings)),
    ):
        monkeypatch.setenv("TETIK_AUTHOR", author)
        command()
    capsys.readouterr()
    assert list_rules(settings) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "VERSION",
        "ACTIVE",
        "HASH",
        "SIGNED",
        "JOURNEYS",
        "WHO",
        "PUSHED",
        "(UTC)",
        "FILE",
        "NOTE",
    ]
    when = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    assert re.fullmatch(rf"1 +\* +{short_hash(CART)} +no +1 +ana +{when} +{CART}", lines[1])
    assert re.fullmatch(rf"2 +{short_hash(WELCOME)} +no +1 +bob +{when} +{WELCOME}", lines[2])
    assert re.fullmatch(
        rf"version 1 active since {when} \(rolled back from version 2 by cem\)", lines[3]
    )
    assert lines[4] == (
        "rules history intact: 3 activations, hash-chained (set TETIK_RULES_SECRET to sign it)"
    )


def test_cli_rollback(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert rollback_rules(settings=settings) == 1
    assert "no rules have been pushed yet" in capsys.readouterr().err
    push_rules(str(CART), settings=settings)
    push_rules(str(WELCOME), settings=settings)
    capsys.readouterr()
    assert rollback_rules(settings=settings) == 0
    assert capsys.readouterr().out.startswith(
        f"version 1 (hash {short_hash(CART)}, 1 journey, from {CART}) is active again, was 2"
    )
    assert rollback_rules(1, settings=settings) == 0
    assert "already active; nothing changed" in capsys.readouterr().out
    assert rollback_rules(7, settings=settings) == 1
    assert "no rules version 7 (known versions: 1, 2)" in capsys.readouterr().err


def test_cli_needs_tetik_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TETIK_REDIS_URL", raising=False)
    for command in (lambda: push_rules(str(CART)), list_rules, rollback_rules):
        with pytest.raises(ConfigError, match="set TETIK_REDIS_URL"):
            command()


def test_commands_parse_and_honour_tetik_prefix(
    monkeypatch: pytest.MonkeyPatch,
    server_url: str,
    unique: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TETIK_REDIS_URL", server_url)
    monkeypatch.setenv("TETIK_PREFIX", unique)
    parser = argparse.ArgumentParser(prog="tetik")
    rules = parser.add_subparsers(dest="command").add_parser("rules")
    add_rules_commands(rules.add_subparsers(dest="rules_command", required=True))
    monkeypatch.setenv("TETIK_AUTHOR", "dev")
    for argv in (["push", str(CART)], ["push", str(WELCOME)], ["rollback", "1"], ["list"]):
        args = parser.parse_args(["rules", *argv])
        assert args.func(args) == 0
    for argv in (["push", str(CART), "--who", "mallory"], ["rollback", "2", "--who", "x"]):
        args = parser.parse_args(["rules", *argv])
        with pytest.raises(ConfigError, match=r"^--who is not accepted: .* TETIK_AUTHOR=NAME"):
            args.func(args)
    store = RulesStore(connect(server_url), unique)
    assert store.versions()[0].who == "dev"
    assert [a.who for a in store.history()] == ["dev", "dev", "dev"]
    assert store.active_version() == 1
    assert "version 1 active since" in capsys.readouterr().out
    store.client.close()


def test_cli_reports_an_unreachable_redis_as_config_error(unique: str) -> None:
    dead = dead_client().get_connection_kwargs()
    url = f"redis://127.0.0.1:{dead['port']}/0"
    with pytest.raises(ConfigError, match=f"Redis at 127.0.0.1:{dead['port']} failed"):
        list_rules(Settings(redis_url=url, prefix=unique))


# -- who pushed -------------------------------------------------------------------


def test_the_author_is_tetik_author_else_the_os_account(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETIK_AUTHOR", "  ana@example.com ")
    assert default_who() == "ana@example.com"
    monkeypatch.delenv("TETIK_AUTHOR")
    monkeypatch.setenv("USER", "someone-else")  # free text: not trusted for the author
    account = pwd.getpwuid(os.getuid()).pw_name
    assert default_who() == f"{account}@{socket.gethostname()}"
    monkeypatch.setenv("TETIK_AUTHOR", "ana\nversion 9 active")
    with pytest.raises(ConfigError, match="TETIK_AUTHOR must be one printable line"):
        default_who()


def test_a_push_without_who_records_the_author(
    store: RulesStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETIK_AUTHOR", "ci-deploy")
    assert store.push(CART.read_bytes(), "c.yaml").who == "ci-deploy"
    assert store.history()[-1].who == "ci-deploy"


# -- the append-only history ------------------------------------------------------


def three_activations(store: RulesStore) -> None:
    push(store, CART)
    push(store, WELCOME)
    store.rollback(who="bob")


def stream_ids(store: RulesStore) -> list[bytes]:
    return [sid for sid, _ in store.client.xrange(store.log_key)]


def test_the_history_is_a_stream_and_checks_out(store: RulesStore) -> None:
    three_activations(store)
    assert store.client.type(store.log_key) == b"stream"
    assert not store.client.exists(store.history_key)
    check = store.check_history()
    assert (check.intact, [a.version for a in check.activations]) == (True, [1, 2, 1])
    assert check.line() == (
        "rules history intact: 3 activations, hash-chained (set TETIK_RULES_SECRET to sign it)"
    )


def test_a_deleted_entry_is_detected(store: RulesStore) -> None:
    three_activations(store)
    store.client.xdel(store.log_key, stream_ids(store)[1])
    check = store.check_history()
    assert not check.intact
    assert "entry 2 (stream id" in check.problems[0]
    assert "an activation before it was deleted" in check.problems[0]
    assert "\n" not in check.line()


def test_deleting_the_oldest_entry_or_all_of_them_is_detected(store: RulesStore) -> None:
    three_activations(store)
    store.client.xdel(store.log_key, stream_ids(store)[0])
    assert "the oldest activations were deleted" in store.check_history().line()
    store.client.delete(store.log_key)
    assert "version 1 is active but the history is empty" in store.check_history().line()


def test_a_rewritten_entry_is_detected(store: RulesStore) -> None:
    three_activations(store)
    _, second, _ = store.client.xrange(store.log_key)
    forged = dict(second[1])
    forged[b"entry"] = forged[b"entry"].replace(b'"who":"ana"', b'"who":"bob"')
    store.client.xdel(store.log_key, second[0])
    store.client.xadd(store.log_key, forged)  # re-added at the end, with ana's digest
    problems = store.check_history().problems
    assert any("does not match its digest: it was altered or forged" in p for p in problems)
    assert any("does not follow the one before it" in p for p in problems)


def test_an_active_version_set_outside_tetik_is_detected(store: RulesStore) -> None:
    push(store, CART)
    push(store, WELCOME)
    store.client.set(store.active_key, 1)
    assert store.check_history().problems == [
        "version 1 is active but the last activation in the history is version 2: "
        "the active version was set outside tetik"
    ]


def test_list_and_history_say_so_in_one_line_and_exit_1(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    store = open_store(settings)
    three_activations(store)
    assert history_rules(settings) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" activated ")[0] for line in out[:3]] == [
        "version 1",
        "version 2",
        "version 1",
    ]
    assert "(rolled back from version 2 by bob)" in out[2]
    assert out[3].startswith("rules history intact: 3 activations")
    store.client.xdel(store.log_key, stream_ids(store)[1])
    for command in (list_rules, history_rules):
        assert command(settings) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert err.startswith("tetik rules: rules history TAMPERED: entry 2 (stream id ")


def test_an_older_list_history_is_read_then_moved_into_the_stream(store: RulesStore) -> None:
    push(store, CART)
    push(store, WELCOME)
    # Rebuild what an older tetik left: the activations in a plain list.
    old = [orjson.dumps(dataclasses.asdict(a)) for a in store.history()]
    store.client.delete(store.log_key)
    store.client.rpush(store.history_key, *old)
    assert [a.version for a in store.history()] == [1, 2]
    assert [a.version for a in store.history(1)] == [2]
    check = store.check_history()
    assert (check.intact, check.legacy) == (True, 2)
    assert "2 older entries sit in an editable list until the next push" in check.line()
    assert store.rollback().version == 1  # reads the list to find the previous version
    assert not store.client.exists(store.history_key)
    assert [a.version for a in store.history()] == [1, 2, 1]
    check = store.check_history()
    assert (check.intact, check.legacy, len(stream_ids(store))) == (True, 0, 3)


# -- signed pushes ----------------------------------------------------------------


def signed(client: redis.Redis, unique: str, secret: str = "s3cret") -> RulesStore:
    return RulesStore(client, unique, secret=secret)


def test_a_secret_signs_pushes_and_the_engine_accepts_them(
    client: redis.Redis, unique: str
) -> None:
    store = signed(client, unique)
    version = push(store, CART)
    assert re.fullmatch(r"[0-9a-f]{64}", version.signature)
    assert store.active() == version
    assert RulesWatcher(store).poll() == version
    check = store.check_history()
    assert check.line() == (
        "rules history intact: 1 activation, every entry signed with TETIK_RULES_SECRET"
    )


def test_the_secret_comes_from_the_environment(
    client: redis.Redis, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETIK_RULES_SECRET", "from-env")
    assert push(RulesStore(client, unique), CART).signature
    assert RulesStore(client, unique).active() is not None
    with pytest.raises(RulesSignatureError, match="bad signature"):
        signed(client, unique, "another").active()
    assert RulesStore(client, unique, secret="").active() is not None  # "" is no secret


def test_an_unsigned_version_is_refused_in_one_line(
    store: RulesStore, client: redis.Redis, unique: str
) -> None:
    push(store, CART)  # no secret
    with pytest.raises(RulesSignatureError) as refused:
        signed(client, unique).active()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("rules version 1 (")
    assert "is not signed and TETIK_RULES_SECRET is set: push its file again" in message


def test_text_or_author_altered_in_redis_is_a_bad_signature(
    client: redis.Redis, unique: str
) -> None:
    store = signed(client, unique)
    push(store, CART)
    hostile = WELCOME.read_bytes()
    client.hset(store.text_key, "1", hostile)
    with pytest.raises(RulesSignatureError, match=r"bad signature: .* altered in Redis"):
        store.active()
    client.hset(store.text_key, "1", CART.read_bytes())
    assert store.active() is not None
    meta = orjson.loads(client.hget(store.meta_key, "1") or b"{}")
    client.hset(store.meta_key, "1", orjson.dumps({**meta, "who": "someone-else"}))
    with pytest.raises(RulesSignatureError, match="bad signature"):
        store.active()


def test_the_watcher_refuses_a_bad_version_once_and_stays(client: redis.Redis, unique: str) -> None:
    store = signed(client, unique)
    first = push(store, CART)
    clock, lines = Clock(), list[str]()
    watcher = RulesWatcher(store, interval_ms=200, clock=clock, report=lines.append)
    assert watcher.poll() == first
    unsigned = push(RulesStore(client, unique, secret=""), WELCOME)  # Redis write access
    for now in (200, 400, 600):
        clock.now = now
        assert watcher.poll() is None
    assert watcher.current == first
    assert lines == [
        f"refused rules version 2 ({unsigned.hash}) is not signed and TETIK_RULES_SECRET is "
        "set: push its file again with the secret set, or unset TETIK_RULES_SECRET to run "
        "unsigned rules (running version stays 1)"
    ]
    good = push(store, WINBACK)
    clock.now = 800
    assert watcher.poll() == good


def test_with_a_secret_the_unsigned_active_text_is_pushed_again_signed(
    store: RulesStore, client: redis.Redis, unique: str
) -> None:
    push(store, CART)
    again, created = signed(client, unique).push_or_keep(CART.read_bytes(), "c.yaml")
    assert (again.version, created, again.note) == (2, True, "same as version 1")
    assert again.signature
    assert signed(client, unique).active() == again


def test_a_rollback_to_an_unsigned_version_is_refused(
    store: RulesStore, client: redis.Redis, unique: str
) -> None:
    push(store, CART)
    secure = signed(client, unique)
    push(secure, WELCOME)
    with pytest.raises(RollbackError, match=r"cannot roll back: rules version 1 .* not signed"):
        secure.rollback(1)
    assert secure.active_version() == 2


def test_a_signed_history_catches_an_entry_forged_without_the_secret(
    client: redis.Redis, unique: str
) -> None:
    store = signed(client, unique)
    push(store, CART)
    push(store, WELCOME)
    [(_, last)] = client.xrevrange(store.log_key, count=1)
    forged = orjson.dumps(
        {"version": 1, "who": "ana", "at": 1, "action": "rollback", "previous": 2}
    )
    prev = last[b"digest"]
    for alg in (b"hmac-sha256", b"sha256"):  # a guessed MAC, or a plain hash link
        data = b"tetik.rules.history.v1\n" + prev + b"\n" + forged
        digest = hashlib.sha256(data).hexdigest()
        added = client.xadd(
            store.log_key, {"entry": forged, "prev": prev, "digest": digest, "alg": alg}
        )
        client.set(store.active_key, 1)
        line = store.check_history().line()
        assert "entry 3 (stream id" in line, line
        assert "forged" in line
        client.xdel(store.log_key, added)
    unkeyed = RulesStore(client, unique, secret="")
    client.set(store.active_key, 2)
    assert unkeyed.check_history().line() == (
        "rules history intact: 2 activations, hash links checked; set TETIK_RULES_SECRET "
        "to check its signatures"
    )


def test_tetik_run_refuses_an_unsigned_active_version_in_one_line(
    store: RulesStore, server_url: str, kafka_bootstrap: str, unique: str
) -> None:
    push(store, CART)  # pushed without the secret
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETIK_")}
    env.update(
        TETIK_REDIS_URL=server_url,
        TETIK_KAFKA_BOOTSTRAP=kafka_bootstrap,
        TETIK_PREFIX=unique,
        TETIK_RULES_SECRET="s3cret",
    )
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("tetik run: rules version 1 (")
    assert "is not signed and TETIK_RULES_SECRET is set" in last
    assert "Traceback" not in done.stderr
    with pytest.raises(RulesSignatureError):
        RulesRuntime.from_store(signed(store.client, unique))
