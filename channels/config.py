"""Which adapter serves which channel: a small YAML (or JSON) file.

Format: a mapping from a channel name (one of ``engine.events.CHANNELS``) or
``default`` to an entry ``{adapter: NAME, option: value...}``::

    email:   {adapter: smtp, host: smtp.example.com, port: 587, sender: shop@example.com,
              username: shop, password_env: TETIK_SMTP_PASSWORD}
    sms:     {adapter: webhook, url: "https://sms.example/send/{channel}", timeout: 2s,
              secret_env: TETIK_WEBHOOK_SECRET,
              headers_env: {Authorization: TETIK_SMS_AUTH}}
    onsite:  {adapter: onsite, ttl: 7d}
    default: {adapter: jsonl, path: "-"}

Rules:

* A channel without an entry uses ``default``; when there is no ``default``
  either, its actions are ``failed`` (dead-lettered with that reason, so
  nothing is lost and they can be re-driven after the config is fixed).
* Without a file, :data:`DEFAULT_ROUTES` applies: ``onsite`` into the Redis
  inbox, every other channel as JSONL on stdout -- a safe way to see what the
  engine would send before any provider is wired.
* Durations (``timeout``, ``backoff``, ``backoff_max``, ``ttl``) are a number
  of seconds or a duration string (``500ms``, ``2s``, ``7d``).
* Every mistake is a :class:`~engine.errors.ConfigError` naming the entry,
  what is wrong and what to write instead; the file is checked whole before
  anything is delivered.

Secrets (security rules):

* Secrets stay out of the file. The file names the environment variable that
  holds each one: ``password_env`` (SMTP password), ``secret_env`` (the key
  that signs webhook requests, see ``channels.webhook``) and ``headers_env``
  (header -> variable, e.g. ``Authorization: TETIK_SMS_AUTH``). A variable that
  is not set, or empty, is a ConfigError when the adapters are built (start-up).
* A secret written in the file is refused at load, located as
  ``FILE:LINE:COL`` when read from a file: an option such as ``password:`` or
  ``secret:``, a header that carries credentials (``Authorization``, or a
  name with auth, token, key, secret, password, signature, cookie, session
  or credential in it), credentials in a URL (``user:pass@host``, or a query
  parameter named like one).
* SMTP requires STARTTLS unless ``starttls: false`` says otherwise (only for
  a loopback mail catcher); ``ca_file`` adds a CA to trust.

Load (``channels.pool``, ``channels.breaker``):

* ``concurrency`` -- how many sends of the route may be in flight at once
  (default 8 for webhook and onsite, 4 for smtp, 1 for kafka; jsonl always
  writes from one thread);
* ``circuit_failures`` (default 5; 0: off) consecutive ``failed`` sends open
  the route's circuit for ``circuit_cooldown`` (default 30s): meanwhile its
  actions fail at once with the reason and are dead-lettered, then one trial
  send decides whether it closes.

Options per adapter are the fields of the ``*Options`` structs below.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import parse_qsl, urlsplit

import msgspec
import redis
import yaml

from channels.base import Channel, RetryPolicy
from channels.breaker import DEFAULT_COOLDOWN_S, DEFAULT_FAILURES, BreakerPolicy, CircuitBreaker
from channels.jsonl import JsonlChannel
from channels.kafka import DEFAULT_TOPIC, KafkaChannel
from channels.onsite import DEFAULT_MAX_ITEMS, DEFAULT_TTL_MS, InboxKeys, OnsiteChannel
from channels.pool import ChannelPool
from channels.smtp import Recipient, SmtpChannel
from channels.webhook import WebhookChannel
from engine.durations import parse_duration
from engine.errors import ConfigError
from engine.events import CHANNELS, suggest

DEFAULT_KEY: Final = "default"
MAX_CONCURRENCY: Final = 64
DEFAULT_ROUTES: Final[Mapping[str, Mapping[str, Any]]] = {
    "onsite": {"adapter": "onsite"},
    DEFAULT_KEY: {"adapter": "jsonl", "path": "-"},
}
DURATION_OPTIONS: Final = frozenset(
    {"timeout", "backoff", "backoff_max", "ttl", "circuit_cooldown"}
)

Positive = Annotated[float, msgspec.Meta(gt=0)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Concurrency = Annotated[int, msgspec.Meta(ge=1, le=MAX_CONCURRENCY)]


class _Options(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of the option structs: unknown options are errors, not silently ignored."""


class _Guarded(_Options, frozen=True, kw_only=True):
    """Every route has a circuit breaker (``channels.breaker``); 0 failures turns it off."""

    circuit_failures: Count = DEFAULT_FAILURES
    circuit_cooldown: Positive = DEFAULT_COOLDOWN_S

    def breaker(self) -> BreakerPolicy:
        return BreakerPolicy(self.circuit_failures, self.circuit_cooldown)


class _Retrying(_Guarded, frozen=True, kw_only=True):
    retries: Count = 3
    backoff: Positive = 0.2
    backoff_max: Positive = 5.0
    concurrency: Concurrency = 8  # sends in flight at once (channels.pool)

    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.retries, self.backoff, self.backoff_max)


class JsonlOptions(_Guarded, frozen=True, kw_only=True):
    path: str = "-"  # one writer: lines stay in the order the job sends them


class KafkaOptions(_Guarded, frozen=True, kw_only=True):
    concurrency: Concurrency = 1  # each one more is one more producer
    topic: str = DEFAULT_TOPIC
    prefix: str | None = None
    bootstrap: str | None = None  # default: TETIK_KAFKA_BOOTSTRAP
    timeout: Positive = 10.0


class WebhookOptions(_Retrying, frozen=True, kw_only=True):
    url: str
    timeout: Positive = 5.0
    headers: dict[str, str] = {}  # no credentials: those go in headers_env
    headers_env: dict[str, str] = {}  # header -> environment variable holding its value
    secret_env: str | None = None  # environment variable holding the signing secret


class SmtpOptions(_Retrying, frozen=True, kw_only=True):
    sender: str
    concurrency: Concurrency = 4  # one SMTP connection each
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 25
    timeout: Positive = 10.0
    starttls: bool = True  # false only for a loopback catcher
    ca_file: str | None = None
    username: str | None = None
    password_env: str | None = None


class OnsiteOptions(_Retrying, frozen=True, kw_only=True):
    ttl: Positive = DEFAULT_TTL_MS / 1000
    max_items: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_MAX_ITEMS
    url: str | None = None  # default: TETIK_REDIS_URL


OPTIONS: Final[Mapping[str, type[_Options]]] = {
    "jsonl": JsonlOptions,
    "kafka": KafkaOptions,
    "onsite": OnsiteOptions,
    "smtp": SmtpOptions,
    "webhook": WebhookOptions,
}
_EXAMPLES: Final = {
    "url": 'url: "http://127.0.0.1:8080/sms"',
    "sender": "sender: shop@example.com",
}


class Route(msgspec.Struct, frozen=True):
    """One entry of the file: the adapter's name and its checked options."""

    adapter: str
    options: _Options


class ChannelConfig(msgspec.Struct, frozen=True):
    """The checked routing table: channel (or ``default``) -> route."""

    routes: dict[str, Route]
    source: str = "channel config"


Marks = Mapping[tuple[str, ...], str]  # key path -> "LINE:COL" of that key in the file


def load_config(path: str | Path) -> ChannelConfig:
    """Read and check a config file; raise ConfigError for any problem."""
    try:
        text = Path(path).read_text()
        raw = yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError(f"cannot read channel config {str(path)!r}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw, str(path), _marks(text))


def parse_config(
    raw: object, source: str = "channel config", marks: Marks | None = None
) -> ChannelConfig:
    """Check a parsed mapping (see the module docstring for the format).

    ``marks`` (from a file) locate errors about secrets as ``FILE:LINE:COL``.
    """
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(
            f"{source}: expected a mapping of channel -> {{adapter: ...}}, e.g. "
            '`default: {adapter: jsonl, path: "-"}`'
        )
    routes = {}
    where = _Locator(source, marks or {})
    for key, value in raw.items():
        channel = _channel(key, source)
        _no_secret_options(channel, value, where)
        route = _route(channel, value, source)
        _no_secrets(channel, route, where)
        routes[channel] = route
    return ChannelConfig(routes, source)


def _marks(text: str) -> dict[tuple[str, ...], str]:
    """Where each key of the first three levels is (1-based line:column)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    found: dict[tuple[str, ...], str] = {}

    def walk(node: yaml.Node | None, path: tuple[str, ...]) -> None:
        if not isinstance(node, yaml.MappingNode) or len(path) >= 3:
            return
        for key, value in node.value:
            here = (*path, str(key.value))
            found[here] = f"{key.start_mark.line + 1}:{key.start_mark.column + 1}"
            walk(value, here)

    walk(root, ())
    return found


@dataclass(frozen=True)
class _Locator:
    source: str
    marks: Marks

    def at(self, *path: str) -> str:
        """``FILE:LINE:COL`` of the key at ``path`` (just ``FILE`` when unknown)."""
        mark = self.marks.get(path)
        return f"{self.source}:{mark}" if mark else self.source


# Option names that would hold a secret, and what to write instead.
_LITERAL_SECRETS: Final = {
    "password": "password_env: TETIK_SMTP_PASSWORD",
    "secret": "secret_env: TETIK_WEBHOOK_SECRET",
    "token": "headers_env: {Authorization: TETIK_WEBHOOK_AUTH}",
    "api_key": "headers_env: {X-Api-Key: TETIK_WEBHOOK_KEY}",
    "auth": "headers_env: {Authorization: TETIK_WEBHOOK_AUTH}",
    "authorization": "headers_env: {Authorization: TETIK_WEBHOOK_AUTH}",
}
_CREDENTIAL = re.compile(
    r"auth|token|secret|passw|key|signature|cookie|session|credential", re.IGNORECASE
)


def _no_secret_options(channel: str, entry: object, where: _Locator) -> None:
    """ConfigError for an option that would hold a secret (``password:``, ``secret:``...)."""
    for name in entry if isinstance(entry, Mapping) else ():
        instead = _LITERAL_SECRETS.get(str(name).lower())
        if instead:
            raise ConfigError(
                f"{where.at(channel, str(name))}: {channel}: `{name}` would put a secret in the "
                f"file; export it and name the variable instead, e.g. `{instead}`"
            )


def _no_secrets(channel: str, route: Route, where: _Locator) -> None:
    """ConfigError for a secret written in the file (see the module's security rules)."""
    options = route.options
    if isinstance(options, WebhookOptions):
        for name in options.headers:
            if _CREDENTIAL.search(name):
                variable = "TETIK_" + re.sub(r"\W+", "_", name).upper().strip("_")
                raise ConfigError(
                    f"{where.at(channel, 'headers', name)}: {channel} (webhook): header "
                    f"{name!r} carries a credential and must not be written in the file; "
                    f"export it and write `headers_env: {{{name}: {variable}}}`"
                )
        _no_url_credentials(channel, options.url, where)


def _no_url_credentials(channel: str, url: str, where: _Locator) -> None:
    parts = urlsplit(url)
    names = [name for name, _ in parse_qsl(parts.query, keep_blank_values=True)]
    if parts.username is not None or parts.password is not None:
        what = "user:password@ in the url"
    elif any(_CREDENTIAL.search(name) for name in names):
        what = f"query parameter {next(n for n in names if _CREDENTIAL.search(n))!r}"
    else:
        return
    raise ConfigError(
        f"{where.at(channel, 'url')}: {channel} (webhook): {what} is a credential in the "
        "file; send it as a header instead: `headers_env: {Authorization: TETIK_WEBHOOK_AUTH}`"
    )


def default_config() -> ChannelConfig:
    """The routing used without a file: onsite inbox, everything else JSONL on stdout."""
    return parse_config(DEFAULT_ROUTES, "built-in channel config")


def _channel(key: object, source: str) -> str:
    known = (*CHANNELS, DEFAULT_KEY)
    if key not in known:
        raise ConfigError(
            f"{source}: unknown channel {key!r}{suggest(str(key), known)}; "
            f"write one of {', '.join(known)}"
        )
    return str(key)


def _route(channel: str, entry: object, source: str) -> Route:
    where = f"{source}: {channel}"
    if not isinstance(entry, Mapping):
        raise ConfigError(f'{where}: expected a mapping like {{adapter: jsonl, path: "-"}}')
    options = dict(entry)
    adapter = options.pop("adapter", None)
    if adapter not in OPTIONS:
        known = ", ".join(OPTIONS)
        hint = suggest(str(adapter), OPTIONS) if adapter else ""
        what = f"unknown adapter {adapter!r}{hint}" if adapter else "no `adapter:`"
        raise ConfigError(f"{where}: {what}; the adapters are {known}")
    kind = str(adapter)
    return Route(kind, _options(kind, _durations(options, where), where))


def _durations(options: dict[str, Any], where: str) -> dict[str, Any]:
    """Duration options as seconds (numbers pass through for msgspec to check)."""
    return {
        k: _seconds(v, f"{where}: {k}") if k in DURATION_OPTIONS else v for k, v in options.items()
    }


def _seconds(value: object, where: str) -> object:
    if not isinstance(value, str):
        return value
    try:
        return parse_duration(value) / 1000
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc} (or a number of seconds)") from None


def _options(adapter: str, options: dict[str, Any], where: str) -> _Options:
    kind = OPTIONS[adapter]
    try:
        return msgspec.convert(options, kind)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where} ({adapter}): {_explain(str(exc), kind)}") from None


def _explain(message: str, kind: type[_Options]) -> str:
    """msgspec's message, with the fix: the option names, an example."""
    names = kind.__struct_fields__
    unknown = re.search(r"unknown field `([^`]*)`", message)
    if unknown:
        name = unknown.group(1)
        return f"unknown option {name!r}{suggest(name, names)}; the options are {', '.join(names)}"
    missing = re.search(r"missing required field `([^`]*)`", message)
    if missing:
        name = missing.group(1)
        return f"`{name}` is required (e.g. {_EXAMPLES.get(name, name + ': ...')})"
    located = re.match(r"^(.*) - at `\$\.([^`]*)`\Z", message)
    if located:
        problem = located.group(1)
        return f"`{located.group(2)}`: {problem[:1].lower()}{problem[1:]}"
    return message


_Redis = redis.Redis  # the field ``Resources.redis`` hides the module in the class body


def _plain_connect(url: str) -> _Redis:
    return redis.Redis.from_url(url)


@dataclass(frozen=True)
class Resources:
    """What adapters take from the running job rather than from the file.

    ``inbox_keys`` names the onsite inboxes (tetik's key layout,
    ``flows.stores.keys.Keys``); ``connect`` opens the Redis of an onsite
    ``url:`` (the deliver job gives ``flows.retry.connect``, which also opens a
    ``redis+cluster://`` URL).
    """

    redis: redis.Redis | None = None
    inbox_keys: InboxKeys | None = None
    connect: Callable[[str], _Redis] = _plain_connect
    kafka_bootstrap: str = ""
    recipient: Recipient | None = None
    stop: threading.Event | None = None
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)


def build(route: Route, resources: Resources) -> Channel:
    """The adapter for one route; ConfigError when the job lacks what it needs."""
    builder = _BUILDERS[route.adapter]
    return builder(route.options, resources)


def _jsonl(options: JsonlOptions, _res: Resources) -> Channel:
    return JsonlChannel(options.path)


def _kafka(options: KafkaOptions, res: Resources) -> Channel:
    bootstrap = options.bootstrap or res.kafka_bootstrap
    if not bootstrap:
        raise ConfigError("kafka adapter: set TETIK_KAFKA_BOOTSTRAP or give `bootstrap:`")
    return KafkaChannel(
        bootstrap, topic=options.topic, prefix=options.prefix, timeout=options.timeout
    )


def _webhook(options: WebhookOptions, res: Resources) -> Channel:
    headers = {
        name: _env("webhook", f"headers_env: {name}", variable, res.env)
        for name, variable in options.headers_env.items()
    }
    secret = None
    if options.secret_env is not None:
        secret = _env("webhook", "secret_env", options.secret_env, res.env)
    try:
        return WebhookChannel(
            options.url,
            timeout=options.timeout,
            retry=options.policy(),
            headers={**options.headers, **headers},
            secret=secret,
            stop=res.stop,
        )
    except ValueError as exc:
        raise ConfigError(f"webhook adapter: {exc}") from None


def _smtp(options: SmtpOptions, res: Resources) -> Channel:
    if res.recipient is None:
        raise ConfigError("smtp adapter: needs a recipient lookup (the deliver job gives one)")
    return SmtpChannel(
        options.host,
        options.port,
        options.sender,
        res.recipient,
        timeout=options.timeout,
        retry=options.policy(),
        starttls=options.starttls,
        ca_file=options.ca_file,
        username=options.username,
        password=None
        if options.password_env is None
        else _env("smtp", "password_env", options.password_env, res.env),
        stop=res.stop,
    )


def _env(adapter: str, option: str, name: str, env: Mapping[str, str]) -> str:
    """The value of the variable an option names; ConfigError when unset or empty."""
    value = env.get(name, "")
    if not value:
        state = "empty" if name in env else "not set"
        raise ConfigError(
            f"{adapter} adapter: `{option}` names {name!r}, which is {state}; export {name} "
            "before starting tetik deliver"
        )
    return value


def _onsite(options: OnsiteOptions, res: Resources) -> Channel:
    client = res.connect(options.url) if options.url else res.redis
    if client is None:
        raise ConfigError("onsite adapter: set TETIK_REDIS_URL or give `url:` (a Redis URL)")
    if res.inbox_keys is None:
        raise ConfigError("onsite adapter: needs the inboxes' keys (the deliver job gives them)")
    return OnsiteChannel(
        client,
        res.inbox_keys,
        ttl_ms=round(options.ttl * 1000),
        max_items=options.max_items,
        retry=options.policy(),
        stop=res.stop,
    )


_BUILDERS: Final[Mapping[str, Callable[[Any, Resources], Channel]]] = {
    "jsonl": _jsonl,
    "kafka": _kafka,
    "onsite": _onsite,
    "smtp": _smtp,
    "webhook": _webhook,
}


def pool(route: Route, resources: Resources) -> ChannelPool:
    """The route's adapters as a :class:`~channels.pool.ChannelPool` with its breaker."""
    options = route.options
    policy = options.breaker() if isinstance(options, _Guarded) else BreakerPolicy()
    return ChannelPool(
        lambda: build(route, resources),
        getattr(options, "concurrency", 1),
        CircuitBreaker(policy),
    )


class Router:
    """One pool of adapters per route, its first adapter built up front so a bad
    setup fails before any delivery."""

    def __init__(self, config: ChannelConfig, resources: Resources) -> None:
        self._pools: dict[str, ChannelPool] = {}
        try:
            for key, route in config.routes.items():
                self._pools[key] = pool(route, resources)
        except BaseException:
            self.close()
            raise

    def pool_for(self, channel: str) -> ChannelPool | None:
        """The pool that serves ``channel`` (its own, else the default's, else None)."""
        return self._pools.get(channel) or self._pools.get(DEFAULT_KEY)

    def channel_for(self, channel: str) -> Channel | None:
        """The first adapter of the pool that serves ``channel``."""
        found = self.pool_for(channel)
        return None if found is None else found.primary

    def close(self) -> None:
        for each in self._pools.values():
            each.close()
