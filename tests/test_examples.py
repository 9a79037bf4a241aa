"""Each example rules file replayed over its event log gives exactly the expected actions.

The expectations are worked out by hand from the rules (times are Istanbul,
UTC+3, no daylight saving); each comment says which rule produces the line.
"""

from __future__ import annotations

import json
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
    here = Path(__file__).parent  # the catalog examples' tests: test_catalog_examples.py
    tests = "".join(test.read_text() for test in here.glob("test_*examples.py"))
    assert f"def test_{path.stem}(" in tests


def test_the_demo_journeys_cover_the_example_scenarios_with_short_waits() -> None:
    rules = load_rules_file(EXAMPLES / "demo" / "journeys.yaml")
    ids = {journey.id for journey in rules.journeys}
    assert {"abandoned_cart", "browse_abandonment", "search_no_purchase"} <= ids
    assert {"favorite_on_sale", "price_drop_viewed", "back_in_stock", "cross_sell"} <= ids
    # welcome and the price drop in the cart are the demo's own
    assert ids <= {path.stem for path in EXAMPLES.glob("*.yaml")} | {"welcome", "price_drop_cart"}
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


# -- Black Friday segments and broadcasts (SPEC sections 8-9, DOMAIN.md) --------------
# One shopper per case (lines of black_friday.events.jsonl in brackets; Istanbul times):
# - u_loyal1 [12-14, 18, 20, 25, 28]: 5 orders of 600 in 2024 -> loyal; push consent.
# - u_loyal2 [15-17, 19, 22, 26, 33]: 5 of 800, lives in New York -> loyal; push consent.
# - u_freq [21, 23, 27, 29, 34, 61]: 6 orders of 100 since June: 6 in 180d, 4 in 90d,
#   2 in 30d (frequent_*), not loyal (basket 100); 2 at 20% off, 1 at 10% (discount_10/20).
# - u_recent2 [41, 44, 56]: clicked an email 11-04, bought 11-05 (email_activated) and
#   11-10, at 35% and 30% off (discount_*); 2 orders in 30d: frequent_1m, not 3m (> 2).
# - u_shoes [35]: shoes 700 + 2 x 200 and beauty 50 on 10-20 -> 1,100 on shoes (items).
# - u_shoes_recent [58, 59]: shoes 1,200 on 11-12: excluded as a buyer of the last 7
#   days; clicked an SMS the day before (sms_activated).
# - u_shoes_old [24]: shoes 1,500 on 07-01: 6 months only.
# - u_mixed [36]: an order of 2,300 of which shoes 300: no shoes segment.
# - u_dormant [1, 4, 7, 9]: 4 orders in 2023, one on Black Friday -> dormant, bf_2023.
# - u_dormant_back [2, 5, 8, 11, 45]: 4 in 2023, then 11-05 2024: dormant at 11-01 only.
# - u_bf_late [3, 6, 10]: 3 in 2023 (dormant needs > 3), last on 11-28 (the range ends
#   before it).
# - u_reg [37], u_reg_fav [30-32], u_reg_cart [53, 55], u_reg_views [39, 60, 62-64]:
#   signed up, never bought; a favorite / a cart line / 3 views in 7 days narrow them.
#   u_reg_fav's coupon copy (10-02) is too old for onsite_engaged; u_reg_views's
#   spin_wheel is recent.
# - u_email_late [38, 43, 46, 47]: clicked 11-01, bought 5 days later (not within 3d);
#   only "opened" the 11-05 email; copied a coupon 11-06 (onsite_engaged).
# - u_push [54, 57]: bought 8h after a push click. u_sms [40, 42]: bought before the click.
# - a_guest [48, 49]: bought logged out (guest_buyers). a_visitor [50]: only looked.
#   a_linked [51, 52]: bought logged out, then logged in as u_linked: not a guest.
# RFM over the 16 buyers at 11-15 12:00: frequency boundaries [1, 1, 2, 5] orders (f=1 for
# one order, 3 for two, 4 for 3-5, 5 for 6); recency boundaries at the last purchases of
# u_loyal1 (09-10), u_mixed (10-25), u_email_late (11-06) and u_recent2 (11-10 12:00).

BF_AT = at("2024-11-15T12:00:00+03:00")


def bf_segments(tmp_path: Path, moment: int) -> dict[str, list[str]]:
    """Members per segment, from ``tetik segments --at`` (flows.jobs.segment_report)."""
    from flows.jobs.segment_report import run_segments

    out = tmp_path / "segments.jsonl"
    events = str(EXAMPLES / "black_friday.events.jsonl")
    assert run_segments(str(EXAMPLES / "black_friday.yaml"), events, at=moment, out=str(out)) == 0
    members: dict[str, list[str]] = {}
    for line in out.read_text().splitlines():
        row = json.loads(line)
        for name in row["segments"]:
            members.setdefault(name, []).append(row["user_id"])
    return members


def test_black_friday_segments(tmp_path: Path) -> None:
    assert bf_segments(tmp_path, BF_AT) == {
        "loyal": ["u_loyal1", "u_loyal2"],
        "frequent_6m": ["u_freq"],
        "frequent_3m": ["u_freq"],
        "frequent_1m": ["u_freq", "u_recent2"],
        "shoes_1m": ["u_shoes"],
        "shoes_3m": ["u_shoes"],
        "shoes_6m": ["u_shoes", "u_shoes_old"],
        "discount_10": ["u_freq", "u_recent2"],
        "discount_20": ["u_freq", "u_recent2"],
        "discount_30": ["u_recent2"],
        "bf_2023": ["u_dormant"],
        "dormant": ["u_dormant"],  # u_dormant_back bought on 11-05
        "never_bought": ["u_reg", "u_reg_cart", "u_reg_fav", "u_reg_views"],
        "never_bought_favorites": ["u_reg_fav"],
        "never_bought_cart": ["u_reg_cart"],
        "never_bought_viewers": ["u_reg_views"],
        "champions": ["u_freq"],  # r 5, f 5
        "at_risk": ["u_bf_late", "u_dormant", "u_loyal1", "u_loyal2"],  # r <= 2, 3+ orders
        "new_customers": ["a_guest", "u_linked", "u_push", "u_shoes_recent"],  # r >= 4, 1 order
        "hibernating": ["u_shoes_old"],  # r 1, 1 order
        "email_activated": ["u_recent2"],
        "push_activated": ["u_push"],
        "sms_activated": ["u_shoes_recent"],
        "onsite_engaged": ["u_email_late", "u_reg_views"],
        "guest_buyers": ["a_guest"],
    }


def test_black_friday_dormant_at_2024_11_01(tmp_path: Path) -> None:
    # The guide's date: 2023's Jan-Sep come from the monthly buckets, the rest from the window.
    found = bf_segments(tmp_path, at("2024-11-01T00:00:00+03:00"))
    assert found["dormant"] == ["u_dormant", "u_dormant_back"]


def test_black_friday() -> None:
    engine = Engine(load_rules_file(EXAMPLES / "black_friday.yaml"))
    lines = (EXAMPLES / "black_friday.events.jsonl").read_bytes().splitlines()
    actions = replay(engine, lines, until=at("2024-11-23T00:00:00+03:00"))
    assert [_row(a) for a in actions] == [
        # the dormant at 2024-11-01 10:00 Istanbul (u_dormant_back had not bought again yet)
        (at("2024-11-01T10:00:00+03:00"), "u_dormant", "0", "email", "winback", "sent"),
        (at("2024-11-01T10:00:00+03:00"), "u_dormant_back", "0", "email", "winback", "sent"),
        # the loyal at 08:30 in their own zone; quiet until 09:00
        (at("2024-11-20T09:00:00+03:00"), "u_loyal1", "0", "email", "early_access", "sent"),
        (at("2024-11-20T09:00:00-05:00"), "u_loyal2", "0", "email", "early_access", "sent"),
        # 14h later is 23:00 local, quiet: the push goes out at 09:00 the next morning
        (at("2024-11-21T09:00:00+03:00"), "u_loyal1", "2", "push", "early_access", "sent"),
        (at("2024-11-21T09:00:00-05:00"), "u_loyal2", "2", "push", "early_access", "sent"),
    ]
    assert actions[3].content == {"subject": "John, Black Friday senin icin erken basladi"}


def test_black_friday_warns_only_about_last_years_weekend() -> None:
    # After 2024-12-28 the 2023 weekend is older than the purchase window and no whole
    # month fits in it: a true warning. The `it.ts` ranges of *_activated stay inside
    # the window (no warning), the month-start ranges of dormant are exact.
    rules = load_rules_file(EXAMPLES / "black_friday.yaml")
    assert [w.split(": warning: ")[0].rsplit(":", 2)[1:] for w in rules.warnings] == [
        ["36", "38"],
        ["36", "58"],
    ]
    assert all("segment bf_2023: between's" in w for w in rules.warnings)


# -- experiments: a send-time test (SPEC section 11) ---------------------------------
# Arms by the stable hash of (journey, user): u2 and u5 morning, u4 and u8 evening;
# u1 is in the 10 % holdout. 10:00 and 19:00 are each shopper's local time: u5 is
# in Berlin (UTC+2 in May), the others in the rules' Istanbul (UTC+3).


def test_send_time_test() -> None:
    engine = Engine(load_rules_file(EXAMPLES / "send_time_test.yaml"))
    engine.measures = []
    lines = (EXAMPLES / "send_time_test.events.jsonl").read_bytes().splitlines()
    rows = [
        (a.at, a.user_id, a.step, a.status, a.reason, a.variant)
        for a in replay(engine, lines, drain=True)
    ]
    assert rows == [
        (day(0, "10:00"), "u1", "0.morning.1", "suppressed", "holdout", "holdout"),
        (day(0, "10:00"), "u2", "0.morning.1", "sent", None, "morning"),  # signed up 09:30
        (day(0, "19:00"), "u8", "0.evening.1", "sent", None, "evening"),
        (at("2024-05-07T10:00:00+02:00"), "u5", "0.morning.1", "sent", None, "morning"),
        (day(1, "19:00"), "u4", "0.evening.1", "sent", None, "evening"),  # signed up 20:00
    ]
    converted = [(m.user_id, m.variant, m.at) for m in engine.measures if m.kind == "converted"]
    assert converted == [("u8", "evening", day(1, "12:00"))]  # u2 bought after 3 days
