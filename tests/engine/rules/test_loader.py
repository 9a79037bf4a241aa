"""The rules loader (SPEC section 2): YAML -> compiled Rules, or FILE:LINE:COL problems."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from engine.errors import RulesError
from engine.events import Event
from engine.rules.loader import load_rules, load_rules_file, summary
from engine.rules.model import Branch, ExitStep, Rules, Send, Wait

# The example of SPEC section 2, verbatim.
SPEC_EXAMPLE = """\
version: 1
timezone: Europe/Istanbul          # for users without profile.timezone
quiet_hours: {start: "22:00", end: "09:00"}   # user's local time
consent: {email: opt_out, sms: opt_in, push: opt_in, whatsapp: opt_in, onsite: opt_out}
caps:                              # rolling windows, across all journeys
  - {channel: any, max: 3, per: 24h}
  - {channel: sms, max: 2, per: 7d}
templates:
  cart_reminder:
    email: {subject: "{{ profile.first_name }}, sepetin seni bekliyor", body: "{{ entry.product_id }} ..."}
    sms: {text: "Sepetindeki urun seni bekliyor"}
journeys:
  - id: abandoned_cart             # [a-z0-9_-]+, unique
    name: Sepette urun birakanlar
    trigger: {event: add_to_cart, if: "event.price >= 20"}
    key: product_id                # optional: one enrollment per (user, entry.product_id)
    audience: "count(purchase, 180d) >= 0"   # optional, checked at entry
    reentry: never                 # never (default) | always | a duration such as 7d
    exit:
      - purchase                   # any purchase ends the enrollment
      - {event: remove_from_cart, if: "event.product_id == entry.product_id"}
    steps:
      - wait: 30m
      - send: email
        template: cart_reminder
        fallback: [sms]            # tried in order when the channel is not allowed
      - wait: 1h
      - if: "engaged('email', 'clicked')"
        then: [exit]
        else:
          - send: push
            template: cart_reminder
      - wait: 1d
      - send: whatsapp
        template: cart_reminder
"""  # noqa: E501 (verbatim)

# A small valid file; tests replace one line of it and expect a problem at a known
# line and column. Line numbers are on the right.
VALID = """\
version: 1
timezone: Europe/Istanbul
quiet_hours: {start: "22:00", end: "09:00"}
consent: {email: opt_out, sms: opt_in}
caps:
  - {channel: any, max: 3, per: 24h}
templates:
  hello:
    email: {subject: "Hi {{ profile.first_name }}", body: "{{ entry.product_id }}"}
    sms: {text: "Hi"}
journeys:
  - id: welcome
    trigger: signup
    steps:
      - wait: 1h
      - send: email
        template: hello
"""
#  1 version          7 templates       13 trigger
#  2 timezone         8 hello           14 steps
#  3 quiet_hours      9 email           15 wait
#  4 consent         10 sms             16 send
#  5 caps            11 journeys        17 template
#  6 - cap           12 - id

MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000


def edit(old: str, new: str, text: str = VALID) -> str:
    """``text`` with its one occurrence of ``old`` replaced."""
    assert text.count(old) == 1, old
    return text.replace(old, new)


def problems(text: str | bytes, filename: str = "r.yaml") -> list[str]:
    with pytest.raises(RulesError) as info:
        load_rules(text, filename)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def journey(steps: str, head: str = "trigger: signup") -> str:
    """A file with one journey; ``steps`` starts on line 6, ``head`` is line 4."""
    return f"version: 1\njourneys:\n  - id: j\n    {head}\n    steps:\n{steps}"


# ---- the SPEC example ---------------------------------------------------------


def test_spec_example_loads_into_the_expected_model() -> None:
    rules = load_rules(SPEC_EXAMPLE, "rules.yaml")
    assert rules.version == 1
    assert rules.timezone == "Europe/Istanbul"
    assert rules.quiet_hours is not None
    assert (rules.quiet_hours.start, rules.quiet_hours.end) == (22 * 60, 9 * 60)
    assert [(c.channel, c.max, c.per_ms) for c in rules.caps] == [
        ("any", 3, DAY),
        ("sms", 2, 7 * DAY),
    ]
    assert set(rules.templates) == {"cart_reminder"}
    assert set(rules.templates["cart_reminder"]) == {"email", "sms"}
    assert [j.id for j in rules.journeys] == ["abandoned_cart"]


def test_spec_example_journey() -> None:
    (j,) = load_rules(SPEC_EXAMPLE).journeys
    assert j.name == "Sepette urun birakanlar"
    assert j.key == "product_id"
    assert j.reentry == "never"
    assert j.trigger.event == "add_to_cart"
    assert j.trigger.cond is not None
    assert j.trigger.cond.source == "event.price >= 20"
    assert j.audience is not None
    assert j.audience.source == "count(purchase, 180d) >= 0"
    assert [(e.event, e.cond.source if e.cond else None) for e in j.exits] == [
        ("purchase", None),
        ("remove_from_cart", "event.product_id == entry.product_id"),
    ]


def test_spec_example_steps_and_paths() -> None:
    (j,) = load_rules(SPEC_EXAMPLE).journeys
    assert [s.path for s in j.steps] == ["0", "1", "2", "3", "4", "5"]
    wait0, send1, wait2, branch, wait4, send5 = j.steps
    assert wait0 == Wait("0", 30 * MINUTE)
    assert send1 == Send("1", "email", "cart_reminder", ("sms",))
    assert wait2 == Wait("2", HOUR)
    assert isinstance(branch, Branch)
    assert branch.cond.source == "engaged('email', 'clicked')"
    assert branch.then == (ExitStep("3.then.0"),)
    assert branch.otherwise == (Send("3.else.0", "push", "cart_reminder"),)
    assert wait4 == Wait("4", DAY)
    assert send5 == Send("5", "whatsapp", "cart_reminder")


def test_spec_example_consent_lists_every_channel_unlisted_ones_opt_in() -> None:
    rules = load_rules(SPEC_EXAMPLE)
    assert rules.consent == {
        "email": "opt_out",
        "sms": "opt_in",
        "push": "opt_in",
        "webpush": "opt_in",
        "whatsapp": "opt_in",
        "telegram": "opt_in",
        "inapp": "opt_in",
        "onsite": "opt_out",
    }


def test_spec_example_templates_render() -> None:
    email = load_rules(SPEC_EXAMPLE).templates["cart_reminder"]["email"]
    entry = Event(event_id="e", type="add_to_cart", ts=0, user_id="u", product_id="sku-9")
    variables = {"profile": {"first_name": "Ayse"}, "entry": entry}
    assert email["subject"](variables) == "Ayse, sepetin seni bekliyor"
    assert email["body"](variables) == "sku-9 ..."
    assert email["subject"]({}) == ", sepetin seni bekliyor"


def test_source_hash_is_sha256_of_the_file_bytes() -> None:
    rules = load_rules(SPEC_EXAMPLE)
    assert rules.source_hash == hashlib.sha256(SPEC_EXAMPLE.encode()).hexdigest()
    assert load_rules(SPEC_EXAMPLE.encode()).source_hash == rules.source_hash
    assert load_rules(SPEC_EXAMPLE + "# edited\n").source_hash != rules.source_hash


def test_summary_line() -> None:
    rules = load_rules(SPEC_EXAMPLE)
    short = rules.source_hash[:12]
    assert summary(rules, "rules.yaml") == (
        f"rules.yaml: OK, 1 journey, 1 template, 2 caps (version {short})"
    )
    assert summary(load_rules(VALID)) == (
        f"OK, 1 journey, 1 template, 1 cap (version {load_rules(VALID).source_hash[:12]})"
    )


def test_load_rules_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(SPEC_EXAMPLE, encoding="utf-8")
    assert load_rules_file(str(path)).source_hash == load_rules(SPEC_EXAMPLE).source_hash
    assert load_rules_file(path).journeys[0].id == "abandoned_cart"
    path.write_text("version: 7\njourneys: []\n", encoding="utf-8")
    with pytest.raises(RulesError) as info:
        load_rules_file(path)
    assert info.value.problems == [
        f"{path}:1:10: version '7' is not supported; this tetik reads `version: 1`"
    ]


def test_load_rules_file_that_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(RulesError, match=r"missing\.yaml: cannot read the rules file"):
        load_rules_file(path)


# ---- defaults and accepted forms ----------------------------------------------


def test_minimal_file_gets_the_defaults() -> None:
    rules = load_rules(journey("      - exit\n"))
    assert rules.timezone == "UTC"
    assert rules.quiet_hours is None
    assert rules.caps == ()
    assert rules.templates == {}
    assert set(rules.consent.values()) == {"opt_in"}
    (j,) = rules.journeys
    assert (j.name, j.key, j.audience, j.reentry, j.exits) == ("", None, None, "never", ())
    assert j.steps == (ExitStep("0"),)


def test_empty_journey_list_is_allowed() -> None:
    assert load_rules("version: 1\njourneys: []\n").journeys == ()


@pytest.mark.parametrize(
    ("start", "end", "minutes"),
    [
        ('"22:00"', '"09:00"', (1320, 540)),  # across midnight
        ("22:00", "09:00", (1320, 540)),  # unquoted: not YAML 1.1's base-60 number
        ('"23:30"', '"0:15"', (1410, 15)),
        ('"08:00"', '"20:00"', (480, 1200)),
        ('"00:00"', '"23:59"', (0, 1439)),
    ],
)
def test_quiet_hours(start: str, end: str, minutes: tuple[int, int]) -> None:
    text = edit('{start: "22:00", end: "09:00"}', f"{{start: {start}, end: {end}}}")
    quiet = load_rules(text).quiet_hours
    assert quiet is not None
    assert (quiet.start, quiet.end) == minutes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("never", "never"),
        ("always", "always"),
        ("7d", 7 * DAY),
        ("12h", 12 * HOUR),
        ("2w", 14 * DAY),
    ],
)
def test_reentry(value: str, expected: object) -> None:
    text = edit("    trigger: signup\n", f"    trigger: signup\n    reentry: {value}\n")
    assert load_rules(text).journeys[0].reentry == expected


@pytest.mark.parametrize(
    "event", ["wishlist_shared", "app:opened", "checkout.started", "newsletter_signup"]
)
def test_custom_event_types_are_accepted(event: str) -> None:
    text = edit("trigger: signup", f"trigger: {event}")
    assert load_rules(text).journeys[0].trigger.event == event


def test_send_without_template_and_template_without_the_channel() -> None:
    steps = "      - send: push\n      - send: webpush\n        template: hello\n"
    text = edit("      - wait: 1h\n      - send: email\n        template: hello\n", steps)
    (j,) = load_rules(text).journeys
    assert j.steps == (Send("0", "push"), Send("1", "webpush", "hello"))


def test_nested_branch_paths() -> None:
    text = journey(
        "      - wait: 5m\n"
        '      - if: "exists(purchase)"\n'
        "        then:\n"
        '          - if: "cart.count > 0"\n'
        "            then: []\n"
        "            else: [{wait: 1d}, exit]\n"
        "        else: [{send: sms, fallback: [whatsapp, push]}]\n"
    )
    (j,) = load_rules(text).journeys
    outer = j.steps[1]
    assert isinstance(outer, Branch)
    inner = outer.then[0]
    assert isinstance(inner, Branch)
    assert inner.path == "1.then.0"
    assert inner.then == ()
    assert inner.otherwise == (Wait("1.then.0.else.0", DAY), ExitStep("1.then.0.else.1"))
    assert outer.otherwise == (Send("1.else.0", "sms", None, ("whatsapp", "push")),)


def test_journeys_keep_file_order() -> None:
    text = "version: 1\njourneys:\n" + "".join(
        f"  - {{id: {name}, trigger: login, steps: [exit]}}\n" for name in ("b", "a", "c-2", "x_1")
    )
    assert [j.id for j in load_rules(text).journeys] == ["b", "a", "c-2", "x_1"]


def test_yaml_anchors_are_followed() -> None:
    text = (
        "version: 1\n"
        "journeys:\n"
        "  - {id: a, trigger: login, steps: &s [{wait: 1h}, {send: sms}]}\n"
        "  - {id: b, trigger: signup, steps: *s}\n"
    )
    a, b = load_rules(text).journeys
    assert a.steps == b.steps == (Wait("0", HOUR), Send("1", "sms"))


# ---- rejections: one problem each, at the offending node -----------------------

REJECTIONS = [
    # the top level
    (
        "version: 1",
        "version: 2",
        "1:10: version '2' is not supported; this tetik reads `version: 1`",
    ),
    (
        "timezone: Europe/Istanbul",
        "timezone: Europe/Istambul",
        "2:11: timezone 'Europe/Istambul' is not an IANA time zone (did you mean "
        "'Europe/Istanbul'?), e.g. Europe/Istanbul",
    ),
    (
        "timezone: Europe/Istanbul",
        "timezon: Europe/Istanbul",
        "2:1: unknown key 'timezon' in the rules file (did you mean 'timezone'?)",
    ),
    (
        "timezone: Europe/Istanbul",
        "colour: blue",
        "2:1: unknown key 'colour' in the rules file; allowed: version, timezone, quiet_hours, "
        "consent, caps, templates, segments, segment_recheck, rfm_refresh, journeys",
    ),
    # quiet hours
    (
        'end: "09:00"',
        'end: "9am"',
        "3:36: quiet_hours end '9am' is not a time of day; write HH:MM, e.g. \"22:00\"",
    ),
    (
        'end: "09:00"',
        'end: "24:00"',
        "3:36: quiet_hours end '24:00' is not a time of day; write HH:MM, e.g. \"22:00\"",
    ),
    (
        'end: "09:00"',
        'end: "22:00"',
        "3:36: quiet_hours start and end are equal; remove quiet_hours for none",
    ),
    (', end: "09:00"', "", "3:14: quiet_hours is missing `end`"),
    (
        'end: "09:00"',
        'end: "09:00", stop: "10:00"',
        "3:45: unknown key 'stop' in quiet_hours; allowed: start, end",
    ),
    # consent
    (
        "email: opt_out",
        "emial: opt_out",
        "4:11: unknown channel 'emial' (did you mean 'email'?); channels: email, sms, push, "
        "webpush, whatsapp, telegram, inapp, onsite",
    ),
    (
        "sms: opt_in}",
        "sms: optin}",
        "4:32: consent 'optin' must be opt_in or opt_out (did you mean 'opt_in'?)",
    ),
    ("sms: opt_in}", "sms: no}", "4:32: consent 'no' must be opt_in or opt_out"),
    # caps
    ("max: 3", "max: 0", "6:25: cap max '0' must be a whole number of at least 1"),
    ("max: 3", "max: 2.5", "6:25: cap max '2.5' must be a whole number of at least 1"),
    (
        "channel: any",
        "channel: ani",
        "6:15: unknown cap channel 'ani' (did you mean 'any'?); channels: any, email, sms, "
        "push, webpush, whatsapp, telegram, inapp, onsite",
    ),
    (
        "per: 24h",
        "per: 24",
        "6:33: cap per: '24' is not a duration; write a whole number and a unit: "
        "30s, 15m, 2h, 7d, 1w, 500ms",
    ),
    ("per: 24h", "per: 0h", "6:33: cap per must be more than 0"),
    (", per: 24h", "", "6:5: a cap is missing `per`"),
    (
        "  - {channel: any, max: 3, per: 24h}",
        "  channel: any",
        "6:3: caps must be a list (`- item` lines or [a, b]), not a mapping",
    ),
    # templates
    (
        "    sms: {text:",
        "    fax: {text:",
        "10:5: unknown channel 'fax'; channels: email, sms, push, webpush, whatsapp, "
        "telegram, inapp, onsite",
    ),
    ('{text: "Hi"}', "{}", "10:10: template hello.sms has no fields; add e.g. `text: ...`"),
    ('{text: "Hi"}', "{text: }", "10:16: template hello.sms.text is empty"),
    (
        '{text: "Hi"}',
        '{"two words": "Hi"}',
        "10:11: template field 'two words' must match [A-Za-z_][A-Za-z0-9_]*",
    ),
    (
        '{text: "Hi"}',
        '{text: "{{ cart.total }"}',
        "10:17: template hello.sms.text: unexpected '}' (template line 1)",
    ),
    (
        '{text: "Hi"}',
        '{text: "{{ profle.first_name }}"}',
        "10:17: template hello.sms.text: unknown variable 'profle' (did you mean 'profile'?); "
        "templates see profile, entry, event, cart, user_id, journey, now, product, "
        "bought_together (template line 1)",
    ),
    (
        '{text: "Hi"}',
        '{text: "{{ cart.total | rond }}"}',
        "10:17: template hello.sms.text: No filter named 'rond' (did you mean 'round'?) "
        "(template line 1)",
    ),
    # journeys
    (
        "  - id: welcome",
        "  - id: Welcome!",
        "12:9: journey id 'Welcome!' must match [a-z0-9_-]+ (lowercase, digits, _ and -)",
    ),
    (
        "  - id: welcome\n",
        "  - name: no id\n",
        "12:5: journey #0 is missing `id`",
    ),
    (
        "    trigger: signup\n",
        "",
        "12:5: journey welcome is missing `trigger`",
    ),
    (
        "    trigger: signup\n",
        "    trigger: signup\n    trigers: login\n",
        "14:5: unknown key 'trigers' in a journey (did you mean 'trigger'?)",
    ),
    (
        "trigger: signup",
        "trigger: sign_up",
        "13:14: unknown event type 'sign_up' (did you mean 'signup'?)",
    ),
    (
        "trigger: signup",
        "trigger: Purchase",
        "13:14: 'Purchase' is not an event type (did you mean 'purchase'?); "
        "custom event types match [a-z][a-z0-9_.:-]{0,63}",
    ),
    (
        "trigger: signup",
        "trigger: {evnt: signup}",
        (
            "13:14: trigger is missing `event`",
            "13:15: unknown key 'evnt' in trigger (did you mean 'event'?)",
        ),
    ),
    (
        "trigger: signup",
        "trigger: [signup]",
        "13:14: trigger must be an event type or {event: TYPE, if: EXPR}",
    ),
    (
        "    trigger: signup\n",
        "    trigger: signup\n    key: product\n",
        "14:10: key 'product' is not an event field (did you mean 'product_id'?); use one of "
        "event_id, type, ts, user_id, anon_id, product_id, category, price, quantity, query, "
        "order_id, revenue, channel, granted, action_id, kind, stock, name, url, image, "
        "old_price, drop_pct, via",
    ),
    (
        "    trigger: signup\n",
        "    trigger: signup\n    reentry: nevr\n",
        "14:14: reentry 'nevr' must be never, always or a duration such as 7d "
        "(did you mean 'never'?)",
    ),
    (
        "    trigger: signup\n",
        "    trigger: signup\n    reentry: 0d\n",
        "14:14: reentry '0d' must be never, always or a duration such as 7d",
    ),
    (
        "    trigger: signup\n",
        "    trigger: signup\n    exit: purchase\n",
        "14:11: exit must be a list (`- item` lines or [a, b]), not a value",
    ),
    (
        "    trigger: signup\n",
        "    trigger: signup\n    exit: [login, purchse]\n",
        "14:19: unknown event type 'purchse' (did you mean 'purchase'?)",
    ),
    (
        "    trigger: signup\n",
        '    trigger: signup\n    exit: [{if: "true"}]\n',
        "14:12: an exit is missing `event`",
    ),
    # steps
    (
        "      - wait: 1h",
        "      - wait: 1",
        "15:15: wait: '1' is not a duration; write a whole number and a unit: "
        "30s, 15m, 2h, 7d, 1w, 500ms",
    ),
    ("      - wait: 1h", "      - wait: 0s", "15:15: wait must be more than 0"),
    ("      - wait: 1h", "      - wiat: 1h", "15:9: unknown step 'wiat' (did you mean 'wait'?)"),
    (
        "      - wait: 1h",
        "      - delay: 1h",
        "15:9: unknown step 'delay'; a step needs `wait`, `send` or `if`",
    ),
    (
        "      - wait: 1h",
        "      - exit: true",
        "15:9: write the exit step as the bare string `- exit`",
    ),
    (
        "      - wait: 1h",
        "      - exti",
        "15:9: unknown step 'exti' (did you mean 'exit'?); a step is `wait: DURATION`, "
        "`send: CHANNEL`, `if: EXPR` or the string `exit`",
    ),
    (
        "      - wait: 1h\n",
        "      - wait: 1h\n        send: sms\n",
        "16:9: a step is `wait` or `send`, not both; start each step with `-`",
    ),
    (
        "        template: hello",
        "        templte: hello",
        "17:9: unknown key 'templte' in a send step (did you mean 'template'?)",
    ),
    (
        "        template: hello",
        "        template: helo",
        "17:19: unknown template 'helo' (did you mean 'hello'?)",
    ),
    (
        "        template: hello",
        "        template: bye",
        "17:19: unknown template 'bye'; templates defined: hello",
    ),
    (
        "      - send: email",
        "      - send: e-mail",
        "16:15: unknown channel 'e-mail' (did you mean 'email'?); channels: email, sms, push, "
        "webpush, whatsapp, telegram, inapp, onsite",
    ),
    (
        "        template: hello",
        "        template: hello\n        fallback: [sms, smsx]",
        "18:25: unknown fallback channel 'smsx' (did you mean 'sms'?); channels: email, sms, "
        "push, webpush, whatsapp, telegram, inapp, onsite",
    ),
    (
        "        template: hello",
        "        template: hello\n        fallback: [sms, email]",
        "18:25: fallback repeats channel 'email'",
    ),
]


@pytest.mark.parametrize(("old", "new", "expected"), REJECTIONS)
def test_rejection_points_at_the_node(old: str, new: str, expected: str | tuple[str, ...]) -> None:
    wanted = (expected,) if isinstance(expected, str) else expected
    assert problems(edit(old, new)) == [f"r.yaml:{e}" for e in wanted]


def test_bad_template_id_also_leaves_its_sends_unresolved() -> None:
    assert problems(edit("  hello:", "  Hello:")) == [
        "r.yaml:8:3: template id 'Hello' must match [a-z0-9_-]+",
        "r.yaml:17:19: unknown template 'hello'; templates defined: none",
    ]


def test_empty_template_text_is_allowed() -> None:
    text = edit('{text: "Hi"}', '{text: ""}')
    assert load_rules(text).templates["hello"]["sms"]["text"]({}) == ""


def test_journey_without_steps() -> None:
    assert problems(journey("      []\n")) == ["r.yaml:6:7: journey j has no steps"]
    assert problems("version: 1\njourneys:\n  - {id: j, trigger: login}\n") == [
        "r.yaml:3:5: journey j is missing `steps`"
    ]


def test_if_step_needs_then() -> None:
    assert problems(journey('      - if: "true"\n        else: [exit]\n')) == [
        "r.yaml:6:9: journey j step 0 is missing `then`"
    ]


def test_if_step_checks_all_its_parts() -> None:
    steps = '      - if: "true"\n        else: [wiat]\n        els: [exit]\n'
    assert problems(journey(steps)) == [
        "r.yaml:6:9: journey j step 0 is missing `then`",
        "r.yaml:7:16: unknown step 'wiat' (did you mean 'wait'?); a step is `wait: DURATION`, "
        "`send: CHANNEL`, `if: EXPR` or the string `exit`",
        "r.yaml:8:9: unknown key 'els' in an if step (did you mean 'else'?)",
    ]


def test_duplicate_journey_ids() -> None:
    text = (
        "version: 1\n"
        "journeys:\n"
        "  - {id: a, trigger: login, steps: [exit]}\n"
        "  - {id: a, trigger: login, steps: [exit]}\n"
    )
    assert problems(text) == ["r.yaml:4:10: duplicate journey id 'a' (first on line 3)"]


def test_missing_version_and_journeys() -> None:
    assert problems("timezone: UTC\n") == [
        "r.yaml:1:1: the rules file is missing `journeys`",
        "r.yaml:1:1: the rules file is missing `version`",
    ]


def test_file_must_be_a_mapping() -> None:
    assert problems("- version: 1\n") == [
        "r.yaml:1:1: the rules file must be a mapping (`key: value` lines), not a list"
    ]


def test_empty_file() -> None:
    assert problems("") == ["r.yaml:1:1: the rules file is empty; start with `version: 1`"]
    assert problems("# only a comment\n") == [
        "r.yaml:1:1: the rules file is empty; start with `version: 1`"
    ]


def test_invalid_utf8_is_reported_at_its_byte() -> None:
    assert problems(b"version: 1\nname: caf\xe9\n") == [
        "r.yaml:2:10: not valid UTF-8 (invalid continuation byte)"
    ]


# ---- YAML-level problems ------------------------------------------------------


def test_yaml_syntax_error_position() -> None:
    text = edit("    trigger: signup\n", "    trigger: [signup\n")
    assert problems(text) == [
        "r.yaml:14:10: YAML syntax error: while parsing a flow sequence: "
        "expected ',' or ']', but got ':'"
    ]


def test_yaml_tab_indentation_error() -> None:
    (problem,) = problems("version: 1\njourneys:\n\t- id: x\n")
    assert problem.startswith("r.yaml:3:1: YAML syntax error: ")
    assert "found character '\\t' that cannot start any token" in problem


def test_duplicate_keys() -> None:
    text = edit("    trigger: signup\n", "    trigger: signup\n    trigger: login\n")
    assert problems(text) == ["r.yaml:14:5: duplicate key 'trigger' (first on line 13)"]


def test_duplicate_keys_top_level_and_in_flow_mappings() -> None:
    text = edit("version: 1\n", "version: 1\nversion: 1\n")
    text = edit("{email: opt_out, sms: opt_in}", "{email: opt_out, email: opt_in}", text)
    assert problems(text) == [
        "r.yaml:2:1: duplicate key 'version' (first on line 1)",
        "r.yaml:5:27: duplicate key 'email' (first on line 5)",
    ]


def test_recursive_alias_is_an_error_not_a_hang() -> None:
    text = journey('      &s [{if: "true", then: *s}]\n')
    started = time.monotonic()
    (problem,) = problems(text)
    assert problem == "r.yaml:6:7: steps nest deeper than 16 levels"
    assert time.monotonic() - started < 5


def test_alias_bomb_is_bounded() -> None:
    lines = ["version: 1", "x0: &a0 [{wait: 1h}, {wait: 1h}, {wait: 1h}, {wait: 1h}]"]
    lines += [
        f'x{i}: &a{i} [{{if: "true", then: *a{i - 1}, else: *a{i - 1}}}] ' for i in range(1, 16)
    ]
    lines += ["journeys:", "  - {id: j, trigger: login, steps: *a15}"]
    started = time.monotonic()
    found = problems("\n".join(lines) + "\n")
    assert "r.yaml:1:1: the rules file has more than 100,000 steps (YAML aliases count)" in found
    assert time.monotonic() - started < 5


# ---- several problems at once ---------------------------------------------------


def test_several_problems_reported_in_file_order() -> None:
    text = """\
version: 1
timezone: Mars/Olympus
caps:
  - {channel: sms, max: -1, per: 1d}
journeys:
  - id: a
    trigger: add_to_carts
    reentry: weekly
    steps:
      - wait: soon
      - send: emial
        template: nope
        fallback: [sms, sms]
      - if: "true"
        then:
          - wiat: 1h
        else: [done]
  - id: a
    trigger: login
    steps: [exit]
"""
    assert problems(text) == [
        "r.yaml:2:11: timezone 'Mars/Olympus' is not an IANA time zone, e.g. Europe/Istanbul",
        "r.yaml:4:25: cap max '-1' must be a whole number of at least 1",
        "r.yaml:7:14: unknown event type 'add_to_carts' (did you mean 'add_to_cart'?)",
        "r.yaml:8:14: reentry 'weekly' must be never, always or a duration such as 7d",
        "r.yaml:10:15: wait: 'soon' is not a duration; write a whole number and a unit: "
        "30s, 15m, 2h, 7d, 1w, 500ms",
        "r.yaml:11:15: unknown channel 'emial' (did you mean 'email'?); channels: email, sms, "
        "push, webpush, whatsapp, telegram, inapp, onsite",
        "r.yaml:12:19: unknown template 'nope'; templates defined: none",
        "r.yaml:13:25: fallback repeats channel 'sms'",
        "r.yaml:16:13: unknown step 'wiat' (did you mean 'wait'?)",
        "r.yaml:17:16: unknown step 'done'; a step is `wait: DURATION`, `send: CHANNEL`, "
        "`if: EXPR` or the string `exit`",
        "r.yaml:18:9: duplicate journey id 'a' (first on line 6)",
    ]


def test_problems_use_the_given_filename() -> None:
    assert problems("version: 3\njourneys: []\n", "conf/rules.yaml") == [
        "conf/rules.yaml:1:10: version '3' is not supported; this tetik reads `version: 1`"
    ]


def test_result_is_rules() -> None:
    assert isinstance(load_rules(VALID), Rules)


# ---- expressions: compiled at load, errors at the offending character -------------


def one_problem(text: str) -> str:
    (problem,) = problems(text)
    return problem


def test_expression_error_in_a_flow_mapping_points_at_the_token() -> None:
    text = edit("trigger: signup", 'trigger: {event: add_to_cart, if: "event.prize >= 20"}')
    problem = one_problem(text)
    # line 13: `    trigger: {event: add_to_cart, if: "event.prize >= 20"}`; `prize` is column 46
    assert problem.startswith("r.yaml:13:46: journey welcome trigger.if: ")
    assert "prize" in problem
    assert "did you mean 'price'?" in problem


def test_expression_error_in_a_plain_scalar() -> None:
    text = edit(
        "    trigger: signup\n", "    trigger: signup\n    audience: count(purchse, 30d) > 1\n"
    )
    problem = one_problem(text)
    assert problem.startswith("r.yaml:14:21: journey welcome audience: ")
    assert "did you mean 'purchase'?" in problem


def test_expression_error_after_single_quote_escapes() -> None:
    exit_ = "    exit: [{event: purchase, if: 'event.category == ''a'' and evnt.x'}]\n"
    problem = one_problem(edit("    trigger: signup\n", "    trigger: signup\n" + exit_))
    # the quote is column 34; the value's `evnt` (offset 26) is written 2 characters later
    assert problem.startswith("r.yaml:14:63: journey welcome exit 0.if: ")
    assert "'evnt'" in problem


def test_expression_error_after_double_quote_escapes() -> None:
    exit_ = '    exit: [login, {event: purchase, if: "event.category == \\"a\\" and evnt.x"}]\n'
    problem = one_problem(edit("    trigger: signup\n", "    trigger: signup\n" + exit_))
    # the quote is column 41; `\"a\"` takes 2 more characters than its value `"a"`
    assert problem.startswith("r.yaml:14:70: journey welcome exit 1.if: ")
    assert "'evnt'" in problem


def test_expression_error_at_the_end_of_the_text() -> None:
    problem = one_problem(journey("      - if: event.price >\n        then: [exit]\n"))
    assert problem.startswith("r.yaml:6:26: journey j step 0.if: ")


def test_expression_error_in_a_block_scalar_points_at_the_node() -> None:
    steps = "      - if: |\n          cart.total > 1 and\n          evnt.x\n        then: [exit]\n"
    problem = one_problem(journey(steps))
    assert problem.startswith("r.yaml:6:13: journey j step 0.if: ")
    assert "'evnt'" in problem


def test_expression_error_in_a_nested_step() -> None:
    steps = (
        '      - if: "true"\n'
        "        then:\n"
        "          - wait: 1h\n"
        "          - if: \"cart.count >= 'x'\"\n"
        "            then: [exit]\n"
    )
    problem = one_problem(journey(steps))
    assert problem.startswith("r.yaml:9:32: journey j step 0.then.1.if: ")  # at 'x'


def test_condition_must_be_boolean() -> None:
    problem = one_problem(journey('      - if: "cart.total + 1"\n        then: [exit]\n'))
    assert problem.startswith("r.yaml:6:14: journey j step 0.if: ")
    assert "condition" in problem


@pytest.mark.parametrize(
    ("head", "where"),
    [
        ('trigger: {event: login, if: "entry.price > 1"}', "trigger.if"),
        ('trigger: login\n    audience: "entry.price > 1"', "audience"),
    ],
)
def test_entry_is_not_available_before_enrollment(head: str, where: str) -> None:
    problem = one_problem(journey("      - exit\n", head))
    assert f": journey j {where}: " in problem
    assert "'entry'" in problem


def test_entry_is_available_in_exit_and_step_conditions() -> None:
    head = (
        'trigger: {event: add_to_cart, if: "event.price >= 20"}\n'
        '    audience: "count(purchase, 180d) == 0 and not in_cart(event.product_id)"\n'
        '    exit: [{event: remove_from_cart, if: "event.product_id == entry.product_id"}]'
    )
    steps = '      - if: "entry.price > 100 and since(purchase) > 30d"\n        then: [exit]\n'
    (j,) = load_rules(journey(steps, head)).journeys
    assert j.exits[0].cond is not None
    assert j.exits[0].cond.source == "event.product_id == entry.product_id"


def test_several_expression_errors_at_once() -> None:
    head = (
        'trigger: {event: login, if: "evnt.x"}\n'
        '    audience: "count(purchase) >"\n'
        '    exit: [{event: purchase, if: "entry.price >"}]'
    )
    found = problems(journey('      - if: "nope(1)"\n        then: [exit]\n', head))
    assert [p.split(": journey j ")[0] for p in found] == [
        "r.yaml:4:34",
        "r.yaml:5:33",
        "r.yaml:6:48",
        "r.yaml:8:14",
    ]


# ---- templates inside a rules file ---------------------------------------------------


def test_template_error_in_a_block_scalar_points_at_its_line() -> None:
    block = (
        "    sms:\n"
        "      text: |\n"
        "        Merhaba {{ profile.first_name }},\n"
        "        {% if cart.count > 1 %}{{ cart.count }} urun{% endfi %}\n"
    )
    (problem,) = problems(edit('    sms: {text: "Hi"}\n', block))
    assert problem.startswith("r.yaml:13:9: template hello.sms.text: ")
    assert problem.endswith("(template line 2)")


def test_template_error_in_a_folded_scalar_points_at_the_node() -> None:
    block = "    sms:\n      text: >\n        Merhaba\n        {{ cart.count }\n"
    (problem,) = problems(edit('    sms: {text: "Hi"}\n', block))
    assert problem == "r.yaml:11:13: template hello.sms.text: unexpected '}' (template line 1)"


def test_templates_in_a_rules_file_render_safely() -> None:
    fields = (
        '{text: "{{ \'\'.__class__.__mro__ }}{{ profile.a.b.c }}ok", calc: "{{ cart.total / 0 }}"}'
    )
    sms = load_rules(edit('{text: "Hi"}', fields)).templates["hello"]["sms"]
    variables = {"profile": {}, "cart": {"total": 3}}
    assert sms["text"](variables) == "ok"  # no Python internals, missing values empty
    assert sms["calc"](variables) == ""  # a division by zero empties the field


def test_control_character_is_reported_at_its_position() -> None:
    assert problems("version: 1\nname: a\x07b\n") == [
        "r.yaml:2:8: YAML: special characters are not allowed (character #x0007)"
    ]


def test_utf8_bom_and_crlf_line_ends_are_accepted() -> None:
    text = b"\xef\xbb\xbf" + SPEC_EXAMPLE.replace("\n", "\r\n").encode()
    assert load_rules(text).journeys[0].id == "abandoned_cart"
    crlf = VALID.replace("\n", "\r\n").replace("trigger: signup", "trigger: sigup")
    assert problems(crlf) == ["r.yaml:13:14: unknown event type 'sigup' (did you mean 'signup'?)"]


def test_every_problem_is_one_line_even_with_a_line_break_in_a_key() -> None:
    """Found by `make fuzz`: YAML keys may hold \\x85 or \\x1e, which split a message."""
    from engine.errors import RulesError
    from engine.rules.loader import load_rules

    with pytest.raises(RulesError) as info:
        load_rules('version: 1\ntemplates:\n  version: {" \\x85": null}\n', "rules.yaml")
    assert info.value.problems
    for problem in info.value.problems:
        assert len(problem.splitlines()) == 1, problem
