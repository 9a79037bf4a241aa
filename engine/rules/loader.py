"""The rules loader: a YAML rules file -> compiled :class:`~engine.rules.model.Rules`.

Rules of this interface:

* :func:`load_rules` returns the compiled rules or raises
  :class:`~engine.errors.RulesError`, whose ``problems`` are
  ``FILE:LINE:COL: message`` lines (1-based), sorted in file order, each pointing
  at the offending node: the value of a bad field, the key of an unknown or
  duplicate key, the character an expression error names. One pass reports as
  many problems as it can (siblings are still checked after an error). The file
  is accepted or rejected as a whole.
* Everything is checked and compiled at load (SPEC section 2): expressions by
  :func:`engine.rules.compiler.compile_expression`, templates by
  :func:`engine.rules.templates.compile_template`. Unknown names (keys, event
  types, channels, template ids, time zones, event fields) get a "did you mean".
* Expression problems read ``journey ID PLACE: message`` (PLACE is
  ``trigger.if``, ``audience``, ``exit N.if`` or ``step PATH.if``) and point at
  the character the compiler names when the expression is a one-line plain or
  quoted scalar (quote escapes accounted for), else at the scalar's start.
  Template problems end with ``(template line N)`` and point at that line inside
  a ``|`` block, else at the scalar's start.
* ``Rules.source_hash`` is the sha256 (hex) of the file's bytes (UTF-8 for text);
  journeys keep file order; step paths follow SPEC section 4 (``"4.then.0"``).
* Warnings do not reject the file: ``Rules.warnings`` holds them as
  ``FILE:LINE:COL: warning: message`` lines in file order (today: ranges of the
  long history that may be approximate, :mod:`engine.rules.history_calls`).
  Expressions are compiled with the file's ``timezone`` (``date()`` literals,
  calendar months).
* :func:`summary` is the ``tetik rules validate`` line, prefixed ``FILE: `` when
  given a file name: ``rules.yaml: OK, 8 journeys, 3 templates, 2 caps (version
  <first 12 hex digits of source_hash>)``.

Decisions where the SPEC is silent:

* ``rfm_refresh`` (default ``1h``, at least ``1m``): how often the base's RFM
  boundaries are recomputed (:mod:`engine.rfm`).
* ``version: 1`` is required; ``journeys`` is required (an empty list is allowed);
  a journey needs ``id``, ``trigger`` and at least one step; ``timezone``
  defaults to ``UTC``.
* Scalars are read as the text written, so YAML 1.1 surprises do not apply:
  ``start: 22:00`` unquoted is the clock time, ``email: no`` is the text "no".
  An empty value (``key:``) is an error, never "absent".
* ``consent``: a channel not listed is ``opt_in`` (no send without a recorded
  grant); the compiled mapping names every channel.
* ``quiet_hours`` times are ``H:MM`` or ``HH:MM`` (00:00-23:59); start == end is
  an error (remove the block to have no quiet hours).
* Event types: a standard type, or a custom name matching the event pattern;
  a name within a typo of a standard type (difflib ratio >= 0.85, such as
  ``add_to_carts``) is rejected with "did you mean", rename a real custom event.
* ``key`` is a scalar field of the event (``product_id``, ``category``...);
  ``items``, ``attributes`` and ``props`` are not keys.
* ``reentry``/``wait`` durations and cap windows must be more than 0.
* Steps: ``exit`` is only the bare string ``- exit`` (``{exit: ...}`` is
  rejected with that hint); a step mapping has exactly one of ``wait``, ``send``,
  ``if``; ``then`` is required, ``else`` optional, either may be ``[]``; a
  fallback channel may not repeat the send's channel or another fallback.
* Experiments (SPEC section 11, :mod:`engine.rules.experiment_steps`): a
  journey's ``holdout: 10%`` and ``goal: {event, within[, if]}``; a ``split``
  step (``- split: {a: 50, b: 50}`` with the arms' step lists as sibling keys,
  paths ``N.a.M``), at most one per journey and never inside another;
  ``wait: {until: "HH:MM"}``; ``send: {expr: EXPR}`` with a required
  ``fallback`` list (a literal EXPR must name a channel).
* A send may name a template without content for its channel (the SPEC example
  sends push with an email/SMS template): the action's ``content`` is then null.
* Template ids and journey ids match ``[a-z0-9_-]+``; template field names
  match ``[A-Za-z_][A-Za-z0-9_]*`` and their values are any non-empty scalar.
* Limits against alias bombs: steps nest at most 16 levels and a file holds at
  most :data:`MAX_STEPS` (100,000) steps and :data:`MAX_JOURNEYS` (10,000)
  journeys, YAML aliases counted as often as they are used. YAML merge keys
  (``<<``) are not supported.

Bounds, so that no rules file `tetik rules validate` accepts can hurt the
engine (each violation is a ``FILE:LINE:COL`` problem naming the limit):

* YAML nests at most :data:`MAX_YAML_DEPTH` (64) levels; the check runs while
  the document is composed, so a deeper file is one problem at the first node
  too deep, never a ``RecursionError``.
* The loader visits at most :data:`MAX_NODES` (1,000,000) YAML entries, aliases
  counted as often as they are used; past that it stops with one problem.
* Every duration (``wait``, ``reentry``, cap ``per``, an expression's WITHIN or
  any duration literal) is at most 10 years (``3650d``,
  :data:`engine.durations.MAX_DURATION_MS`), and so are a journey's waits added
  up along its longest path (the problem points at the wait that crosses the
  bound): an enrollment's timers fall at most 10 years (plus quiet-hours
  deferrals) after its entry, and the ledger's expiry (longest journey + 1
  day) stays in Redis' range.
* At most :data:`MAX_TEMPLATES` (1,000) templates; each field's source is at
  most :data:`MAX_TEMPLATE_CHARS` (32,768) characters; at most
  :data:`MAX_TEMPLATE_FIELDS` (10,000) template fields are compiled (aliases
  count). Rendering has its own budget (:mod:`engine.rules.templates`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import re
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Final, Literal, ParamSpec, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.durations import DAY, HOUR, MAX_DURATION_MS, MINUTE, format_duration, parse_duration
from engine.errors import ExpressionError, RulesError, one_line
from engine.events import CHANNELS, STANDARD_TYPES, TYPE_PATTERN, Event, suggest
from engine.rules import segment_defs
from engine.rules.compiler import Scope, compile_expression
from engine.rules.experiment_steps import (
    GOAL_KEYS,
    NodeProblem,
    arm_name,
    holdout_share,
    split_weights,
    weight,
)
from engine.rules.model import (
    Arm,
    Branch,
    Cap,
    Condition,
    ConsentDefault,
    ExitRule,
    ExitStep,
    Goal,
    Journey,
    QuietHours,
    RenderFn,
    Rules,
    Schedule,
    Segment,
    Send,
    Split,
    Step,
    Trigger,
    Wait,
    longest_wait,
)
from engine.rules.nodes import Literal as ExprLiteral
from engine.rules.nodes import Node as Expr
from engine.rules.parser import parse
from engine.rules.segment_refs import referenced
from engine.rules.templates import TemplateProblem, compile_template
from engine.rules.typed import article

P = ParamSpec("P")
T = TypeVar("T")

MAX_STEPS: Final = 100_000
MAX_JOURNEYS: Final = 10_000
MAX_DEPTH: Final = 16
MAX_YAML_DEPTH: Final = 64
MAX_NODES: Final = 1_000_000
MAX_TEMPLATES: Final = 1_000
MAX_TEMPLATE_CHARS: Final = 32_768
MAX_TEMPLATE_FIELDS: Final = 10_000
TYPO_CUTOFF: Final = 0.85

TOP_KEYS: Final = (
    "version", "timezone", "quiet_hours", "consent", "caps", "templates", "segments",
    "segment_recheck", "rfm_refresh", "journeys",
)  # fmt: skip
MIN_RFM_REFRESH: Final = MINUTE
MAX_SEGMENTS: Final = 1_000
MIN_RECHECK_MS: Final = 60_000
DEFAULT_RECHECK_MS: Final = 3_600_000
JOURNEY_KEYS: Final = (
    "id", "name", "trigger", "key", "audience", "reentry", "exit", "holdout", "goal", "steps",
)  # fmt: skip
STEP_KEYS: Final = {
    "wait": ("wait",),
    "send": ("send", "template", "fallback"),
    "if": ("if", "then", "else"),
    "split": ("split",),  # and one key per arm: engine.rules.experiment_steps
}
KEY_FIELDS: Final = tuple(
    name for name in Event.__struct_fields__ if name not in {"items", "attributes", "props"}
)
CONSENT: Final[dict[str, ConsentDefault]] = {"opt_in": "opt_in", "opt_out": "opt_out"}
DEFAULT_CONSENT: Final[ConsentDefault] = "opt_in"

_ID = re.compile(r"^[a-z0-9_-]+\Z")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)\Z")
_COUNT = re.compile(r"^\d+\Z")
_WALL = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2}))?\Z")
_NULL = "tag:yaml.org,2002:null"
_ESCAPE_LENGTH: Final = {"x": 4, "u": 6, "U": 10}  # other double-quote escapes are 2 chars
# Stands in for a part that failed to compile: a file with a problem never yields Rules.
_UNUSED: Final = Condition("false", lambda ctx: False)
_NO_CAPS: Final[tuple[Cap, ...]] = ()
_NO_JOURNEYS: Final[tuple[Journey, ...]] = ()
_NO_STEPS: Final[tuple[Step, ...]] = ()
_NO_CHANNELS: Final[tuple[str, ...]] = ()
_NO_EXITS: Final[tuple[ExitRule, ...]] = ()

Fields = dict[str, tuple[Node, Node]]  # key -> (key node, value node)
Pairs = list[tuple[str, Node, Node]]  # (key, key node, value node) in file order
Templates = dict[str, dict[str, dict[str, RenderFn]]]


def load_rules(text: str | bytes, filename: str = "<rules>") -> Rules:
    """Compile a rules file's text; raise RulesError listing every problem found."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    loader = _Loader(filename, _decode(data, filename), hashlib.sha256(data).hexdigest())
    rules = loader.load()
    if rules is None:
        raise RulesError(loader.report())
    return rules


def load_rules_file(path: str | Path) -> Rules:
    """Read and compile a rules file; problems name the path as given."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RulesError([f"{path}: cannot read the rules file ({exc.strerror or exc})"]) from None
    return load_rules(data, str(path))


def summary(rules: Rules, filename: str | None = None) -> str:
    """One line for ``tetik rules validate``: counts and the short version hash."""
    counts = ", ".join(
        _plural(len(items), noun)
        for items, noun in (
            (rules.journeys, "journey"),
            (rules.templates, "template"),
            (rules.caps, "cap"),
        )
    )
    if rules.segments:
        counts += f", {_plural(len(rules.segments), 'segment')}"
    prefix = f"{filename}: " if filename else ""
    return f"{prefix}OK, {counts} (version {rules.source_hash[:12]})"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _decode(data: bytes, filename: str) -> str:
    """UTF-8 text (a BOM is dropped); an invalid byte is reported at its position."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, column = _line_column(data[: exc.start].decode("utf-8", "replace"))
        problem = f"{filename}:{line + 1}:{column + 1}: not valid UTF-8 ({exc.reason})"
        raise RulesError([problem]) from None


class _DepthError(yaml.MarkedYAMLError):
    """The document nests deeper than :data:`MAX_YAML_DEPTH` (raised while composing)."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe composer, refusing to nest deeper than :data:`MAX_YAML_DEPTH`.

    The composer recurses once per level, so a bound checked here keeps a
    hostile file far from Python's recursion limit.
    """

    depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                problem = (
                    f"the YAML nests deeper than {MAX_YAML_DEPTH} levels; "
                    "flatten the lists and mappings here"
                )
                raise _DepthError(problem=problem, problem_mark=mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


_CParser: Final = getattr(yaml, "CSafeLoader", None)  # libyaml, when PyYAML was built with it
_PLAIN_NULL = re.compile(r"^(?:~|null|Null|NULL|)\Z")
_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"


def _fast_compose(text: str) -> Node | None:
    """The node tree of ``text`` from libyaml's events, composed without recursion.

    PyYAML's own composer is pure Python and recursive: 90 % of a 10,000-journey
    load. This one builds the same nodes (tags: only null is resolved, which is
    all the loader reads) and stops past :data:`MAX_YAML_DEPTH` levels. It
    raises a YAMLError on any problem; the caller then composes with PyYAML,
    whose messages the loader reports.
    """
    if _CParser is None:
        raise yaml.YAMLError("libyaml is not available")
    anchors: dict[str, Node] = {}
    stack: list[tuple[Node, list[object]]] = []  # open collections and their children
    root: Node | None = None
    for event in yaml.parse(text, Loader=_CParser):
        node = _event_node(event, anchors, stack)
        if node is None:
            continue
        if stack:
            stack[-1][1].append(node)
        elif root is None:
            root = node
        else:  # a second document
            raise yaml.YAMLError("more than one document")
    return root


def _event_node(
    event: yaml.Event, anchors: dict[str, Node], stack: list[tuple[Node, list[object]]]
) -> Node | None:
    """The node an event completes (None: it opens a collection or is structural)."""
    kind = type(event)
    if kind is yaml.ScalarEvent:
        assert isinstance(event, yaml.ScalarEvent)
        tag = event.tag
        if tag is None or tag == "!":
            if event.implicit[0] and not event.value:  # `key:`, an error: PyYAML places it
                raise yaml.YAMLError("an empty value")
            plain = event.implicit[0] and _PLAIN_NULL.match(event.value)
            tag = _NULL if plain else _STR
        start, end = _marks(event)
        node: Node = ScalarNode(tag, event.value, start, end, event.style or None)
    elif kind is yaml.AliasEvent:
        assert isinstance(event, yaml.AliasEvent)
        if event.anchor not in anchors:
            raise yaml.YAMLError(f"undefined alias {event.anchor!r}")
        return anchors[event.anchor]
    elif kind is yaml.SequenceStartEvent or kind is yaml.MappingStartEvent:
        assert isinstance(event, yaml.CollectionStartEvent)
        if len(stack) + 1 >= MAX_YAML_DEPTH:
            raise yaml.YAMLError("too deep")
        cls = SequenceNode if kind is yaml.SequenceStartEvent else MappingNode
        tag = event.tag if event.tag not in (None, "!") else (_SEQ if cls is SequenceNode else _MAP)
        node = cls(tag, [], _marks(event)[0], None, flow_style=event.flow_style)
        if event.anchor is not None:
            anchors[event.anchor] = node
        stack.append((node, []))
        return None
    elif kind is yaml.SequenceEndEvent or kind is yaml.MappingEndEvent:
        node, children = stack.pop()
        node.end_mark = _marks(event)[1]
        if isinstance(node, MappingNode):
            node.value[:] = list(zip(children[::2], children[1::2], strict=True))
        else:
            node.value[:] = children
        return node
    else:
        return None
    if event.anchor is not None:
        anchors[event.anchor] = node
    return node


def _marks(event: yaml.Event) -> tuple[yaml.Mark, yaml.Mark]:
    """An event's marks; libyaml's have the line, column and index the loader reads."""
    return event.start_mark, event.end_mark  # type: ignore[return-value]


def _line_column(before: str) -> tuple[int, int]:
    """0-based line and column of the character after ``before``."""
    return before.count("\n"), len(before) - before.rfind("\n") - 1


@dataclass(frozen=True, order=True)
class _Problem:
    line: int  # 0-based, as YAML marks count
    column: int
    message: str


class _Reject(Exception):
    """One problem at one node; the caller records it and checks the siblings."""

    def __init__(self, problem: _Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class _TooBig(Exception):
    """The file is over a size limit: stop checking at once."""


def _at(node: Node, message: str) -> _Reject:
    return _Reject(_Problem(node.start_mark.line, node.start_mark.column, message))


def _checked(fn: Callable[P, T]) -> Callable[P, T]:
    """``fn`` with its :class:`NodeProblem` as the loader's rejection."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except NodeProblem as exc:
            raise _at(exc.node, exc.message) from None

    return run


def _text(node: Node, what: str) -> str:
    """The text written for a non-empty scalar (YAML's implicit typing ignored)."""
    if not isinstance(node, ScalarNode):
        raise _at(node, f"{what} must be a single value, not a {_kind(node)}")
    if node.tag == _NULL:
        raise _at(node, f"{what} is empty")
    return str(node.value)


def _peek(fields: Fields, name: str) -> str:
    """A field's text before it is checked (to name its owner in messages), or ""."""
    node = fields.get(name, (None, None))[1]
    return str(node.value) if isinstance(node, ScalarNode) else ""


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "mapping"
    return "list" if isinstance(node, SequenceNode) else "value"


def _items(node: Node, what: str) -> list[Node]:
    if not isinstance(node, SequenceNode):
        raise _at(node, f"{what} must be a list (`- item` lines or [a, b]), not a {_kind(node)}")
    return list(node.value)


def _duration(node: Node, what: str) -> int:
    """A positive duration in ms."""
    try:
        ms = parse_duration(_text(node, what))
    except ValueError as exc:
        raise _at(node, f"{what}: {exc}") from None
    if ms <= 0:
        raise _at(node, f"{what} must be more than 0")
    return ms


def _rfm_refresh(node: Node) -> int:
    """``rfm_refresh``: how often the base's RFM boundaries are recomputed (at least 1m)."""
    ms = _duration(node, "rfm_refresh")
    if ms < MIN_RFM_REFRESH:
        raise _at(
            node,
            f"rfm_refresh {format_duration(ms)} is too short: the boundaries are computed over "
            "the whole customer base, at most once a minute (e.g. 1h, the default)",
        )
    return ms


def _channel(node: Node, what: str = "channel", choices: Sequence[str] = CHANNELS) -> str:
    """One of ``choices`` (the SPEC's channels unless told otherwise)."""
    name = _text(node, what)
    if name not in choices:
        hint = suggest(name, choices)
        raise _at(node, f"unknown {what} {name!r}{hint}; channels: {', '.join(choices)}")
    return name


def _event_type(node: Node) -> str:
    """A standard event type, or a custom one that is no near-miss of a standard type."""
    name = _text(node, "event type")
    if name in STANDARD_TYPES:
        return name
    if not re.match(TYPE_PATTERN, name):
        raise _at(
            node,
            f"{name!r} is not an event type{suggest(name, STANDARD_TYPES)}; "
            "custom event types match [a-z][a-z0-9_.:-]{0,63}",
        )
    if difflib.get_close_matches(name, STANDARD_TYPES, n=1, cutoff=TYPO_CUTOFF):
        raise _at(node, f"unknown event type {name!r}{suggest(name, STANDARD_TYPES)}")
    return name


def _clock(node: Node, what: str) -> int:
    """``HH:MM`` as minutes after midnight."""
    text = _text(node, what)
    match = _CLOCK.match(text)
    if not match:
        raise _at(node, f'{what} {text!r} is not a time of day; write HH:MM, e.g. "22:00"')
    return int(match.group(1)) * 60 + int(match.group(2))


def _raw_index(raw: str, style: str | None, offset: int) -> int:
    """Index in a one-line scalar's source text of its value's character ``offset``.

    Quoted scalars write some characters with more than one: ``''`` in single
    quotes, ``\\"``, ``\\xHH``, ``\\uHHHH``... in double quotes.
    """
    index = 0
    for _ in range(max(offset, 0)):
        if index >= len(raw):
            break
        if style == "'" and raw.startswith("''", index):
            index += 2
        elif style == '"' and raw[index] == "\\":
            index += _ESCAPE_LENGTH.get(raw[index + 1 : index + 2], 2)
        else:
            index += 1
    return min(index, len(raw))


def _overrun(steps: tuple[Step, ...], elapsed: int) -> Wait | None:
    """The first wait after which a path's total wait passes the bound, if any."""
    for step in steps:
        if isinstance(step, Wait):
            elapsed += step.ms
            if elapsed > MAX_DURATION_MS:
                return step
        elif isinstance(step, Branch | Split):
            paths = (step.then, step.otherwise) if isinstance(step, Branch) else step.arm_steps
            for branch in paths:
                found = _overrun(branch, elapsed)
                if found is not None:
                    return found
            elapsed += max(longest_wait(path) for path in paths)
    return None


@functools.cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


@dataclass
class _Loader:
    """One load: the source, the problems found so far and cross-reference tables."""

    filename: str
    text: str
    source_hash: str
    problems: set[_Problem] = field(default_factory=set)
    template_ids: set[str] = field(default_factory=set)
    journey_ids: dict[str, int] = field(default_factory=dict)  # id -> 1-based line
    steps: int = 0
    nodes: int = 0  # entries of mappings and lists visited (aliases count each use)
    template_fields: int = 0
    wait_nodes: dict[tuple[str, str], Node] = field(default_factory=dict)  # (where, path)
    # segment name -> compiled condition (None until compiled, or if it did not compile)
    segment_conds: dict[str, Condition | None] = field(default_factory=dict)
    timezone: str = "UTC"  # the file's, once read: expressions compile with it
    splits: dict[str, int] = field(default_factory=dict)  # journey -> line of its split
    warnings: set[_Problem] = field(default_factory=set)

    def load(self) -> Rules | None:
        """The compiled rules, or None when a problem was recorded."""
        root = self._compose()
        if root is None:
            return None
        try:
            rules = self._try(None, self._rules, root)
        except _TooBig as exc:
            self.problems.add(_Problem(0, 0, str(exc)))
            return None
        return None if self.problems else rules

    def _compose(self) -> Node | None:
        """The YAML node tree, or None after recording why there is none."""
        try:
            root = _fast_compose(self.text)
        except (yaml.YAMLError, RecursionError):  # the pure-Python parser words the problem
            root = None
        try:
            root = root or yaml.compose(self.text, Loader=_BoundedLoader)
        except _DepthError as exc:
            mark = exc.problem_mark
            line, column = (mark.line, mark.column) if mark else (0, 0)
            self.problems.add(_Problem(line, column, str(exc.problem)))
            return None
        except yaml.MarkedYAMLError as exc:
            self._syntax(exc)
            return None
        except yaml.reader.ReaderError as exc:
            line, column = _line_column(self.text[: exc.position])
            reason = f"YAML: {exc.reason} (character #x{exc.character:04x})"
            self.problems.add(_Problem(line, column, reason))
            return None
        if root is None:
            self.problems.add(_Problem(0, 0, "the rules file is empty; start with `version: 1`"))
        return root

    def report(self) -> list[str]:
        """Every problem as one ``FILE:LINE:COL: message`` line, in file order.

        A key or value quoted in a message may hold a line break (YAML allows
        ``\x85`` or ``\x1e`` in keys); it is written as ``\n``.
        """
        return self._lines(self.problems)

    def _lines(self, problems: set[_Problem], kind: str = "") -> list[str]:
        return [
            one_line(f"{self.filename}:{p.line + 1}:{p.column + 1}: {kind}{p.message}")
            for p in sorted(problems)
        ]

    def _syntax(self, exc: yaml.MarkedYAMLError) -> None:
        mark = exc.problem_mark or exc.context_mark
        context = f"{exc.context}: " if exc.context else ""
        message = f"YAML syntax error: {context}{exc.problem}"
        self.problems.add(_Problem(mark.line if mark else 0, mark.column if mark else 0, message))

    def _report(self, node: Node, message: str) -> None:
        """Record a problem at ``node`` and go on."""
        self.problems.add(_at(node, message).problem)

    def _try(self, default: T, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(...)``; on a rejection record the problem and return ``default``."""
        try:
            return fn(*args, **kwargs)
        except _Reject as exc:
            self.problems.add(exc.problem)
            return default

    # ---- mappings --------------------------------------------------------------

    def _visit(self, count: int) -> None:
        """Count ``count`` visited entries; stop the load past :data:`MAX_NODES`."""
        self.nodes += count
        if self.nodes > MAX_NODES:
            raise _TooBig(
                f"the rules file has more than {MAX_NODES:,} YAML entries (YAML aliases count)"
            )

    def _list(self, node: Node, what: str) -> list[Node]:
        """A list's items (counted against :data:`MAX_NODES`)."""
        items = _items(node, what)
        self._visit(len(items))
        return items

    def _pairs(self, node: Node, what: str) -> Pairs:
        """A mapping's entries in file order; duplicate keys are recorded and dropped."""
        if not isinstance(node, MappingNode):
            raise _at(node, f"{what} must be a mapping (`key: value` lines), not a {_kind(node)}")
        self._visit(len(node.value))
        pairs: Pairs = []
        first: dict[str, Node] = {}
        for key, value in node.value:
            name = self._try(None, _text, key, "a key")
            if name is None:
                continue
            if name in first:
                line = first[name].start_mark.line + 1
                self._report(key, f"duplicate key {name!r} (first on line {line})")
                continue
            first[name] = key
            pairs.append((name, key, value))
        return pairs

    def _select(self, pairs: Pairs, allowed: Sequence[str], what: str) -> Fields:
        """Known fields by name; each unknown key is recorded with a "did you mean"."""
        fields: Fields = {}
        for name, key, value in pairs:
            if name in allowed:
                fields[name] = (key, value)
            else:
                hint = suggest(name, allowed) or f"; allowed: {', '.join(allowed)}"
                self._report(key, f"unknown key {name!r} in {what}{hint}")
        return fields

    def _fields(self, node: Node, allowed: Sequence[str], what: str) -> Fields:
        return self._select(self._pairs(node, what), allowed, what)

    def _field(
        self,
        fields: Fields,
        name: str,
        parse: Callable[[Node], T],
        default: T,
        *,
        required: tuple[Node, str] | None = None,
    ) -> T:
        """Parse one field; a missing field is ``default`` (or a problem if required)."""
        if name not in fields:
            if required is not None:
                owner, what = required
                self._report(owner, f"{what} is missing `{name}`")
            return default
        return self._try(default, parse, fields[name][1])

    # ---- the top level ---------------------------------------------------------

    def _rules(self, root: Node) -> Rules:
        fields = self._fields(root, TOP_KEYS, "the rules file")
        need = (root, "the rules file")
        version = self._field(fields, "version", self._version, 1, required=need)
        timezone = self.timezone = self._field(fields, "timezone", self._timezone, "UTC")
        quiet = self._field(fields, "quiet_hours", self._quiet_hours, None)
        consent = self._field(fields, "consent", self._consent, self._consent_defaults({}))
        caps = self._field(fields, "caps", self._caps, _NO_CAPS)
        templates: Templates = self._field(fields, "templates", self._templates, {})
        recheck = self._field(fields, "segment_recheck", self._recheck, DEFAULT_RECHECK_MS)
        segments = self._field(
            fields, "segments", lambda n: self._segments(n, timezone), dict[str, Segment]()
        )
        journeys = self._field(fields, "journeys", self._journeys, _NO_JOURNEYS, required=need)
        rfm_refresh = self._field(fields, "rfm_refresh", _rfm_refresh, HOUR)
        return Rules(
            journeys=journeys,
            version=version,
            timezone=timezone,
            quiet_hours=quiet,
            consent=consent,
            caps=caps,
            templates=templates,
            source_hash=self.source_hash,
            rfm_refresh=rfm_refresh,
            segments=segments,
            segment_recheck=recheck,
            warnings=tuple(self._lines(self.warnings, "warning: ")),
        )

    def _version(self, node: Node) -> int:
        text = _text(node, "version")
        if text != "1":
            raise _at(node, f"version {text!r} is not supported; this tetik reads `version: 1`")
        return 1

    def _timezone(self, node: Node) -> str:
        name = _text(node, "timezone")
        if name not in _time_zones():
            hint = suggest(name, _time_zones())
            raise _at(
                node, f"timezone {name!r} is not an IANA time zone{hint}, e.g. Europe/Istanbul"
            )
        return name

    def _quiet_hours(self, node: Node) -> QuietHours:
        fields = self._fields(node, ("start", "end"), "quiet_hours")
        need = (node, "quiet_hours")
        start = self._field(
            fields, "start", lambda n: _clock(n, "quiet_hours start"), -1, required=need
        )
        end = self._field(fields, "end", lambda n: _clock(n, "quiet_hours end"), -1, required=need)
        if start == end and start >= 0:
            raise _at(
                fields["end"][1], "quiet_hours start and end are equal; remove quiet_hours for none"
            )
        return QuietHours(start, end)

    def _consent(self, node: Node) -> dict[str, ConsentDefault]:
        listed: dict[str, ConsentDefault] = {}
        for _name, key, value in self._pairs(node, "consent"):
            channel = self._try(None, _channel, key)
            setting = self._try(None, self._consent_value, value)
            if channel and setting:
                listed[channel] = setting
        return self._consent_defaults(listed)

    def _consent_value(self, node: Node) -> ConsentDefault:
        text = _text(node, "consent")
        if text not in CONSENT:
            raise _at(node, f"consent {text!r} must be opt_in or opt_out{suggest(text, CONSENT)}")
        return CONSENT[text]

    @staticmethod
    def _consent_defaults(listed: dict[str, ConsentDefault]) -> dict[str, ConsentDefault]:
        return {channel: listed.get(channel, DEFAULT_CONSENT) for channel in CHANNELS}

    def _caps(self, node: Node) -> tuple[Cap, ...]:
        caps = (self._try(None, self._cap, item) for item in self._list(node, "caps"))
        return tuple(cap for cap in caps if cap is not None)

    def _cap(self, node: Node) -> Cap:
        fields = self._fields(node, ("channel", "max", "per"), "a cap")
        need = (node, "a cap")
        channel = self._field(fields, "channel", self._cap_channel, "", required=need)
        most = self._field(fields, "max", self._cap_max, 0, required=need)
        per = self._field(fields, "per", lambda n: _duration(n, "cap per"), 0, required=need)
        return Cap(channel, most, per)

    @staticmethod
    def _cap_channel(node: Node) -> str:
        return _channel(node, "cap channel", ("any", *CHANNELS))

    @staticmethod
    def _cap_max(node: Node) -> int:
        text = _text(node, "cap max")
        if not _COUNT.match(text) or int(text) < 1:
            raise _at(node, f"cap max {text!r} must be a whole number of at least 1")
        return int(text)

    # ---- templates -------------------------------------------------------------

    def _templates(self, node: Node) -> Templates:
        templates: Templates = {}
        pairs = self._pairs(node, "templates")
        if len(pairs) > MAX_TEMPLATES:
            self._report(
                pairs[MAX_TEMPLATES][1],
                f"more than {MAX_TEMPLATES:,} templates; reuse templates across journeys",
            )
        for tid, key, value in pairs[:MAX_TEMPLATES]:
            if not _ID.match(tid):
                self._report(key, f"template id {tid!r} must match [a-z0-9_-]+")
                continue
            self.template_ids.add(tid)
            templates[tid] = self._try({}, self._template, tid, value)
        return templates

    def _template(self, tid: str, node: Node) -> dict[str, dict[str, RenderFn]]:
        channels: dict[str, dict[str, RenderFn]] = {}
        pairs = self._pairs(node, f"template {tid!r}")
        if not pairs:
            raise _at(node, f"template {tid!r} has no channels; add e.g. `email: {{subject: ...}}`")
        for name, key, value in pairs:
            channel = self._try(None, _channel, key)
            fields = self._try({}, self._content, f"{tid}.{name}", value)
            if channel:
                channels[channel] = fields
        return channels

    def _content(self, where: str, node: Node) -> dict[str, RenderFn]:
        pairs = self._pairs(node, f"template {where}")
        if not pairs:
            raise _at(node, f"template {where} has no fields; add e.g. `text: ...`")
        fields: dict[str, RenderFn] = {}
        for name, key, value in pairs:
            if not _FIELD.match(name):
                message = f"template field {name!r} must match [A-Za-z_][A-Za-z0-9_]*"
                self._report(key, message)
                continue
            render = self._try(None, self._render_fn, f"{where}.{name}", value)
            if render is not None:
                fields[name] = render
        return fields

    def _render_fn(self, where: str, node: Node) -> RenderFn:
        source = _text(node, f"template {where}")
        if len(source) > MAX_TEMPLATE_CHARS:
            raise _at(
                node,
                f"template {where} is {len(source):,} characters long, more than the limit of "
                f"{MAX_TEMPLATE_CHARS:,}; shorten it or split it into fields",
            )
        self.template_fields += 1
        if self.template_fields > MAX_TEMPLATE_FIELDS:
            raise _TooBig(
                f"the rules file has more than {MAX_TEMPLATE_FIELDS:,} template fields "
                "(YAML aliases count)"
            )
        try:
            return compile_template(source)
        except TemplateProblem as exc:
            line, column = self._template_line(node, exc.lineno)
            message = f"template {where}: {exc.message} (template line {exc.lineno})"
            raise _Reject(_Problem(line, column, message)) from None

    def _template_line(self, node: Node, lineno: int) -> tuple[int, int]:
        """File position of a template's line: exact in a ``|`` block, else the node."""
        start = node.start_mark
        if getattr(node, "style", None) != "|":
            return start.line, start.column
        line = start.line + lineno
        lines = self.text.splitlines()
        text = lines[line] if line < len(lines) else ""
        return line, len(text) - len(text.lstrip(" "))

    # ---- journeys --------------------------------------------------------------

    def _journeys(self, node: Node) -> tuple[Journey, ...]:
        items = self._list(node, "journeys")
        if len(items) > MAX_JOURNEYS:
            raise _at(
                items[MAX_JOURNEYS],
                f"more than {MAX_JOURNEYS:,} journeys; split the programme over several engines "
                "or merge journeys that share a trigger",
            )
        journeys = (self._try(None, self._journey, item, index) for index, item in enumerate(items))
        return tuple(journey for journey in journeys if journey is not None)

    def _journey(self, node: Node, index: int) -> Journey:
        fields = self._fields(node, JOURNEY_KEYS, "a journey")
        where = f"journey {_peek(fields, 'id') or f'#{index}'}"
        need = (node, where)
        jid = self._field(fields, "id", self._journey_id, "", required=need)
        trigger = self._field(
            fields, "trigger", lambda n: self._trigger(n, where), None, required=need
        )
        steps = self._field(
            fields, "steps", lambda n: self._steps(n, "", where, 0), _NO_STEPS, required=need
        )
        self._check_span(steps, where)
        if trigger is not None and not trigger.event and "key" in fields:
            self._report(
                fields["key"][0],
                f"{where}: `key` needs an event trigger; a segment or schedule trigger has no "
                "event to take the key from (remove `key`)",
            )
        return Journey(
            id=jid,
            trigger=trigger or Trigger(""),
            steps=steps,
            name=self._field(fields, "name", lambda n: _text(n, "name"), ""),
            key=self._field(fields, "key", self._key, None),
            audience=self._field(fields, "audience", lambda n: self._audience(n, where), None),
            reentry=self._field(fields, "reentry", self._reentry, "never"),
            exits=self._field(fields, "exit", lambda n: self._exits(n, where), _NO_EXITS),
            holdout=self._field(fields, "holdout", _checked(holdout_share), 0),
            goal=self._field(fields, "goal", lambda n: self._goal(n, where), None),
        )

    def _goal(self, node: Node, where: str) -> Goal:
        """``goal: {event: TYPE, within: DURATION, if: EXPR}`` (``if`` optional)."""
        fields = self._fields(node, GOAL_KEYS, "a goal")
        need = (node, f"{where} goal")
        scope = Scope(event=True, entry=False, where=f"{where} goal.if")
        return Goal(
            event=self._field(fields, "event", _event_type, "", required=need),
            within=self._field(
                fields, "within", lambda n: _duration(n, "within"), 0, required=need
            ),
            cond=self._field(fields, "if", lambda n: self._expression(n, scope), None),
        )

    def _check_span(self, steps: tuple[Step, ...], where: str) -> None:
        """Record a problem at the wait where the journey's waits pass 10 years in total."""
        crossing = _overrun(steps, 0)
        if crossing is None:
            return
        limit = format_duration(MAX_DURATION_MS)
        self._report(
            self.wait_nodes[(where, crossing.path)],
            f"{where}: its waits add up to more than {limit} (10 years) by step "
            f"{crossing.path}; shorten the waits",
        )

    def _journey_id(self, node: Node) -> str:
        jid = _text(node, "journey id")
        if not _ID.match(jid):
            raise _at(
                node, f"journey id {jid!r} must match [a-z0-9_-]+ (lowercase, digits, _ and -)"
            )
        if jid in self.journey_ids:
            raise _at(node, f"duplicate journey id {jid!r} (first on line {self.journey_ids[jid]})")
        self.journey_ids[jid] = node.start_mark.line + 1
        return jid

    def _key(self, node: Node) -> str:
        name = _text(node, "key")
        if name not in KEY_FIELDS:
            raise _at(
                node,
                f"key {name!r} is not an event field{suggest(name, KEY_FIELDS)}; "
                f"use one of {', '.join(KEY_FIELDS)}",
            )
        return name

    @staticmethod
    def _reentry(node: Node) -> Literal["never", "always"] | int:
        text = _text(node, "reentry")
        if text in ("never", "always"):
            return "never" if text == "never" else "always"
        try:
            return _duration(node, "reentry")
        except _Reject as exc:
            if "longer than the limit" in exc.problem.message:
                raise
            hint = suggest(text, ("never", "always"))
            message = f"reentry {text!r} must be never, always or a duration such as 7d{hint}"
            raise _at(node, message) from None

    def _expression(self, node: Node, scope: Scope, *, boolean: bool = True) -> Condition:
        """Compile one expression; its error points at the offending character."""
        source = _text(node, scope.where)
        if scope.segments is None:
            scope = replace(scope, segments=self.segment_conds)
        try:
            condition = compile_expression(
                source, dataclasses.replace(scope, timezone=self.timezone), boolean=boolean
            )
        except ExpressionError as exc:
            line, column = self._offset(node, exc.offset)
            raise _Reject(_Problem(line, column, exc.message)) from None
        for offset, message in condition.warnings:
            self.warnings.add(_Problem(*self._offset(node, offset), message))
        return condition

    def _offset(self, node: Node, offset: int) -> tuple[int, int]:
        """File position of a character of a one-line scalar; the node start otherwise."""
        start, end = node.start_mark, node.end_mark
        style = getattr(node, "style", None)
        if style not in (None, "'", '"') or start.line != end.line:
            return start.line, start.column
        quote = 1 if style else 0
        raw = self.text[start.index + quote : end.index - quote]
        return start.line, start.column + quote + _raw_index(raw, style, offset)

    def _audience(self, node: Node, where: str) -> Condition:
        return self._expression(node, Scope(event=True, entry=False, where=f"{where} audience"))

    def _trigger(self, node: Node, where: str) -> Trigger:
        if isinstance(node, MappingNode):
            keys = {k.value for k, _ in node.value if isinstance(k, ScalarNode)}
            if "schedule" in keys:
                return self._schedule_trigger(node)
            if "segment" in keys and "event" not in keys:
                return self._segment_trigger(node)
        scope = Scope(event=True, entry=False, where=f"{where} trigger.if")
        return Trigger(*self._event_ref(node, scope, "trigger"))

    def _exits(self, node: Node, where: str) -> tuple[ExitRule, ...]:
        exits = []
        for index, item in enumerate(self._list(node, "exit")):
            scope = Scope(event=True, entry=True, where=f"{where} exit {index}.if")
            found = self._try(None, self._event_ref, item, scope, "an exit")
            if found is not None:
                exits.append(ExitRule(*found))
        return tuple(exits)

    def _event_ref(self, node: Node, scope: Scope, what: str) -> tuple[str, Condition | None]:
        """``TYPE`` or ``{event: TYPE, if: EXPR}``."""
        if isinstance(node, ScalarNode):
            return _event_type(node), None
        if not isinstance(node, MappingNode):
            raise _at(node, f"{what} must be an event type or {{event: TYPE, if: EXPR}}")
        fields = self._fields(node, ("event", "if"), what)
        event = self._field(fields, "event", _event_type, "", required=(node, what))
        cond = self._field(fields, "if", lambda n: self._expression(n, scope), None)
        return event, cond

    # ---- steps -----------------------------------------------------------------

    def _steps(self, node: Node, prefix: str, where: str, depth: int) -> tuple[Step, ...]:
        """A list of steps; paths are ``prefix.N`` (just ``N`` at the top)."""
        items = self._list(node, "steps")
        if depth == 0 and not items:
            raise _at(node, f"{where} has no steps")
        if depth >= MAX_DEPTH:
            raise _at(node, f"steps nest deeper than {MAX_DEPTH} levels")
        steps = []
        for index, item in enumerate(items):
            path = f"{prefix}.{index}" if prefix else str(index)
            step = self._try(None, self._step, item, path, where, depth)
            if step is not None:
                steps.append(step)
        return tuple(steps)

    def _step(self, node: Node, path: str, where: str, depth: int) -> Step:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise _TooBig(f"the rules file has more than {MAX_STEPS:,} steps (YAML aliases count)")
        if isinstance(node, ScalarNode):
            return self._exit_step(node, path)
        pairs = self._pairs(node, "a step")
        kind = self._step_kind(node, pairs)
        if kind == "split":
            return self._split(pairs, path, where, depth)
        fields = self._select(
            pairs, STEP_KEYS[kind], "an if step" if kind == "if" else f"a {kind} step"
        )
        if kind == "wait":
            return self._wait(fields["wait"][1], path, where)
        if kind == "send":
            return self._send(fields, path, where)
        return self._branch(fields, path, where, depth)

    def _wait(self, node: Node, path: str, where: str) -> Wait:
        """``wait: DURATION`` or ``wait: {until: "HH:MM"}`` (the shopper's local time)."""
        self.wait_nodes[(where, path)] = node
        if isinstance(node, MappingNode):
            fields = self._fields(node, ("until",), "a wait")
            until = self._field(
                fields, "until", lambda n: _clock(n, "wait until"), None, required=(node, "wait")
            )
            return Wait(path, DAY, until)
        return Wait(path, _duration(node, "wait"))

    def _split(self, pairs: Pairs, path: str, where: str, depth: int) -> Split:
        """``split: {a: 50, b: 50}`` then ``a: [steps]`` and ``b: [steps]``."""
        split_key, split_node = next((k, v) for name, k, v in pairs if name == "split")
        if self.splits.get(where):
            raise _at(
                split_key,
                f"{where} has a split already (line {self.splits[where]}); a journey has at "
                "most one split and none inside another: give each arm its own steps",
            )
        self.splits[where] = split_key.start_mark.line + 1
        weights = self._pairs(split_node, "split")
        names = [self._try("", _checked(arm_name), key, name) for name, key, _ in weights]
        self._try(None, _checked(split_weights), split_node, weights)
        arms = [name for name in names if name]
        fields = self._select(pairs, ("split", *arms), "a split step")
        for name, key, _ in weights:
            if name in arms and name not in fields:
                self._report(key, f"{where} split: arm {name!r} has no steps; add `{name}: [...]`")
        return Split(
            path,
            tuple(
                Arm(name, weight(node), self._arm_steps(fields, name, path, where, depth))
                for name, _, node in weights
                if name in arms
            ),
        )

    def _arm_steps(
        self, fields: Fields, name: str, path: str, where: str, depth: int
    ) -> tuple[Step, ...]:
        if name not in fields:
            return _NO_STEPS
        node = fields[name][1]
        return self._try(_NO_STEPS, self._steps, node, f"{path}.{name}", where, depth + 1)

    @staticmethod
    def _exit_step(node: ScalarNode, path: str) -> ExitStep:
        text = _text(node, "a step")
        if text != "exit":
            raise _at(
                node,
                f"unknown step {text!r}{suggest(text, ('exit', *STEP_KEYS))}; a step is "
                "`wait: DURATION`, `send: CHANNEL`, `if: EXPR` or the string `exit`",
            )
        return ExitStep(path)

    @staticmethod
    def _step_kind(node: Node, pairs: Pairs) -> str:
        """The one of wait/send/if a step mapping has."""
        kinds = [(name, key) for name, key, _ in pairs if name in STEP_KEYS]
        if len(kinds) > 1:
            (first, _), (second, key) = kinds[0], kinds[1]
            raise _at(key, f"a step is `{first}` or `{second}`, not both; start each step with `-`")
        if kinds:
            return kinds[0][0]
        if not pairs:
            raise _at(node, "a step is `wait: DURATION`, `send: CHANNEL`, `if: EXPR` or `exit`")
        name, key, _ = pairs[0]
        if name == "exit":
            raise _at(key, "write the exit step as the bare string `- exit`")
        hint = suggest(name, ("exit", *STEP_KEYS)) or "; a step needs `wait`, `send` or `if`"
        raise _at(key, f"unknown step {name!r}{hint}")

    def _send(self, fields: Fields, path: str, where: str) -> Send:
        send_node = fields["send"][1]
        if isinstance(send_node, MappingNode):
            return self._send_by_expression(fields, path, where)
        channel = self._try("", _channel, send_node)
        template = self._field(fields, "template", self._template_ref, None)
        fallback = self._field(
            fields, "fallback", lambda n: self._fallback(n, channel), _NO_CHANNELS
        )
        return Send(path, channel, template, fallback)

    def _send_by_expression(self, fields: Fields, path: str, where: str) -> Send:
        """``send: {expr: EXPR}`` with a ``fallback`` list (used when EXPR names no
        channel); an expression that is a constant must name a channel."""
        send_key, send_node = fields["send"]
        inner = self._fields(send_node, ("expr",), "send")
        scope = Scope(event=True, entry=True, where=f"{where} step {path}.send.expr")
        choose = self._field(
            inner,
            "expr",
            lambda n: self._channel_expression(n, scope),
            None,
            required=(send_node, "send"),
        )
        template = self._field(fields, "template", self._template_ref, None)
        fallback = self._field(fields, "fallback", lambda n: self._fallback(n, ""), _NO_CHANNELS)
        if "fallback" not in fields:
            self._report(
                send_key,
                f"{where} step {path}: `send: {{expr: ...}}` needs a `fallback` list, the "
                "channels tried when the expression names none, e.g. fallback: [email]",
            )
        first = fallback[0] if fallback else ""
        return Send(path, first, template, fallback, choose)

    def _channel_expression(self, node: Node, scope: Scope) -> Condition:
        """A channel-valued expression; a literal one must name a known channel."""
        condition = self._expression(node, scope, boolean=False)
        if condition.type not in ("string", "any"):
            raise _at(
                node,
                f"{scope.where}: {condition.source!r} is {article(condition.type)}, not a channel "
                "name; "
                "write an expression that gives one, e.g. most_used_channel()",
            )
        root = parse(condition.source)
        if isinstance(root, ExprLiteral):
            value = str(root.value)
            if value not in CHANNELS:
                raise _at(
                    node,
                    f"{scope.where}: {value!r} is not a channel{suggest(value, CHANNELS)}; "
                    f"channels: {', '.join(CHANNELS)}",
                )
        return condition

    def _template_ref(self, node: Node) -> str:
        tid = _text(node, "template")
        if tid not in self.template_ids:
            defined = ", ".join(sorted(self.template_ids)) or "none"
            known = suggest(tid, self.template_ids) or f"; templates defined: {defined}"
            raise _at(node, f"unknown template {tid!r}{known}")
        return tid

    def _fallback(self, node: Node, channel: str) -> tuple[str, ...]:
        chosen: list[str] = []
        for item in self._list(node, "fallback"):
            name = self._try(None, _channel, item, "fallback channel")
            if name is None:
                continue
            if name == channel or name in chosen:
                self._report(item, f"fallback repeats channel {name!r}")
                continue
            chosen.append(name)
        return tuple(chosen)

    def _branch(self, fields: Fields, path: str, where: str, depth: int) -> Branch:
        if_key, if_node = fields["if"]
        scope = Scope(event=True, entry=True, where=f"{where} step {path}.if")
        cond = self._try(_UNUSED, self._expression, if_node, scope)
        need = (if_key, f"{where} step {path}")
        then = self._field(
            fields,
            "then",
            lambda n: self._steps(n, f"{path}.then", where, depth + 1),
            _NO_STEPS,
            required=need,
        )
        otherwise = self._field(
            fields, "else", lambda n: self._steps(n, f"{path}.else", where, depth + 1), _NO_STEPS
        )
        return Branch(path, cond, then, otherwise)

    # ---- segments and broadcasts (SPEC section 9) -------------------------------

    @staticmethod
    def _recheck(node: Node) -> int:
        ms = _duration(node, "segment_recheck")
        if ms < MIN_RECHECK_MS:
            raise _at(node, "segment_recheck must be at least 1m (each recheck evaluates segments)")
        return ms

    def _segments(self, node: Node, timezone: str) -> dict[str, Segment]:
        """Check names, refuse cycles, then compile in dependency order."""
        pairs = self._pairs(node, "segments")
        if len(pairs) > MAX_SEGMENTS:
            raise _at(pairs[MAX_SEGMENTS][1], f"more than {MAX_SEGMENTS:,} segments")
        values: dict[str, Node] = {}
        for name, key, value in pairs:
            if not _ID.match(name):
                self._report(key, f"segment name {name!r} must match [a-z0-9_-]+")
                continue
            values[name] = value
            self.segment_conds[name] = None
        trees = {
            name: self._try(None, self._segment_tree, name, value) for name, value in values.items()
        }
        refs = {name: referenced(tree) if tree is not None else [] for name, tree in trees.items()}
        order, cycles = segment_defs.compile_order(refs)
        for name, call, loop in cycles:
            message = (
                f"segment {name}: segments use each other in a cycle: {' -> '.join(loop)}; "
                "a segment cannot depend on itself, directly or through others"
            )
            line, column = self._offset(values[name], call.offset)
            self.problems.add(_Problem(line, column, message))
        skipped = segment_defs.in_cycle(cycles)
        compiled: dict[str, Segment] = {}
        for name in order:
            tree = trees[name]
            if tree is None or name in skipped:
                continue
            segment = self._try(None, self._segment, name, values[name], tree, compiled, timezone)
            if segment is not None:
                compiled[name] = segment
                self.segment_conds[name] = segment.cond
        return {name: compiled[name] for name in values if name in compiled}

    def _segment_tree(self, name: str, node: Node) -> Expr:
        """The parsed segment, refused where it reads `event`, `entry` or `engaged`."""
        try:
            tree = parse(_text(node, f"segment {name}"))
            segment_defs.check_segment_tree(tree)
        except ExpressionError as exc:
            line, column = self._offset(node, exc.offset)
            raise _Reject(_Problem(line, column, f"segment {name}: {exc.message}")) from None
        return tree

    def _segment(
        self, name: str, node: Node, tree: Expr, compiled: dict[str, Segment], timezone: str
    ) -> Segment:
        scope = Scope(
            event=False, entry=False, where=f"segment {name}", segments=self.segment_conds
        )
        cond = self._expression(node, scope)
        uses = {ref for ref, _ in referenced(tree)}
        deps = segment_defs.analyse(tree, {r: compiled[r].deps for r in uses if r in compiled})
        prints = [compiled[r].fingerprint for r in uses if r in compiled]
        return Segment(name, cond, deps, segment_defs.fingerprint(cond.source, prints, timezone))

    def _segment_ref(self, node: Node) -> str:
        name = _text(node, "segment")
        if name not in self.segment_conds:
            known = self.segment_conds
            hint = suggest(name, known) or (
                f"; segments defined: {', '.join(sorted(known))}"
                if known
                else "; define it under the top-level `segments:`"
            )
            raise _at(node, f"unknown segment {name!r}{hint}")
        return name

    def _segment_trigger(self, node: Node) -> Trigger:
        """``{segment: S}`` (on entering) or ``{segment: S, on: exit}`` (on leaving)."""
        fields = self._fields(node, ("segment", "on"), "a segment trigger")
        segment = self._field(fields, "segment", self._segment_ref, "")
        on: Literal["enter", "exit"] = self._field(fields, "on", self._on, "enter")
        return Trigger("", segment=segment, on=on)

    @staticmethod
    def _on(node: Node) -> Literal["enter", "exit"]:
        text = _text(node, "on")
        if text not in ("enter", "exit"):
            raise _at(node, f"on {text!r} must be enter or exit{suggest(text, ('enter', 'exit'))}")
        return "enter" if text == "enter" else "exit"

    def _schedule_trigger(self, node: Node) -> Trigger:
        """``{schedule: "2026-11-20T09:00", segment: S, local: true}``: a broadcast."""
        fields = self._fields(node, ("schedule", "segment", "local"), "a schedule trigger")
        local = self._field(fields, "local", self._local, False)
        schedule = self._field(fields, "schedule", lambda n: _schedule(n, local), None)
        segment = self._field(fields, "segment", self._segment_ref, None)
        return Trigger("", segment=segment, schedule=schedule)

    @staticmethod
    def _local(node: Node) -> bool:
        text = _text(node, "local")
        if text not in ("true", "false"):
            raise _at(node, f"local {text!r} must be true or false")
        return text == "true"


def _schedule(node: Node, local: bool) -> Schedule:
    """A wall time without offset: ``2026-11-20T09:00`` (seconds optional)."""
    text = _text(node, "schedule")
    match = _WALL.match(text)
    wall = None
    if match:
        try:
            year, month, day, hour, minute, second = (int(p or 0) for p in match.groups())
            wall = datetime(year, month, day, hour, minute, second)
        except ValueError:
            wall = None
    if wall is None:
        raise _at(
            node,
            f"schedule {text!r} is not a wall time; write YYYY-MM-DDTHH:MM, e.g. "
            "\"2026-11-20T09:00\" (the rules' timezone, or each user's with local: true)",
        )
    return Schedule(text, wall, local, node.start_mark.line, node.start_mark.column)
