"""Each example rules file replayed over its event log gives exactly the expected actions.

The expectations are worked out by hand from the rules (times are Istanbul,
UTC+3, no daylight saving); each comment says which rule produces the line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.actions import Action, action_id
from engine.events import parse_ts
from engine.journeys import Engine
from engine.replay import ReplayStats, replay
from engine.rules.loader import load_rules_file

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
Row = tuple[int, str, str, str, str | None, str]  # at, user, step, channel, template, status


def run(name: str, include_suppressed: bool = False) -> list[Row]:
    engine = Engine(load_rules_file(EXAMPLES / f"{name}.yaml"))
    lines = (EXAMPLES / f"{name}.events.jsonl").read_bytes().splitlines()
    actions = replay(engine, lines, drain=True)
    return [_row(a) for a in actions if include_suppressed or a.status == "sent"]


def _row(action: Action) -> Row:
    return (action.at, action.user_id, action.step, action.channel, action.template, action.status)


def at(text: str) -> int:
    return parse_ts(text)


def day(d: int, hm: str) -> int:
    return at(f"2024-05-{6 + d:02d}T{hm}:00+03:00")


def test_abandoned_cart() -> None:
    assert run("abandoned_cart") == [
        (day(0, "10:30"), "u1", "1", "email", "cart_reminder", "sent"),  # 30m after the add
        (day(0, "10:30"), "u2", "1", "email", "cart_reminder", "sent"),
        (day(0, "10:30"), "u6", "1", "email", "cart_reminder", "sent"),  # p6 only: p7 removed
        (day(0, "11:30"), "u1", "3.else.0", "push", "cart_reminder", "sent"),  # not clicked
        (day(1, "09:00"), "u3", "1", "email", "cart_reminder", "sent"),  # 22:20 was quiet
        (day(1, "11:30"), "u1", "5", "whatsapp", "cart_discount", "sent"),
    ]  # u2 clicked -> exit at the branch; u4 below 20; u5 bought first


def test_abandoned_cart_suppressed_sends_do_not_stop_the_journey() -> None:
    suppressed = [r for r in run("abandoned_cart", include_suppressed=True) if r[5] != "sent"]
    assert suppressed == [
        (day(0, "11:30"), "u6", "3.else.0", "push", "cart_reminder", "suppressed"),
        (day(1, "10:00"), "u3", "3.else.0", "push", "cart_reminder", "suppressed"),
        (day(1, "11:30"), "u6", "5", "whatsapp", "cart_discount", "suppressed"),
        (day(2, "10:00"), "u3", "5", "whatsapp", "cart_discount", "suppressed"),
    ]


def test_abandoned_cart_renders_the_template_with_profile_and_entry() -> None:
    engine = Engine(load_rules_file(EXAMPLES / "abandoned_cart.yaml"))
    lines = (EXAMPLES / "abandoned_cart.events.jsonl").read_bytes().splitlines()
    first = next(a for a in replay(engine, lines, drain=True) if a.user_id == "u1")
    assert first.content == {
        "subject": "Ayse, sepetin seni bekliyor",
        "body": "p1 hala sepetinde.",
    }


def test_browse_abandonment() -> None:
    assert run("browse_abandonment") == [
        (day(0, "17:00"), "u1", "1", "email", "still_thinking", "sent"),  # push not allowed
        (day(1, "17:00"), "u1", "3", "email", "similar_30", "sent"),
    ]  # u2 added to cart (exit); u3 only 2 views; u4 bought within 24h


def test_search_no_purchase() -> None:
    assert run("search_no_purchase") == [
        (day(0, "11:00"), "u1", "1.then.0", "email", "search_reminder", "sent"),
        (day(0, "11:00"), "u3", "1.then.0", "email", "search_reminder", "sent"),  # once
    ]  # u2 bought within the hour


def test_favorite_added() -> None:
    assert run("favorite_added") == [
        (day(1, "10:00"), "u1", "1.then.0", "push", "favorite_sale", "sent"),
        (day(1, "10:00"), "u4", "1.then.0", "email", "favorite_sale", "sent"),  # fallback
        (day(3, "10:00"), "u1", "1.then.2", "email", "favorite_bonus", "sent"),
        (day(3, "10:00"), "u4", "1.then.2", "email", "favorite_bonus", "sent"),
    ]  # u2 removed the favorite; u3 put it in the cart


def test_welcome_series() -> None:
    assert run("welcome_series") == [
        (day(0, "10:00"), "u1", "0", "email", "welcome_1", "sent"),
        (day(0, "10:00"), "u2", "0", "email", "welcome_1", "sent"),
        (day(3, "10:00"), "u1", "2", "email", "welcome_2", "sent"),
        (day(7, "10:00"), "u1", "4", "email", "welcome_3", "sent"),
    ]  # u2 bought on day 2; u3 had bought before signing up (audience)


def test_winback() -> None:
    assert run("winback") == [
        (at("2024-08-04T10:00:00+03:00"), "u1", "1", "email", "winback_email", "sent"),
        (at("2024-08-18T10:00:00+03:00"), "u1", "3", "sms", "winback_sms", "sent"),
        # u2 bought again on 07-05: the old enrollment exits, a new one starts
        (at("2024-10-03T10:00:00+03:00"), "u2", "1", "email", "winback_email", "sent"),
    ]  # u2 has no SMS consent


def test_post_purchase() -> None:
    assert run("post_purchase") == [
        (day(7, "10:00"), "u1", "1", "email", "review_request", "sent"),
        (day(8, "11:00"), "u1", "1", "email", "review_request", "sent"),  # second order
        (day(10, "10:00"), "u1", "3", "email", "cross_sell", "sent"),  # push not allowed
        (day(11, "11:00"), "u1", "3", "email", "cross_sell", "sent"),
    ]  # u2's order has revenue 0


def test_birthday() -> None:
    assert run("birthday") == [
        (day(0, "09:00"), "u1", "0", "email", "birthday_coupon", "sent"),  # 08:00 was quiet
        (day(0, "10:00"), "u2", "0", "email", "birthday_coupon", "sent"),
        (day(6, "09:00"), "u1", "2.then.0", "email", "birthday_reminder", "sent"),
    ]  # u2 bought within the 6 days


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_has_a_log_and_a_test(path: Path) -> None:
    assert (EXAMPLES / f"{path.stem}.events.jsonl").exists()
    assert f"def test_{path.stem}(" in Path(__file__).read_text()


def test_the_demo_journeys_cover_the_example_scenarios_with_short_waits() -> None:
    rules = load_rules_file(EXAMPLES / "demo" / "journeys.yaml")
    ids = {journey.id for journey in rules.journeys}
    assert {"abandoned_cart", "browse_abandonment", "search_no_purchase"} <= ids
    assert ids <= {path.stem for path in EXAMPLES.glob("*.yaml")} | {"welcome"}
    waits = [step.ms for j in rules.journeys for step in j.steps if hasattr(step, "ms")]
    assert waits
    assert max(waits) <= 60_000  # seconds, so a one-minute demo shows every step


# -- identity: login merge (SPEC section 7) ------------------------------------------
# a1 carts, logs in as u1 and buys (no reminder); a2 gives push consent and a
# name while logged out, then logs in as u2 (both reminders, with the name);
# a3's first reminder fires before its signup as u3, whose welcome counts the
# merged cart; u5 and its device a5 both hold a p6 cart enrollment (u5's is
# older and stays); lm-9 comes twice (merges nothing twice); u4 logs in on
# a1's device (a conflict: a1 stays u1's, so its later cart goes to u1).


def test_login_merge() -> None:
    assert run("login_merge") == [
        (day(0, "10:20"), "u5", "1", "email", "cart_reminder", "sent"),  # 30m after 09:50
        (day(0, "10:30"), "a3", "1", "email", "cart_reminder", "sent"),  # before the signup
        (day(0, "10:30"), "u2", "1", "email", "cart_reminder", "sent"),  # a2's, moved
        (day(0, "10:40"), "u3", "0", "email", "welcome", "sent"),
        (day(0, "11:30"), "u2", "3", "push", "cart_reminder", "sent"),  # a2's push consent
        (day(0, "12:35"), "u1", "1", "email", "cart_reminder", "sent"),  # a1's p5 -> u1
    ]  # u1 bought p1 after the login: no reminder for a1 or u1


def test_login_merge_suppressed() -> None:
    suppressed = [r for r in run("login_merge", include_suppressed=True) if r[5] != "sent"]
    assert suppressed == [  # no push consent for u5, u3 (nor a3 before), u1
        (day(0, "11:20"), "u5", "3", "push", "cart_reminder", "suppressed"),
        (day(0, "11:30"), "u3", "3", "push", "cart_reminder", "suppressed"),
        (day(0, "13:35"), "u1", "3", "push", "cart_reminder", "suppressed"),
    ]


def test_login_merge_ids_content_and_counts() -> None:
    engine = Engine(load_rules_file(EXAMPLES / "login_merge.yaml"))
    lines = (EXAMPLES / "login_merge.events.jsonl").read_bytes().splitlines()
    stats = ReplayStats()
    found = {
        (a.user_id, a.journey, a.step): a for a in replay(engine, lines, drain=True, stats=stats)
    }
    moved = found["u2", "abandoned_cart", "1"]
    assert moved.action_id == action_id("a2", "abandoned_cart", "p2\x1f1", "1")
    assert moved.content == {
        "subject": "Deniz, sepetin seni bekliyor",
        "body": "p2 hala sepetinde.",
    }
    assert found["u3", "welcome", "0"].content == {
        "subject": "Hos geldin",
        "body": "Sepetinde 1 urun var.",
    }
    assert (stats.merged, stats.identity_conflicts, stats.ended) == (4, 1, {"merged": 1})
    assert stats.users == 5  # u1..u5; the device ids merged into their users
