"""``tetik catalog load``: a product feed becomes product_update events (SPEC section 10).

Every event written is read back with the engine's own decoder; the replays use
the catalog core (engine/catalog.py) through ``tetik replay``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from cli.main import main
from engine.events import Event, decode_event
from flows.kafka.producer import identity_of

TS = 1_714_982_400_000  # 2024-05-06T08:00:00Z
CSV = """\
product_id,price,stock,name,url,category,color,zip
p1,100,5,Running Shoe,https://shop.example/p1,shoes/running,red,01234
p2,10.5,0,Sock,,apparel/socks,,
p3, 7 ,12 ,  Cap  ,,,blue,
"""


def load(*args: str) -> int:
    return main(["catalog", "load", *args])


def written(path: Path) -> list[Event]:
    return [decode_event(line) for line in path.read_bytes().splitlines()]


def feed(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_rows_become_product_updates_with_typed_numbers_and_props(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert load(str(feed(tmp_path, "f.csv", CSV)), "--out", str(out), "--ts", str(TS)) == 0
    p1, p2, p3 = written(out)
    assert (p1.type, p1.ts, p1.user_id, p1.anon_id) == ("product_update", TS, None, None)
    assert (p1.product_id, p1.price, p1.stock, p1.name) == ("p1", 100.0, 5, "Running Shoe")
    assert (p1.url, p1.category) == ("https://shop.example/p1", "shoes/running")
    assert p1.props == {"color": "red", "zip": "01234"}  # text stays text
    raw = orjson.loads(out.read_bytes().splitlines()[1])
    assert isinstance(raw["price"], float)
    assert isinstance(raw["stock"], int)
    assert (p2.price, p2.stock, p2.url, p2.props) == (10.5, 0, None, None)  # empty cells: absent
    assert (p3.price, p3.stock, p3.name, p3.props) == (7.0, 12, "Cap", {"color": "blue"})


def test_csv_with_semicolons_and_a_bom(tmp_path: Path) -> None:
    text = "\ufeffproduct_id;price;stock\np1;3.5;2\n"
    out = tmp_path / "out.jsonl"
    assert load(str(feed(tmp_path, "f.csv", text)), "--out", str(out), "--ts", str(TS)) == 0
    [event] = written(out)
    assert (event.product_id, event.price, event.stock) == ("p1", 3.5, 2)


def test_jsonl_products_and_ready_events(tmp_path: Path) -> None:
    lines = [
        {"product_id": "p1", "price": "19.90", "stock": "3", "name": "Mug", "brand": "acme"},
        {
            "event_id": "own-1",
            "type": "product_update",
            "ts": "2024-05-06T11:00:00+03:00",
            "product_id": "p2",
            "stock": 0,
            "props": {"size": "L"},
        },
    ]
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    out = tmp_path / "out.jsonl"
    assert load(str(path), "--out", str(out), "--ts", "2024-05-06T08:00:00Z") == 0
    mug, p2 = written(out)
    assert (mug.price, mug.stock, mug.ts, mug.props) == (19.9, 3, TS, {"brand": "acme"})
    assert mug.event_id.startswith("cat-")
    assert (p2.event_id, p2.ts, p2.stock, p2.props) == ("own-1", TS, 0, {"size": "L"})


def test_bad_rows_are_reported_with_their_line_and_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        "product_id,price,stock,name\n"
        "p1,1,1,ok\n"
        "p2,abc,1,bad price\n"
        "\n"
        'p3,2,1,"two\nlines"\n'
        "p4,2,2.5,half a unit\n"
        ",2,1,no id\n"
        "p5,-3,1,negative\n"
        "p6,1,1,x,one cell too many\n"
        "p7,2,1,ok\n"
    )
    out = tmp_path / "out.jsonl"
    path = feed(tmp_path, "f.csv", text)
    assert load(str(path), "--out", str(out), "--ts", str(TS)) == 1  # some rows skipped
    err = capsys.readouterr().err.splitlines()
    reported = [line.split(": ", 1)[0] for line in err if line.startswith(str(path))]
    assert reported == [f"{path}:{n}" for n in (3, 7, 8, 9, 10)]
    assert "price 'abc' is not a number" in err[0]
    assert "stock '2.5' is not a whole number" in err[1]
    assert err[-1].endswith("; 5 bad rows skipped (above)")
    assert [e.product_id for e in written(out)] == ["p1", "p3", "p7"]
    assert written(out)[1].name == "two\nlines"


def test_header_case_empty_updates_and_number_forms(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "Product_ID,Price,Stock,Colour\np1,5,1,Red\np2,,,\np3,5.0,1,Red\n"
    out = tmp_path / "out.jsonl"
    assert load(str(feed(tmp_path, "f.csv", text)), "--out", str(out), "--ts", str(TS)) == 1
    assert "f.csv:3: nothing to update" in capsys.readouterr().err
    p1, p3 = written(out)
    assert (p1.price, p1.stock, p1.props) == (5.0, 1, {"Colour": "Red"})  # props as written
    assert p3.event_id != p1.event_id  # another product
    same = feed(
        tmp_path, "g.jsonl", '{"product_id": "p1", "price": 5, "stock": 1, "Colour": "Red"}\n'
    )
    again = tmp_path / "again.jsonl"
    assert load(str(same), "--out", str(again), "--ts", str(TS)) == 0
    assert written(again)[0].event_id == p1.event_id  # 5 and "5" are one price: one id


def test_progress_is_plain_lines_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    import flows.jobs.catalog_load as catalog_load

    monkeypatch.setattr(catalog_load, "PROGRESS_EVERY_S", 0.0)
    stream = io.StringIO()
    progress = catalog_load.Progress("catalog load f.csv", stream)
    for rows in range(1, 3001):
        progress.tick(rows)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert [line.split(" rows")[0] for line in lines] == [
        f"tetik: catalog load f.csv: {n:,}" for n in (1000, 2000, 3000)
    ]
    assert "\r" not in stream.getvalue()


def test_jsonl_bad_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = feed(
        tmp_path,
        "f.jsonl",
        '{"product_id": "p1", "user_id": "u1"}\n'
        "[1]\n"
        "{oops\n"
        '{"product_id": "p2", "type": "view_product"}\n'
        '{"product_id": "p3", "ts": 9999999999999999, "stock": 1}\n'
        '{"product_id": "p4", "props": {"a": 1}, "a": 2}\n'
        '{"product_id": "p5", "price": 1}\n',
    )
    out = tmp_path / "out.jsonl"
    assert load(str(path), "--out", str(out), "--ts", str(TS)) == 1
    err = capsys.readouterr().err.splitlines()
    expected = ["carries no shopper", "not a JSON object", "not valid JSON",
                "is not product_update", "after 2100", "given twice"]  # fmt: skip
    assert len(err) == len(expected) + 1  # and the summary
    for n, (line, words) in enumerate(zip(err, expected, strict=False), start=1):
        assert line.startswith(f"{path}:{n}: "), line
        assert words in line, (words, line)
    assert [e.product_id for e in written(out)] == ["p5"]


def test_ids_are_derived_from_content_and_ts(tmp_path: Path) -> None:
    path = str(feed(tmp_path, "f.csv", CSV))
    outs = [tmp_path / f"{n}.jsonl" for n in range(4)]
    assert load(path, "--out", str(outs[0]), "--ts", str(TS)) == 0
    assert load(path, "--out", str(outs[1]), "--ts", "2024-05-06T11:00:00+03:00") == 0
    assert load(path, "--out", str(outs[2]), "--ts", str(TS + 1)) == 0
    changed = feed(tmp_path, "g.csv", CSV.replace("p1,100,", "p1,99,"))
    assert load(str(changed), "--out", str(outs[3]), "--ts", str(TS)) == 0
    ids = [[e.event_id for e in written(out)] for out in outs]
    assert outs[0].read_bytes() == outs[1].read_bytes()  # the same instant, the same events
    assert len(set(ids[0])) == 3
    assert not set(ids[0]) & set(ids[2])  # another ts: other ids
    assert ids[3][0] != ids[0][0]  # only the changed row's id moves
    assert ids[3][1:] == ids[0][1:]


def test_rows_without_ts_and_no_ts_given_take_the_time_of_the_load(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    before = time.time_ns() // 1_000_000
    assert load(str(feed(tmp_path, "f.csv", CSV)), "--out", str(out)) == 0
    stamps = {e.ts for e in written(out)}
    assert len(stamps) == 1
    assert before <= stamps.pop() <= time.time_ns() // 1_000_000


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("missing.csv", None, "no such file"),
        ("feed.xlsx", "x", "a product feed is .jsonl"),
        ("feed.csv", "id,price\n1,2\n", "no product_id column (found: id, price)"),
        ("feed.csv", "product_id,a,a\n1,2,3\n", "names column 'a' twice"),
    ],
)
def test_a_file_that_is_no_feed_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str | None, words: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    out = tmp_path / "out.jsonl"
    assert load(str(path), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"tetik catalog load: {path}: ")
    assert words in err
    assert not out.exists()  # nothing written before the file was found usable


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(feed(tmp_path, "f.csv", CSV))
    assert load(path, "--ts", "yesterday", "--out", str(tmp_path / "o")) == 2
    assert "--ts: ts 'yesterday'" in capsys.readouterr().err
    assert load(path, "--rate", "10", "--out", str(tmp_path / "o")) == 2
    assert "--rate paces sending to Kafka" in capsys.readouterr().err


def test_producer_keys_a_product_update_by_its_product_id() -> None:
    update = b'{"event_id":"c1","type":"product_update","ts":1,"product_id":"p9"}'
    assert identity_of(update) == b"p9"
    view = b'{"event_id":"v","type":"view_product","ts":1,"anon_id":"a1","product_id":"p9"}'
    assert identity_of(view) == b"a1"


RULES = """\
version: 1
consent: {email: opt_out}
templates:
  drop:
    email: {subject: "{{ product.name }}: {{ entry.old_price }} -> {{ entry.price }}"}
  back:
    email: {subject: "{{ product.name }} is back"}
journeys:
  - id: drops
    trigger: price_drop
    steps: [{send: email, template: drop}]
  - id: back
    trigger: back_in_stock
    steps: [{send: email, template: back}]
"""


def shopper(event_id: str, ts: int, product: str, price: float) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "view_product",
        "ts": ts,
        "user_id": "u1",
        "product_id": product,
        "price": price,
    }


def test_out_replays_with_the_catalog_core(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Load, shop, load a lower price and a restock twice: one drop and one restock action."""
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    assert load(str(feed(tmp_path, "f.csv", CSV)), "--out", str(first), "--ts", str(TS)) == 0
    later = CSV.replace("p1,100,5", "p1,80,5").replace("p2,10.5,0", "p2,10.5,4")
    later_feed = str(feed(tmp_path, "g.csv", later))
    assert load(later_feed, "--out", str(second), "--ts", str(TS + 7_200_000)) == 0
    views = [shopper("v1", TS + 60_000, "p1", 100.0), shopper("v2", TS + 60_000, "p2", 10.5)]
    log = tmp_path / "log.jsonl"
    log.write_bytes(
        first.read_bytes()
        + b"".join(orjson.dumps(v) + b"\n" for v in views)
        + second.read_bytes()
        + second.read_bytes()  # the same feed loaded twice: the duplicates change nothing
    )
    rules = feed(tmp_path, "r.yaml", RULES)
    actions = tmp_path / "actions.jsonl"
    assert main(["replay", "--rules", str(rules), "--events", str(log), "--out", str(actions)]) == 0
    assert "derived from product updates" in capsys.readouterr().err
    sent = [orjson.loads(line) for line in actions.read_bytes().splitlines()]
    subjects = sorted(a["content"]["subject"] for a in sent)
    assert subjects == ["Running Shoe: 100.0 -> 80.0", "Sock is back"]


def _read_keyed(bootstrap: str, topic: str, expect: int) -> list[tuple[int, bytes, bytes]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "catalog-load-test"})
    found: list[tuple[int, bytes, bytes]] = []
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        deadline = time.monotonic() + 30
        while len(found) < expect and time.monotonic() < deadline:
            for msg in consumer.consume(100, 0.2):
                if msg.error() is None:
                    found.append((msg.partition() or 0, msg.key() or b"", msg.value() or b""))
    finally:
        consumer.close()
    return found


@pytest.mark.integration
def test_load_sends_to_the_events_topic_keyed_by_product(
    tmp_path: Path, kafka_bootstrap: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETIK_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("TETIK_EVENTS_TOPIC", f"{unique}.events")
    monkeypatch.setenv("TETIK_EVENTS_PARTITIONS", "4")
    for name in ("DLQ", "ACTIONS", "ACTIONS_DLQ"):
        monkeypatch.setenv(f"TETIK_{name}_TOPIC", f"{unique}.{name.lower()}")
    rows = "".join(f"p{n % 5},{n}.5,{n}\n" for n in range(40))  # 8 updates of each product
    path = str(feed(tmp_path, "f.csv", "product_id,price,stock\n" + rows))
    assert load(path, "--ts", str(TS)) == 0
    out = tmp_path / "out.jsonl"
    assert load(path, "--out", str(out), "--ts", str(TS)) == 0
    records = _read_keyed(kafka_bootstrap, f"{unique}.events", 40)
    assert sorted(value for _, _, value in records) == sorted(out.read_bytes().splitlines())
    partitions: dict[bytes, set[int]] = {}
    stocks: dict[bytes, list[int | None]] = {}
    for partition, key, value in records:
        event = decode_event(value)
        assert key == str(event.product_id).encode()
        partitions.setdefault(key, set()).add(partition)
        stocks.setdefault(key, []).append(event.stock)
    assert all(len(used) == 1 for used in partitions.values())  # a product keeps its partition
    assert len(partitions) == 5
    for key, seen in stocks.items():  # in order within its partition: the feed's order
        assert seen == sorted(n for n in seen if n is not None), key
