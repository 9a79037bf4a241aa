"""Channel config: parsing, the default routing, and errors that say what to write."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

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
from channels.onsite import OnsiteChannel, read_inbox
from channels.smtp import SmtpChannel
from channels.webhook import WebhookChannel
from engine.errors import ConfigError
from flows.jobs.demo import _channels_config
from flows.retry import connect
from flows.servers.valkey_cluster import ValkeyCluster
from flows.stores.keys import Keys
from tests.channels.support import MailCatcher, make_action

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

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
    router = Router(default_config(), Resources(redis=redis_client, inbox_keys=Keys()))
    assert isinstance(router.channel_for("onsite"), OnsiteChannel)
    email = router.channel_for("email")
    assert isinstance(email, JsonlChannel)
    assert email.path == "-"
    router.close()


@pytest.mark.integration
def test_an_onsite_url_is_opened_by_the_jobs_connect(
    valkey_cluster: ValkeyCluster, unique: str
) -> None:
    """The deliver job passes flows.retry.connect: a ``redis+cluster://`` URL works."""
    routes = {"onsite": {"adapter": "onsite", "url": valkey_cluster.url}}
    keys = Keys(unique)
    resources = Resources(inbox_keys=keys, connect=connect)
    onsite = Router(parse_config(routes), resources).channel_for("onsite")
    assert isinstance(onsite, OnsiteChannel)
    assert isinstance(onsite.client, RedisCluster)
    assert onsite.send(make_action(1, user_id="u1")).outcome == "delivered"
    assert [m["action_id"] for m in read_inbox(onsite.client, keys, "u1")] == ["act-0001"]


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
        ({"onsite": {"adapter": "onsite", "url": "redis://127.0.0.1:1"}}, "the inboxes' keys"),
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


# -- secrets stay out of the file -------------------------------------------------

SIGNED = """\
sms:
  adapter: webhook
  url: "https://sms.example/send/{channel}"
  secret_env: T_SECRET
  headers: {X-Source: tetik}
  headers_env: {Authorization: T_AUTH}
"""


def test_webhook_secret_and_auth_headers_come_from_the_environment(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SIGNED))
    env = {"T_SECRET": "whsec_1", "T_AUTH": "Bearer abc"}
    sms = Router(config, Resources(env=env)).channel_for("sms")
    assert isinstance(sms, WebhookChannel)
    assert sms.secret == "whsec_1"
    assert sms.headers == {"X-Source": "tetik", "Authorization": "Bearer abc"}


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"T_AUTH": "Bearer abc"}, "webhook adapter: `secret_env` names 'T_SECRET', which is not"),
        ({"T_SECRET": "s"}, "`headers_env: Authorization` names 'T_AUTH', which is not set"),
        ({"T_SECRET": "", "T_AUTH": "x"}, "names 'T_SECRET', which is empty; export T_SECRET"),
    ],
)
def test_a_missing_variable_is_one_line_at_start_up(
    tmp_path: Path, env: dict[str, str], needle: str
) -> None:
    config = load_config(write(tmp_path, SIGNED))
    with pytest.raises(ConfigError) as caught:
        Router(config, Resources(env=env))
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "located", "needle"),
    [
        (
            'sms: {adapter: webhook, url: "http://h/x",\n  headers: {Authorization: "Bearer x"}}\n',
            "c.yaml:2:13: sms (webhook): header 'Authorization' carries a credential",
            "write `headers_env: {Authorization: TETIK_AUTHORIZATION}`",
        ),
        (
            'sms:\n  adapter: webhook\n  url: "http://h/x"\n  headers:\n    X-Api-Key: k1\n',
            "c.yaml:5:5: sms (webhook): header 'X-Api-Key' carries a credential",
            "headers_env: {X-Api-Key: TETIK_X_API_KEY}",
        ),
        (
            'sms: {adapter: webhook, url: "http://h/x", secret: whsec_1}\n',
            "c.yaml:1:44: sms: `secret` would put a secret in the file",
            "e.g. `secret_env: TETIK_WEBHOOK_SECRET`",
        ),
        (
            "email: {adapter: smtp, sender: a@b.c, username: u, password: p}\n",
            "c.yaml:1:52: email: `password` would put a secret in the file",
            "e.g. `password_env: TETIK_SMTP_PASSWORD`",
        ),
        (
            'sms: {adapter: webhook, url: "https://u:pw@h/x"}\n',
            "c.yaml:1:25: sms (webhook): user:password@ in the url is a credential in the file",
            "`headers_env: {Authorization: TETIK_WEBHOOK_AUTH}`",
        ),
        (
            'sms: {adapter: webhook, url: "https://h/x?channel=sms&api_token=abc"}\n',
            "c.yaml:1:25: sms (webhook): query parameter 'api_token' is a credential",
            "send it as a header instead",
        ),
    ],
)
def test_a_secret_written_in_the_file_is_refused_where_it_is(
    tmp_path: Path, text: str, located: str, needle: str
) -> None:
    path = write(tmp_path, text, "c.yaml")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}/{located}"), message
    assert needle in message
    assert "\n" not in message


def test_a_parsed_mapping_names_the_source_without_a_position() -> None:
    raw = {"sms": {"adapter": "webhook", "url": "http://h", "headers": {"Cookie": "s=1"}}}
    assert error_of(raw).startswith("c.yaml: sms (webhook): header 'Cookie' carries a credential")


def test_plain_headers_stay_allowed() -> None:
    raw = {"sms": {"adapter": "webhook", "url": "http://h", "headers": {"X-Source": "shop"}}}
    options = parse_config(raw).routes["sms"].options
    assert isinstance(options, WebhookOptions)
    assert options.headers == {"X-Source": "shop"}


def test_url_placeholders_are_checked_at_start_up() -> None:
    config = parse_config({"sms": {"adapter": "webhook", "url": "http://h/{user_id}"}})
    with pytest.raises(ConfigError, match=r"placeholder \{user_id\}: only \{channel\}"):
        Router(config, Resources())


def test_smtp_requires_starttls_unless_the_file_says_false() -> None:
    secure = parse_config({"email": {"adapter": "smtp", "sender": "a@b"}})
    plain = parse_config({"email": {"adapter": "smtp", "sender": "a@b", "starttls": False}})
    resources = Resources(recipient=lambda _u: None)
    built = [Router(c, resources).channel_for("email") for c in (secure, plain)]
    assert [isinstance(c, SmtpChannel) and c.starttls for c in built] == [True, False]


def test_the_example_channel_config_loads_and_builds(redis_client: redis.Redis) -> None:
    config = load_config(EXAMPLES / "channels" / "channels.yaml")
    env = {
        "TETIK_SMTP_PASSWORD": "p",
        "TETIK_WEBHOOK_SECRET": "whsec_1",
        "TETIK_SMS_AUTH": "Bearer a",
    }
    resources = Resources(redis_client, Keys(), recipient=lambda _u: None, env=env)
    router = Router(config, resources)
    sms, email = router.channel_for("sms"), router.channel_for("email")
    assert isinstance(sms, WebhookChannel)
    assert sms.secret == "whsec_1"
    assert isinstance(email, SmtpChannel)
    assert (email.starttls, email.login) == (True, ("shop", "p"))


def test_the_demo_config_talks_plain_smtp_to_its_loopback_catcher(
    tmp_path: Path, mail: tuple[MailCatcher, int], redis_client: redis.Redis
) -> None:
    catcher, port = mail
    config = load_config(_channels_config(tmp_path, port))
    resources = Resources(redis_client, Keys(), recipient=lambda _u: "ayse@example.com")
    email = Router(config, resources).channel_for("email")
    assert isinstance(email, SmtpChannel)
    assert email.send(make_action(1)).outcome == "delivered"
    assert len(catcher.mails) == 1
