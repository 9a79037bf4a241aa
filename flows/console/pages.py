"""The console's pages: each reads what it shows, then renders a Jinja2 template.

Rules of this interface:

* ``GET /`` the journeys of the active rules version as graphs
  (:mod:`flows.console.graph`) with their live counts (:mod:`flows.console.counts`).
* ``GET /versions`` every version (who, when, activations), ``?diff=N`` the diff
  of version N against the one before; ``POST /versions/push`` (``text`` and
  ``filename``, or an uploaded ``file``; ``note``) pushes as the console user: a rejected file is
  shown again (422) with each ``FILE:LINE:COL`` problem under its line, and
  nothing changes; ``POST /versions/rollback`` (``version``, empty for the
  previous one) re-activates a version as the console user.
* ``GET|POST /backtest`` runs a draft (:mod:`flows.console.backtest`) over the
  events topic's latest N records (``source=topic``, ``count``), its last M
  minutes (``source=minutes``, ``minutes``) or JSONL (``source=paste``:
  an uploaded ``events_file``, else the pasted ``events``).
* ``GET /segments`` segment member counts (as ``tetik segments --live
  --count``) and the experiment results of the live report.
* ``GET /shopper?id=ID`` one shopper (:mod:`flows.console.shopper`).
* The active version's compiled rules are kept per version number: a page
  compiles a version once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any
from urllib.parse import quote

import jinja2
from confluent_kafka import KafkaException

from engine.errors import ConfigError, RulesError
from engine.rules.loader import load_rules
from engine.rules.model import Rules
from flows.console import backtest, counts, versions
from flows.console.graph import journey_graph
from flows.console.http import Answer, Request, redirect
from flows.console.shopper import lookup
from flows.jobs.segments_live import count_lines
from flows.retry import RedisClient
from flows.settings import Settings
from flows.stores.rules import RollbackError, RulesStore, RulesVersion

ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("flows.console", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
MAX_COUNT = backtest.MAX_EVENTS


@dataclass(frozen=True)
class Visit:
    """Who is looking, and the form token their forms carry ("" for a bearer)."""

    user: str
    csrf: str


class Pages:
    """Every page (see the module rules)."""

    def __init__(self, settings: Settings, client: RedisClient) -> None:
        self.settings = settings
        self.client = client
        self.keys = settings.keys
        self.store = RulesStore(client, settings.prefix)  # type: ignore[arg-type]
        self._compiled: dict[int, Rules] = {}
        self._lock = threading.Lock()
        self._routes: dict[tuple[str, str], Callable[[Request, Visit], Answer]] = {
            ("GET", "/"): self.journeys,
            ("GET", "/versions"): self.versions,
            ("POST", "/versions/push"): self.push,
            ("POST", "/versions/rollback"): self.rollback,
            ("GET", "/backtest"): self.backtest,
            ("POST", "/backtest"): self.backtest,
            ("GET", "/segments"): self.segments,
            ("GET", "/shopper"): self.shopper,
        }

    def render(self, name: str, **values: Any) -> bytes:
        return ENV.get_template(name).render(**values).encode()

    def dispatch(self, request: Request, visit: Visit) -> Answer:
        page = self._routes.get((request.method, request.path))
        if page is not None:
            return page(request, visit)
        if any(path == request.path for _, path in self._routes):
            return Answer(405, b"method not allowed\n")
        return Answer(404, self.render("error.html", visit=visit, message="no such page"))

    def active(self) -> tuple[RulesVersion | None, Rules | None]:
        """The active version and its compiled rules (compiled once per version)."""
        version = self.store.active()
        if version is None:
            return None, None
        with self._lock:
            rules = self._compiled.get(version.version)
            if rules is None:
                rules = load_rules(version.text.encode(), version.filename)
                self._compiled[version.version] = rules
        return version, rules

    # -- pages ---------------------------------------------------------------

    def journeys(self, request: Request, visit: Visit) -> Answer:
        version, rules = self.active()
        graphs = counts.by_step(counts.read(self.client, self.keys))
        drawn = [
            (journey, journey_graph(journey, graphs.get(journey.id)))
            for journey in (rules.journeys if rules else ())
        ]
        body = self.render(
            "journeys.html",
            visit=visit,
            version=version,
            drawn=drawn,
        )
        return Answer(200, body)

    def versions(self, request: Request, visit: Visit, **extra: Any) -> Answer:
        shown = _int(request.query.get("diff"))
        rows = versions.listing(self.store, utc_text)
        if shown is None and rows:
            shown = next((row.version.version for row in rows if row.active), None)
        active = self.store.active()
        values: dict[str, Any] = {
            "visit": visit,
            "rows": rows,
            "shown": shown,
            "diff": versions.diff(self.store, shown) if shown else [],
            "draft": active.text if active else "",
            "filename": active.filename if active else "rules.yaml",
            "message": request.query.get("message", ""),
            "lines": None,
            "loose": [],
            "check": self.store.check_history().line(),
            **extra,
        }
        return Answer(int(extra.get("status", 200)), self.render("versions.html", **values))

    def push(self, request: Request, visit: Visit) -> Answer:
        form = request.form()
        text, filename = form.get("text", ""), form.get("filename", "").strip() or "rules.yaml"
        data = text.encode()
        upload = request.files().get("file")
        if upload is not None:  # the file's own bytes: the hash `tetik rules validate` prints
            data, filename = upload.data, PurePath(upload.filename).name or filename
            text = data.decode("utf-8", "replace")
        try:
            version, created = self.store.push_or_keep(
                data, filename, visit.user, form.get("note", "").strip()
            )
        except RulesError as exc:
            lines, loose = versions.annotate(text, exc.problems)
            active = self.store.active_version()
            stays = "no version is active" if active is None else f"version {active} stays active"
            return self.versions(
                request,
                visit,
                status=422,
                lines=lines,
                loose=loose,
                draft=text,
                filename=filename,
                message=f"rejected: {len(exc.problems)} problem(s); {stays}",
            )
        said = (
            f"pushed version {version.version} ({version.hash}) by {version.who}"
            if created
            else f"unchanged: that text is the active version {version.version}"
        )
        return redirect(f"/versions?diff={version.version}&message={_q(said)}")

    def rollback(self, request: Request, visit: Visit) -> Answer:
        target = _int(request.form().get("version"))
        before = self.store.active_version()
        try:
            now = self.store.rollback(target, visit.user)
        except RollbackError as exc:
            return redirect(f"/versions?message={_q(f'rollback refused: {exc}')}")
        said = f"version {now.version} is active again (was {before}), by {visit.user}"
        return redirect(f"/versions?diff={now.version}&message={_q(said)}")

    def backtest(self, request: Request, visit: Visit) -> Answer:
        form = request.form() if request.method == "POST" else {}
        active = self.store.active()
        values: dict[str, Any] = {
            "visit": visit,
            "draft": form.get("draft", active.text if active else ""),
            "source": form.get("source", "topic"),
            "count": _int(form.get("count")) or 1000,
            "minutes": _int(form.get("minutes")) or 60,
            "events": form.get("events", ""),
            "outcome": None,
            "lines": None,
            "loose": [],
            "message": "",
            "shown": backtest.SHOWN,
        }
        if request.method == "POST":
            uploaded = request.files().get("events_file")
            values.update(self._run_backtest(values, uploaded.data if uploaded else None))
        status = 422 if values["lines"] is not None else 200
        return Answer(status, self.render("backtest.html", **values))

    def _run_backtest(self, values: dict[str, Any], uploaded: bytes | None) -> dict[str, Any]:
        if values["source"] == "paste" and uploaded is not None:
            events = [line for line in uploaded.splitlines() if line.strip()]
        elif values["source"] == "paste":
            events = [line.encode() for line in values["events"].splitlines() if line.strip()]
        else:
            count = max(1, min(int(values["count"]), MAX_COUNT))
            minutes = int(values["minutes"]) if values["source"] == "minutes" else 0
            try:
                events = backtest.recent_events(self.settings, count, minutes)
            except (ConfigError, KafkaException) as exc:
                return {"message": str(exc).splitlines()[0]}
        try:
            return {"outcome": backtest.run(values["draft"], events, self.settings)}
        except RulesError as exc:
            lines, loose = versions.annotate(values["draft"], exc.problems)
            return {"lines": lines, "loose": loose, "message": "the draft is rejected"}

    def segments(self, request: Request, visit: Visit) -> Answer:
        _, rules = self.active()
        lines = count_lines(self.client, self.keys, rules) if rules else []
        found = [line.split(": ", 1) for line in lines]
        rows = [row for row in counts.report(self.client, self.keys) if not row.step]
        body = self.render("segments.html", visit=visit, segments=found, rows=rows)
        return Answer(200, body)

    def shopper(self, request: Request, visit: Visit) -> Answer:
        identity = request.query.get("id", "").strip()
        found = None
        if identity:
            _, rules = self.active()
            found = lookup(self.client, self.keys, identity, rules, self.settings.windows)
        body = self.render("shopper.html", visit=visit, identity=identity, shopper=found)
        return Answer(200 if found or not identity else 404, body)


def _int(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(text) if text.isdigit() else None


def _q(text: str) -> str:
    return quote(text, safe="")


def utc_text(at: int | None) -> str:
    """Epoch ms as ``2026-12-01 05:40:12 UTC`` ("" for None)."""
    if at is None:
        return ""
    return datetime.fromtimestamp(at / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


ENV.filters["utc"] = utc_text
