"""Channel config: parsing, the default routing, and errors that say what to write."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from channels.config import (
    ChannelConfig,
    OnsiteOptions,
    Resources,
    Router,
    SmtpOptions,
    WebhookOptions,
    default_config,
    load_config,
    parse_config,
)
from channels.jsonl import JsonlChannel
from channels.onsite import OnsiteChannel
from channels.smtp import SmtpChannel
from channels.webhook import WebhookChannel
from engine.errors import ConfigError

EXAMPLE = """
email: {adapter: smtp, host: 127.0.0.1, port: 1025, sender: shop@example.com}
sms: {adapter: webhook, url: "http://127.0.0.1:8080/sms", timeout: 2s, retries: 3}
onsite: {adapter: onsite, ttl: 7d}
default: {adapter: jsonl, path: "-"}
"""


def write(tmp_path: Path, text: str, name: str = "channels.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(raw: object) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "c.yaml")
    return str(caught.value)


def test_the_documented_example_parses(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE))
    assert {k: r.adapter for k, r in config.routes.items()} == {
        "email": "smtp",
        "sms": "webhook",
        "onsite": "onsite",
        "default": "jsonl",
    }
    smtp = config.routes["email"].options
    assert isinstance(smtp, SmtpOptions)
    assert (smtp.host, smtp.port, smtp.sender) == ("127.0.0.1", 1025, "shop@example.com")
    sms = config.routes["sms"].options
    assert isinstance(sms, WebhookOptions)
    assert (sms.timeout, sms.retries) == (2.0, 3)
    onsite = config.routes["onsite"].options
    assert isinstance(onsite, OnsiteOptions)
    assert onsite.ttl == 7 * 86400


def test_json_files_and_every_duration_form_are_accepted(tmp_path: Path) -> None:
    text = '{"sms": {"adapter": "webhook", "url": "http://h/x", "timeout": 1.5, "backoff": "50ms"}}'
    options = load_config(write(tmp_path, text, "c.json")).routes["sms"].options
    assert isinstance(options, WebhookOptions)
    assert (options.timeout, options.backoff) == (1.5, 0.05)


def test_unknown_adapter_lists_the_known_ones_and_guesses() -> None:
    message = error_of({"email": {"adapter": "smpt", "sender": "a@b.c"}})
    assert "c.yaml: email: unknown adapter 'smpt' (did you mean 'smtp'?)" in message
    assert "jsonl, kafka, onsite, smtp, webhook" in message


def test_missing_adapter_says_so() -> None:
    assert "no `adapter:`" in error_of({"email": {"sender": "a@b.c"}})


def test_unknown_channel_guesses_and_lists() -> None:
    message = error_of({"emial": {"adapter": "jsonl"}})
    assert "unknown channel 'emial' (did you mean 'email'?)" in message
    assert "default" in message


def test_unknown_option_guesses_and_lists_the_options() -> None:
    message = error_of({"email": {"adapter": "smtp", "sender": "a@b.c", "hots": "x"}})
    assert "email (smtp): unknown option 'hots' (did you mean 'host'?)" in message
    assert "port" in message


def test_missing_required_option_gives_an_example() -> None:
    assert "`url` is required (e.g. url: " in error_of({"sms": {"adapter": "webhook"}})
    assert "`sender` is required" in error_of({"email": {"adapter": "smtp"}})


def test_wrong_types_and_ranges_name_the_option() -> None:
    assert "port" in error_of({"email": {"adapter": "smtp", "sender": "a@b", "port": "x"}})
    assert "retries" in error_of({"sms": {"adapter": "webhook", "url": "http://h", "retries": -1}})
    message = error_of({"sms": {"adapter": "webhook", "url": "http://h", "timeout": "2 sec"}})
    assert "sms: timeout" in message
    assert "30s" in message


@pytest.mark.parametrize("raw", [None, [], "jsonl", {}])
def test_a_file_that_is_not_a_mapping_is_refused(raw: object) -> None:
    assert "expected a mapping of channel" in error_of(raw)


def test_an_entry_that_is_not_a_mapping_is_refused() -> None:
    assert "sms: expected a mapping" in error_of({"sms": "webhook"})


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read channel config"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "email: {adapter: smtp"))


def test_default_routing_onsite_inbox_else_jsonl_on_stdout(redis_client: redis.Redis) -> None:
    router = Router(default_config(), Resources(redis=redis_client))
    assert isinstance(router.channel_for("onsite"), OnsiteChannel)
    email = router.channel_for("email")
    assert isinstance(email, JsonlChannel)
    assert email.path == "-"
    router.close()


def test_router_builds_each_route_and_falls_back_to_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE.replace("onsite: {adapter: onsite, ttl: 7d}", "")))
    router = Router(config, Resources(recipient=lambda _u: None))
    assert isinstance(router.channel_for("email"), SmtpChannel)
    assert isinstance(router.channel_for("sms"), WebhookChannel)
    assert isinstance(router.channel_for("push"), JsonlChannel)


def test_without_default_an_unlisted_channel_has_no_adapter() -> None:
    config = parse_config({"sms": {"adapter": "jsonl"}})
    assert Router(config, Resources()).channel_for("email") is None


@pytest.mark.parametrize(
    ("routes", "needle"),
    [
        ({"onsite": {"adapter": "onsite"}}, "TETIK_REDIS_URL"),
        ({"push": {"adapter": "kafka"}}, "TETIK_KAFKA_BOOTSTRAP"),
        ({"email": {"adapter": "smtp", "sender": "a@b", "password_env": "NOPE_X"}}, "NOPE_X"),
        ({"sms": {"adapter": "webhook", "url": "ftp://h/x"}}, "not http"),
    ],
)
def test_what_the_job_cannot_give_is_a_config_error(routes: dict[str, object], needle: str) -> None:
    config: ChannelConfig = parse_config(routes)
    with pytest.raises(ConfigError, match=needle):
        Router(config, Resources(recipient=lambda _u: None, env={}))


def test_smtp_password_comes_from_the_named_variable() -> None:
    routes = {"email": {"adapter": "smtp", "sender": "a@b", "username": "u", "password_env": "P"}}
    router = Router(parse_config(routes), Resources(recipient=lambda _u: None, env={"P": "s3"}))
    email = router.channel_for("email")
    assert isinstance(email, SmtpChannel)
    assert email.login == ("u", "s3")
