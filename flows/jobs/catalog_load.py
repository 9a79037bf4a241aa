"""``tetik catalog load FILE``: a product feed becomes ``product_update`` events (SPEC 10).

Rules of this interface:

* The feed is JSONL (``.jsonl``, ``.ndjson``: one JSON object per line, a
  product or an already built ``product_update`` event) or CSV (``.csv``: a
  header row naming the columns, ``product_id`` among them; ``,``, ``;`` or
  tab separated, whichever the header uses most; UTF-8, a BOM is allowed).
  Any other file type, a missing file or a CSV header without ``product_id``
  is a :class:`~engine.errors.TetikError`: one line saying what is wrong and
  what to do, before anything is sent.
* A row's ``product_id``, ``price``, ``stock``, ``name``, ``url``, ``image``,
  ``category`` and ``props`` become the event's fields; ``ts``, ``event_id``
  and ``type`` (which must be ``product_update``) are the event's own; every
  other key or column goes to ``props`` (a ``props`` column holds a JSON
  object; a key given twice is a bad row). CSV headers of these names match
  in any case (``Price``). A row naming ``user_id`` or ``anon_id`` is a bad
  row (a product feed carries no shopper), and so is a row with nothing to
  update (only a ``product_id``). Empty CSV cells are absent fields.
  ``price`` is read as a number and ``stock`` as a whole number, from CSV
  text and from JSON strings alike; other CSV cells, ``props`` included, stay
  text (no guessing: ``01234`` stays ``01234``).
* A row's ``ts`` (epoch ms or RFC 3339) wins; else the ``ts`` given to the
  load (``--ts``); else the moment the load started, the same for every row.
* ``event_id`` is the row's own when it has one; else ``cat-`` and a
  blake2b digest of the event's other fields (``ts`` in epoch ms included),
  so loading the same feed again with the same ``ts`` gives the same ids and
  the engine drops the repeats.
* Every event is checked with :func:`engine.events.decode_event` and
  :func:`engine.events.check_not_future` (against the load's start), as the
  engine will check it. A bad row is reported as ``FILE:LINE: reason`` and
  skipped; the load goes on and ends with the count of bad rows (exit 1 when
  there were any, 0 otherwise).
* Without ``out`` the events go to the events topic (created first, like
  every job does), keyed by ``product_id``
  (:func:`flows.kafka.producer.identity_of`), so one product's updates stay
  in order on one partition; ``rate`` > 0 paces them. With ``out`` they go to
  a JSONL file, one event per line, for ``tetik replay``. Progress goes to
  stderr (:class:`Progress`): the rows read, redrawn in place on a terminal,
  a plain line every few seconds elsewhere.
"""

from __future__ import annotations

import csv
import hashlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, TextIO

import orjson

from engine.errors import ConfigError, InvalidEvent, TetikError
from engine.events import PRODUCT_UPDATE, check_not_future, decode_event, encode_event, parse_ts
from flows.jobs.progress import Line, Rate
from flows.kafka.producer import identity_of, produce_records
from flows.kafka.topics import ensure_topics
from flows.report import say
from flows.settings import from_env

JSONL_SUFFIXES: Final = (".jsonl", ".ndjson")
CSV_SUFFIXES: Final = (".csv",)
FIELDS: Final = ("product_id", "price", "stock", "name", "url", "image", "category")
OWN: Final = ("event_id", "type", "ts", "props")  # the event's own keys, not product fields
SHOPPER: Final = ("user_id", "anon_id")
DELIMITERS: Final = (",", ";", "\t")
PROGRESS_EVERY_S: Final = 2.0

Row = tuple[int, dict[str, Any]]  # (line number in the file, the row's keys and values)
OnBadRow = Callable[[int, str], None]


class BadRow(ValueError):
    """A row that makes no valid ``product_update``; the message is the reason."""


def parse_when(text: str) -> int:
    """``--ts``: epoch milliseconds or an RFC 3339 time with offset."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    return parse_ts(text)


def feed_kind(path: str) -> str:
    """``jsonl`` or ``csv`` from the file's name; a TetikError for anything else."""
    if not Path(path).is_file():
        raise TetikError(f"{path}: no such file; give the path of the product feed")
    suffix = Path(path).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        kind = "jsonl"
    elif suffix in CSV_SUFFIXES:
        kind = "csv"
    else:
        raise TetikError(
            f"{path}: a product feed is .jsonl (one JSON product per line) or .csv "
            f"(a header row with product_id), not {suffix or 'a file without a suffix'!r}; "
            "rename or convert the file"
        )
    return kind


def feed_rows(path: str, on_bad: OnBadRow) -> Iterator[Row]:
    """The feed's rows in file order; unreadable lines go to ``on_bad``.

    The file's type and a CSV header are checked at once, before any row is read.
    """
    if feed_kind(path) == "jsonl":
        return _jsonl_rows(path, on_bad)
    columns, delimiter = csv_header(path)
    return _csv_rows(path, columns, delimiter, on_bad)


def _jsonl_rows(path: str, on_bad: OnBadRow) -> Iterator[Row]:
    with Path(path).open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                on_bad(number, f"not valid JSON: {exc}")
                continue
            if not isinstance(doc, dict):
                on_bad(number, 'not a JSON object; a product is {"product_id": ..., "price": ...}')
                continue
            yield number, doc


def _open_text(path: str) -> TextIO:
    """The CSV as text; bytes that are not UTF-8 make their row bad, not the file."""
    return Path(path).open(encoding="utf-8-sig", errors="surrogateescape", newline="")


def csv_header(path: str) -> tuple[list[str], str]:
    """The CSV's column names and delimiter; a TetikError when they make no feed."""
    with _open_text(path) as handle:
        line = handle.readline()
    delimiter = max(DELIMITERS, key=line.count)
    columns = [_column(name) for name in next(csv.reader([line], delimiter=delimiter), [])]
    _check_header(path, columns)
    return columns, delimiter


def _csv_rows(path: str, columns: list[str], delimiter: str, on_bad: OnBadRow) -> Iterator[Row]:
    with _open_text(path) as handle:
        handle.readline()  # the header
        reader = csv.reader(handle, delimiter=delimiter)
        before = 1  # lines before the row: the header, then what the reader read
        for cells in reader:
            number, before = before + 1, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) > len(columns):
                on_bad(number, f"{len(cells)} cells for {len(columns)} columns in the header")
                continue
            pairs = zip(columns, cells, strict=False)  # a short row: its last fields are absent
            yield number, {name: cell.strip() for name, cell in pairs if name and cell.strip()}


def _column(header: str) -> str:
    """A header cell: the event's names in any case (``Price``), others as written."""
    name = header.strip()
    return name.lower() if name.lower() in (*FIELDS, *OWN, *SHOPPER) else name


def _check_header(path: str, columns: list[str]) -> None:
    if "product_id" not in columns:
        found = ", ".join(c for c in columns if c) or "nothing"
        raise TetikError(
            f"{path}: the header row has no product_id column (found: {found[:200]}); "
            "the first line of a CSV feed names the columns, product_id among them"
        )
    seen: set[str] = set()
    for name in filter(None, columns):  # a column without a name is left out
        if name in seen:
            raise TetikError(f"{path}: the header row names column {name!r} twice; rename one")
        seen.add(name)


def to_event(row: dict[str, Any], default_ts: int) -> dict[str, Any]:
    """The ``product_update`` of one row (not yet validated); raises BadRow."""
    for name in SHOPPER:
        if name in row:
            raise BadRow(f"{name} in a product feed; a product_update carries no shopper")
    kind = row.get("type", PRODUCT_UPDATE)
    if kind != PRODUCT_UPDATE:
        raise BadRow(f"type {kind!r} is not product_update; a catalog feed holds products only")
    event: dict[str, Any] = {"type": PRODUCT_UPDATE, "ts": _ts(row.get("ts"), default_ts)}
    for name in FIELDS:
        if (value := row.get(name)) is not None:
            event[name] = value
    if "price" in event:
        event["price"] = _number(event["price"])
    if "stock" in event:
        event["stock"] = _whole(event["stock"])
    props = _props(row)
    if props:
        event["props"] = props
    if "product_id" in event and not set(event) - {"type", "ts", "product_id"}:
        raise BadRow(f"nothing to update: give any of {', '.join(FIELDS[1:])} or props")
    event["event_id"] = row.get("event_id") or content_id(event)
    return event


def content_id(event: dict[str, Any]) -> str:
    """``cat-`` and a digest of everything in ``event`` but its id (see the module rules)."""
    body = {name: value for name, value in event.items() if name != "event_id"}
    try:
        canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise BadRow(f"holds text that is not UTF-8 ({exc}); save the feed as UTF-8") from None
    return "cat-" + hashlib.blake2b(canonical, digest_size=16).hexdigest()


def _ts(value: Any, default_ts: int) -> int:
    if value is None:
        return default_ts
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadRow(f"ts {value!r} is not epoch milliseconds or an RFC 3339 time")
    if isinstance(value, int):
        return value
    try:
        return parse_when(value)
    except ValueError as exc:
        raise BadRow(str(exc)) from None


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise BadRow(f"price {value!r} is not a number")
    if isinstance(value, (int, float)):
        return float(value)  # 100 and 100.0 are one price, with one id
    try:
        number = float(str(value))
    except ValueError:
        raise BadRow(f"price {value!r} is not a number (write 12.5, with a dot)") from None
    if not math.isfinite(number):
        raise BadRow(f"price {value!r} is not a finite number")
    return number


def _whole(value: Any) -> int:
    if isinstance(value, bool):
        raise BadRow(f"stock {value!r} is not a whole number")
    if isinstance(value, int):
        return value
    try:
        number = float(str(value)) if not isinstance(value, float) else value
    except ValueError:
        raise BadRow(f"stock {value!r} is not a whole number") from None
    if not math.isfinite(number) or not number.is_integer():
        raise BadRow(f"stock {value!r} is not a whole number (units in stock, e.g. 12)")
    return int(number)


def _props(row: dict[str, Any]) -> dict[str, Any]:
    given = row.get("props")
    if isinstance(given, str):  # a CSV column: a JSON object
        try:
            given = orjson.loads(given)
        except orjson.JSONDecodeError:
            raise BadRow(
                f'props {given[:60]!r} is not a JSON object ({{"color": "red"}})'
            ) from None
    if given is not None and not isinstance(given, dict):
        raise BadRow(f"props {given!r} is not an object of name: value")
    props = dict(given or {})
    for name, value in row.items():
        if name in FIELDS or name in OWN:
            continue
        if name in props:
            raise BadRow(f"props.{name} is given twice (in props and as its own key)")
        props[name] = value
    return props


def validate(event: dict[str, Any], received: int) -> bytes:
    """The event as the engine reads it (compact JSON); raises InvalidEvent or BadRow."""
    try:
        raw = orjson.dumps(event)
    except orjson.JSONEncodeError as exc:
        raise BadRow(f"holds text that is not UTF-8 ({exc}); save the feed as UTF-8") from None
    decoded = decode_event(raw)
    check_not_future(decoded, received)
    return encode_event(decoded)


class Progress:
    """Rows read so far on stderr (:class:`flows.jobs.progress.Line`): live on a
    terminal, a plain line every :data:`PROGRESS_EVERY_S` seconds elsewhere; the
    rate is over the rows since the last line."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.line = Line(stream, every_s=PROGRESS_EVERY_S)
        self.rate = Rate()

    def tick(self, rows: int) -> None:
        if rows % 1000 or not self.line.due():
            return
        self.line.update(f"tetik: {self.label}: {rows:,} rows ({self.rate.read(rows):,.0f}/s)")

    def close(self) -> None:
        self.line.close()


class Load:
    """One load's counts, and its converter from rows to event bytes."""

    def __init__(self, path: str, default_ts: int, received: int, err: TextIO) -> None:
        self.path = path
        self.default_ts = default_ts
        self.received = received
        self.err = err
        self.rows = 0
        self.bad = 0
        self.progress = Progress(f"catalog load {path}", err)

    def report(self, number: int, reason: str) -> None:
        self.bad += 1
        print(f"{self.path}:{number}: {reason}", file=self.err, flush=True)

    def events(self, rows: Iterator[Row]) -> Iterator[bytes]:
        """The valid events of the feed's ``rows``, in file order (bad rows reported)."""
        for number, row in rows:
            self.rows += 1
            self.progress.tick(self.rows)
            try:
                yield validate(to_event(row, self.default_ts), self.received)
            except (BadRow, InvalidEvent) as exc:
                self.report(number, exc.reason if isinstance(exc, InvalidEvent) else str(exc))
        self.progress.close()


def catalog_events(
    path: str, *, ts: int | None = None, err: TextIO | None = None
) -> tuple[Load, Iterator[bytes]]:
    """The feed's events; the :class:`Load` counts rows and bad rows as they are read.

    Raises TetikError at once for a file that is not a feed (see the module rules).
    """
    received = time.time_ns() // 1_000_000
    load = Load(path, received if ts is None else ts, received, err or sys.stderr)
    return load, load.events(feed_rows(path, load.report))


def load_catalog(
    path: str, *, out: str | None = None, rate: float = 0.0, ts: int | None = None
) -> int:
    """``tetik catalog load``: exit 0, or 1 when bad rows were skipped."""
    load, events = catalog_events(path, ts=ts)
    if out is not None:
        sent, where = _write(events, out), out
    else:
        sent, where = _send(events, rate)
    rows = "row" if load.bad == 1 else "rows"
    skipped = f"; {load.bad:,} bad {rows} skipped (above)" if load.bad else ""
    say(f"catalog load: {sent:,} product_update events -> {where}{skipped}")
    return 1 if load.bad else 0


def _write(events: Iterator[bytes], out: str) -> int:
    written = 0
    try:
        with Path(out).open("wb") as handle:
            for value in events:
                handle.write(value + b"\n")
                written += 1
    except OSError as exc:
        raise TetikError(f"{exc.filename}: {exc.strerror}; check the path") from None
    return written


def _send(events: Iterator[bytes], rate: float) -> tuple[int, str]:
    settings = from_env()
    if not settings.kafka_bootstrap:
        raise ConfigError(
            "set TETIK_KAFKA_BOOTSTRAP to the Kafka the engine reads from "
            "(or write a file with --out)"
        )
    ensure_topics(
        settings.kafka_bootstrap, settings.topic_layout(), timeout=settings.kafka_timeout_s
    )
    records = ((identity_of(value), value) for value in events)
    sent = produce_records(settings.kafka_bootstrap, settings.events_topic, records, rate=rate)
    return sent, settings.events_topic
