"""Message templates: Jinja2 text compiled once at load, rendered safely at send time.

Rules of this interface:

* :func:`compile_template` turns one template field (e.g. an email ``subject``)
  into a :data:`~engine.rules.model.RenderFn`, or raises :class:`TemplateProblem`
  with the message and the 1-based line inside the template text. Syntax errors,
  unknown filters, unknown variable names, ``recursive`` loops and templates
  nested more than :data:`MAX_TEMPLATE_DEPTH` (40) levels deep (blocks,
  brackets, chained operators or filters counted together) are load errors;
  nothing else escapes.
* The variables a template may use are :data:`RENDER_VARIABLES`, which the runtime
  passes: ``profile`` (attributes), ``entry`` and ``event`` (events), ``cart``
  (``total``, ``count``, ``items``), ``user_id``, ``journey`` (its id) and ``now``
  (epoch ms), and from the catalog (SPEC section 10, :func:`product_vars`)
  ``product`` (the entry event's product's fields, ``product.name``; called,
  ``product(ID)`` gives another product's) and ``bought_together(ID, N)``
  (a list of product ids); loop and ``set`` variables and Jinja's globals (``range``,
  ``dict``, ``cycler``, ``joiner``, ``namespace``; not ``lipsum``) are allowed too.
* :func:`render_message` renders every field of one message under one budget
  and returns ``None`` when the message is over it: the engine then suppresses
  that send with reason ``template_error``. It never raises and never runs for
  long, whatever the template.
* Within the budget, an ordinary runtime error (a division by zero, an unsafe
  attribute, an error of a filter) renders its field as ``""``, and a missing
  value (``{{ profile.x.y.z }}``) or ``None`` renders as empty text. A
  :data:`RenderFn` called alone has a budget of its own and renders ``""`` when
  over it; it never raises.
* Templates run in Jinja2's immutable sandbox with autoescape off (content is
  plain text for every channel): no attribute starting with ``_``, no method
  that mutates the runtime's data. ``a.b`` on a mapping prefers its key ``b``
  over a method of the same name, so ``cart.items`` is the list of product ids.

The budget of one message (all its fields together), deterministic so that
replay and the live engine agree:

* output: at most :data:`MAX_OUTPUT_CHARS` (65,536) characters in all fields,
  well below Kafka's 1 MB message limit;
* work: at most :data:`MAX_WORK` (50,000) steps, a step being one loop
  iteration, one call (macros, methods, ``range``...), one filter, one item a
  filter pulls from a lazy sequence, one value visited to size a collection;
  ``range(n)`` costs ``n`` steps at once;
* text produced: at most :data:`MAX_PRODUCED_CHARS` (1,048,576) characters
  built in total, counting ``{{ }}`` output (also inside ``set`` blocks and
  macros), the literal text of each loop iteration, and every string a call,
  filter, ``~`` or ``+`` builds;
* values: no single string or list may be longer than :data:`MAX_VALUE`
  (65,536 characters or items). Operations whose result is a product of their
  inputs are checked *before* they run: ``*`` and ``**`` (and integers of more
  than :data:`MAX_INT_BITS` bits), ``+``, ``~``, ``%`` and ``str.format``
  widths, the ``join``, ``replace``, ``indent``, ``wordwrap``, ``center``,
  ``format``, ``batch``, ``slice`` and ``sum`` filters, and the string methods
  ``replace``, ``join``, ``center``, ``ljust``, ``rjust``, ``zfill``,
  ``expandtabs``, ``format``. A filter's other text arguments are at most
  :data:`MAX_ARGUMENT_CHARS` (1,024) characters.

Last resort, not deterministic: a message that has rendered for more than
:data:`MAX_SECONDS` (50 ms of wall time) is over budget too, checked at every
step. The deterministic bounds stop runaway templates long before it on an
idle machine (the whole work budget takes 5 to 20 ms), so it only matters on a
machine too loaded to keep up, where replay could then disagree with the live
engine.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from contextvars import ContextVar
from typing import Any, Final, cast

from jinja2 import ChainableUndefined, TemplateSyntaxError, Undefined, meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg

from engine.events import suggest
from engine.rules.model import RenderFn

RENDER_VARIABLES: Final = (
    "profile", "entry", "event", "cart", "user_id", "journey", "now", "product", "bought_together",
)  # fmt: skip
MAX_OUTPUT_CHARS: Final = 65_536  # all fields of one message together
MAX_WORK: Final = 10_000  # steps of one message
MAX_PRODUCED_CHARS: Final = 1_048_576  # text built while rendering one message
MAX_VALUE: Final = 65_536  # characters of one string, items of one list
MAX_REPEAT: Final = 10_000  # longest string or list `*` may build
MAX_EXPONENT: Final = 100
MAX_INT_BITS: Final = 100_000
MAX_ARGUMENT_CHARS: Final = 1_024
MAX_SECONDS: Final = 0.05
MAX_TEMPLATE_DEPTH: Final = 40  # levels of the parsed template (blocks, operators, filters)
_TOO_DEEP: Final = (
    f"the template nests more than {MAX_TEMPLATE_DEPTH} levels deep (blocks, brackets, "
    "chained operators or filters); simplify it"
)
LOOP_FILTER: Final = "tetik loop"  # not a name a template can write
_NO_FILTER = re.compile(r"No (filter|test) named '([^']+)'")
_FORMAT_SPEC = re.compile(r"%[^a-zA-Z%]*|\{[^{}]*\}")
_NUMBER = re.compile(r"\d+")


class TemplateProblem(Exception):
    """A template does not compile: ``message`` and 1-based ``lineno`` in its text."""

    def __init__(self, message: str, lineno: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.lineno = lineno


class OverBudget(Exception):
    """A message went over its rendering budget; the message names the bound."""


class _Budget:
    """What one message has spent so far (see the module's budget)."""

    __slots__ = ("deadline", "output", "produced", "work")

    def __init__(self) -> None:
        self.work = 0
        self.produced = 0
        self.output = 0
        self.deadline = time.monotonic() + MAX_SECONDS

    def step(self, count: int = 1) -> None:
        self.work += count
        if self.work > MAX_WORK:
            raise OverBudget(f"more than {MAX_WORK:,} steps (loop iterations, calls, filters)")
        self._clock()

    def produce(self, chars: int) -> None:
        self.produced += chars
        if self.produced > MAX_PRODUCED_CHARS:
            raise OverBudget(f"built more than {MAX_PRODUCED_CHARS:,} characters of text")
        self._clock()

    def _clock(self) -> None:
        if time.monotonic() > self.deadline:
            raise OverBudget(f"rendering took more than {MAX_SECONDS * 1000:.0f} ms")

    def emit(self, chars: int) -> None:
        self.output += chars
        if self.output > MAX_OUTPUT_CHARS:
            raise OverBudget(f"the message is longer than {MAX_OUTPUT_CHARS:,} characters")


_BUDGET: ContextVar[_Budget | None] = ContextVar("tetik_template_budget", default=None)


def _budget() -> _Budget:
    """The budget of the message being rendered (a fresh one outside a render)."""
    return _BUDGET.get() or _Budget()


def _too_big(what: str, size: int) -> OverBudget:
    return OverBudget(f"{what} would be {size:,} long, more than {MAX_VALUE:,}")


def _size(value: Any, budget: _Budget, limit: int = MAX_VALUE) -> int:
    """Characters ``str(value)`` would have, about; OverBudget past ``limit``.

    Each value visited is a step, so sizing a collection costs its size.
    """
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        budget.step()
        kind = type(item)
        if kind is str or kind is bytes:
            total += len(item) + 2
        elif kind is int:
            total += item.bit_length() // 3 + 2
        elif kind is float:  # before the isinstance tests below: a price, often
            total += 24
        elif kind is list or kind is tuple or isinstance(item, list | tuple | set | frozenset):
            total += 2 * len(item) + 2
            stack.extend(item)
        elif isinstance(item, Mapping):
            total += 4 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            total += 24 if not isinstance(item, str) else len(item) + 2
        if total > limit:
            raise _too_big("a value's text", total)
    return total


def _charge(value: Any, budget: _Budget) -> Any:
    """Count a value just built: text as produced characters, collections by length."""
    if isinstance(value, str):
        if len(value) > MAX_VALUE:
            raise _too_big("a string", len(value))
        budget.produce(len(value))
    elif isinstance(value, Sized) and not isinstance(value, Undefined):
        if len(value) > MAX_VALUE:
            raise _too_big("a collection", len(value))
        budget.step()
    elif isinstance(value, Iterator):
        return _counted(value, budget)
    return value


def _counted(items: Iterable[Any], budget: _Budget) -> Iterator[Any]:
    """``items``, one step per item."""
    for count, item in enumerate(items, 1):
        budget.step()
        if count > MAX_VALUE:
            raise _too_big("a sequence", count)
        yield item


def _check_format(text: str, args: Iterable[Any]) -> None:
    """Refuse ``%``/``{}`` specifications asking for a width over MAX_VALUE."""
    for spec in _FORMAT_SPEC.findall(text):
        widths = [int(n) for n in _NUMBER.findall(spec) if len(n) < 12] or [0]
        if max(widths) > MAX_VALUE or any(len(n) >= 12 for n in _NUMBER.findall(spec)):
            raise _too_big(f"the format {spec!r}", max(widths))
        if "*" in spec and any(isinstance(a, int) and a > MAX_VALUE for a in args):
            raise _too_big(f"the format {spec!r}", MAX_VALUE + 1)


def _product(what: str, size: int) -> None:
    if size > MAX_VALUE:
        raise _too_big(what, size)


def _check_replace(text: Any, old: Any, new: Any, count: Any = None) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        hits = text.count(old) if old else len(text) + 1
        if isinstance(count, int) and count >= 0:
            hits = min(hits, count)
        _product("replace's result", len(text) + hits * len(new))


def _check_join(items: list[Any], sep: Any, budget: _Budget) -> None:
    total = sum(_size(item, budget) for item in items)
    _product("join's result", total + len(items) * len(str(sep)))


def _check_indent(value: Any, width: Any = 4, **kwargs: Any) -> None:
    width = kwargs.get("width", width)
    pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    _product("indent's result", len(str(value)) * (1 + pad))


def _check_wordwrap(
    value: Any, width: Any = 79, words: Any = True, wrap: Any = None, *_: Any, **kwargs: Any
) -> None:
    wrap = kwargs.get("wrapstring", wrap)
    _product(
        "wordwrap's result", len(str(value)) * (1 + len(wrap if isinstance(wrap, str) else "\n"))
    )


def _check_sum(attribute: Any = None, start: Any = 0, **kwargs: Any) -> None:
    if isinstance(kwargs.get("start", start), Sized):
        raise SecurityError("sum adds numbers only; use join for text")


def _check_width(what: str, width: Any) -> None:
    if isinstance(width, int) and width > MAX_VALUE:
        raise _too_big(what, width)


def _repeat(left: Any, right: Any) -> int:
    """Length of the sequence ``left * right`` builds (0 for numbers)."""
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, str | list | tuple) and isinstance(times, int):
            return len(seq) * times
    return 0


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse an operation whose result would be too big, before it runs."""
    ints = isinstance(left, int) and isinstance(right, int)
    if operator == "**" and ints:
        if abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is larger than {MAX_EXPONENT}")
        _check_bits(abs(left).bit_length() * max(right, 0))
    elif operator == "*":
        if _repeat(left, right) > MAX_REPEAT:
            raise OverBudget(f"`*` would build more than {MAX_REPEAT:,} items")
        if ints:
            _check_bits(abs(left).bit_length() + abs(right).bit_length())
    elif operator == "+" and isinstance(left, str | list | tuple) and isinstance(right, Sized):
        _product("`+`'s result", len(left) + len(right))
    elif operator == "%" and isinstance(left, str):
        _check_format(left, right if isinstance(right, tuple) else (right,))


def _check_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise OverBudget(f"a number would have more than {MAX_INT_BITS:,} bits")


# str methods whose result can be much longer than their inputs, with their checks.
_STR_METHODS: Final[dict[str, Callable[..., None]]] = {
    "center": lambda s, width=0, *_: _check_width("center's width", width),
    "ljust": lambda s, width=0, *_: _check_width("ljust's width", width),
    "rjust": lambda s, width=0, *_: _check_width("rjust's width", width),
    "zfill": lambda s, width=0, *_: _check_width("zfill's width", width),
    "expandtabs": lambda s, size=8, *_: _product("expandtabs' result", s.count("\t") * size),
    "replace": _check_replace,
    "format": lambda s, *args, **kwargs: _check_format(s, (*args, *kwargs.values())),
    "format_map": lambda s, *args: _check_format(s, ()),
}


class _Generator(CodeGenerator):
    """Jinja's code generator, with ``~`` counted and bounded like ``+``."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.tetik_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, charging the message's budget (see the module rules)."""

    code_generator_class = _Generator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.step()
        _check_binop(operator, left, right)
        return _charge(super().call_binop(context, operator, left, right), budget)

    def getattr(self, obj: Any, attribute: str) -> Any:
        """``cart.items`` is the key ``items`` of a mapping, not the ``dict.items`` method."""
        if isinstance(obj, (dict, Mapping)) and attribute in obj:  # a dict first: no ABC check
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        owner = getattr(method, "__self__", None)
        name = getattr(method, "__name__", "")
        if isinstance(owner, str) and name in _STR_METHODS:
            _STR_METHODS[name](owner, *args, **kwargs)
        elif isinstance(owner, str) and name == "join" and args:
            items = list(_counted(args[0], budget))
            _check_join(items, owner, budget)
            args = (items, *args[1:])
        result = ImmutableSandboxedEnvironment.call(__self, __context, __obj, *args, **kwargs)
        return _charge(result, budget)

    @staticmethod
    def tetik_concat(parts: tuple[Any, ...]) -> str:
        """``a ~ b``: checked against MAX_VALUE before it is built, then charged."""
        budget = _budget()
        texts = [part if isinstance(part, str) else str(_sized(part, budget)) for part in parts]
        total = sum(len(text) for text in texts)
        _product("`~`'s result", total)
        budget.produce(total)
        return "".join(texts)


def _sized(value: Any, budget: _Budget) -> Any:
    """``value``, after checking its text would be at most MAX_VALUE long."""
    if not isinstance(value, str | int | float | Undefined) and value is not None:
        _size(value, budget)
    return value


def _finalize(value: Any) -> Any:
    """Each ``{{ x }}``: ``None`` renders nothing, like a missing value; the text is charged."""
    if value is None:
        return ""
    budget = _budget()
    budget.produce(len(value) if isinstance(value, str) else _size(_sized(value, budget), budget))
    return value


def _loop(items: Any, weight: int) -> Iterator[Any]:
    """A ``for`` loop's items: each is a step plus the literal text its body writes."""
    budget = _budget()
    for item in items:
        budget.step()
        if weight:
            budget.produce(weight)
        yield item


def _range(*args: int) -> range:
    """``range``, costing one step per number."""
    numbers = range(*args)
    _budget().step(len(numbers))
    return numbers


# Filter name -> check of its arguments (the value filtered first) before it runs.
_FILTER_CHECKS: Final[dict[str, Callable[..., None]]] = {
    "replace": _check_replace,
    "center": lambda value, width=80, *_: _check_width("center's width", width),
    "batch": lambda value, count=1, *_: _check_width("batch's size", count),
    "slice": lambda value, count=1, *_: _check_width("slice's count", count),
    "format": lambda value, *args, **kwargs: _check_format(str(value), (*args, *kwargs.values())),
    "indent": lambda value, width=4, *_, **kwargs: _check_indent(value, width, **kwargs),
    "wordwrap": lambda value, *args, **kwargs: _check_wordwrap(value, *args, **kwargs),
    "sum": lambda value, *args, **kwargs: _check_sum(*args, **kwargs),
}
_SIZED_FILTERS: Final = frozenset(
    {"join", "sum", "string", "pprint", "tojson", "urlencode", "xmlattr", "e", "escape"}
    | {"forceescape", "list", "unique", "sort", "dictsort", "groupby", "map", "select"}
)


def _guard_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` charging the budget and checked against values too big (see the module)."""
    skip = 0 if _PassArg.from_obj(fn) is None else 1

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        head, value, rest = args[:skip], args[skip], args[skip + 1 :]
        for arg in (*rest, *kwargs.values()):
            if isinstance(arg, str) and len(arg) > MAX_ARGUMENT_CHARS:
                raise OverBudget(f"an argument of {name} is longer than {MAX_ARGUMENT_CHARS:,}")
        if isinstance(value, Iterator):
            value = list(_counted(value, budget))
        if name in _SIZED_FILTERS:
            _size(_sized(value, budget), budget)
        if name == "join":
            _check_join(list(value), rest[0] if rest else kwargs.get("d", ""), budget)
        elif name in _FILTER_CHECKS:
            _FILTER_CHECKS[name](value, *rest, **kwargs)
        return _charge(fn(*head, value, *rest, **kwargs), budget)

    return guarded


class ProductVars(dict[str, Any]):
    """``product`` in a template: the entry product's fields, callable as ``product(ID)``."""

    def __init__(self, fields: Mapping[str, Any], catalog: Any) -> None:
        super().__init__(fields)
        self._catalog = catalog

    def __call__(self, product_id: Any) -> dict[str, Any]:
        if self._catalog is None or type(product_id) is not str:
            return {}
        record = self._catalog.product(product_id)
        return {} if record is None else record.fields()


def product_vars(catalog: Any, product_id: str | None) -> dict[str, Any]:
    """The catalog's template variables for an entry event about ``product_id``."""
    record = None if catalog is None or type(product_id) is not str else catalog.product(product_id)

    def bought_together(pid: Any, n: Any = 3) -> list[str]:
        if catalog is None or type(pid) is not str or type(n) is not int:
            return []
        return list(catalog.bought_together(pid, n))

    fields = {} if record is None else record.fields()
    return {"product": ProductVars(fields, catalog), "bought_together": bought_together}


def _environment() -> _Sandbox:
    env = _Sandbox(undefined=ChainableUndefined, autoescape=False, finalize=_finalize)
    env.filters = {name: _guard_filter(name, fn) for name, fn in env.filters.items()}
    env.filters[LOOP_FILTER] = _loop
    env.globals["range"] = _range
    del env.globals["lipsum"]
    return env


_ENV: Final = _environment()


def compile_template(source: str) -> RenderFn:
    """Compile one template field; raise TemplateProblem when it cannot render."""
    try:
        tree = _ENV.parse(source)
        _check_depth(tree)
        _check_names(tree, source)
        _budget_loops(tree)
        template = _ENV.from_string(tree)
        # A plain dict, not Jinja's ChainMap over the environment's: each render
        # copies the globals into its context, and a dict copies in C.
        template.globals = dict(template.globals)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(_explain(exc.message or str(exc)), exc.lineno) from None
    except (RecursionError, SyntaxError, MemoryError):  # Jinja's parser or Python's compiler
        raise TemplateProblem(_TOO_DEEP) from None

    def render(variables: Mapping[str, Any]) -> str:
        shared = _BUDGET.get()
        token = _BUDGET.set(shared or _Budget())
        try:
            # Template.generate without its traceback rewriting (an error renders
            # as "" here, so nobody reads the rewritten traceback).
            context = template.new_context(cast("dict[str, Any]", variables))  # only unpacked
            return _stream(template.root_render_func(context))
        except OverBudget:
            if shared is not None:
                raise
            return ""
        except Exception:  # an ordinary error must never break a send; the field is empty
            return ""
        finally:
            _BUDGET.reset(token)

    render.names = frozenset(meta.find_undeclared_variables(tree))  # type: ignore[attr-defined]
    return render


def template_names(render: RenderFn) -> frozenset[str]:
    """The runtime variables a compiled template reads (e.g. ``product``)."""
    names: frozenset[str] = getattr(render, "names", frozenset())
    return names


def _stream(chunks: Iterator[str]) -> str:
    """The template's output, stopped as soon as the message is over its output cap."""
    budget = _budget()
    out = []
    for chunk in chunks:
        budget.emit(len(chunk))
        out.append(chunk)
    return "".join(out)


def _check_depth(tree: nodes.Template) -> None:
    """Refuse a template nesting deeper than MAX_TEMPLATE_DEPTH, without recursing."""
    stack: list[tuple[nodes.Node, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_TEMPLATE_DEPTH:
            raise TemplateSyntaxError(_TOO_DEEP, node.lineno or 1)
        stack.extend((child, depth + 1) for child in node.iter_child_nodes())


def _budget_loops(tree: nodes.Template) -> None:
    """Make every ``for`` loop charge the budget per iteration; refuse recursive loops."""
    for loop in tree.find_all(nodes.For):
        if loop.recursive:
            raise TemplateSyntaxError(
                "recursive loops are not allowed in templates; use a plain for loop", loop.lineno
            )
        weight = sum(
            len(data.data) for node in loop.body for data in node.find_all(nodes.TemplateData)
        )
        loop.iter = nodes.Filter(
            loop.iter, LOOP_FILTER, [nodes.Const(weight)], [], None, None, lineno=loop.lineno
        )


def _check_names(tree: Any, source: str) -> None:
    """Reject a variable the runtime never passes (e.g. ``profle``), at its first line."""
    unknown = sorted(meta.find_undeclared_variables(tree) - set(RENDER_VARIABLES))
    if unknown:
        name = unknown[0]
        found = re.search(rf"\b{re.escape(name)}\b", source)
        lineno = source.count("\n", 0, found.start()) + 1 if found else 1
        raise TemplateProblem(
            f"unknown variable {name!r}{suggest(name, RENDER_VARIABLES)}; "
            f"templates see {', '.join(RENDER_VARIABLES)}",
            lineno,
        )


def _explain(message: str) -> str:
    """Add a "did you mean" to Jinja's unknown-filter/test messages."""
    match = _NO_FILTER.search(message)
    if not match:
        return message
    known = _ENV.filters if match.group(1) == "filter" else _ENV.tests
    names = [name for name in known if name != LOOP_FILTER]
    return message.rstrip(".") + suggest(match.group(2), names)


def render_message(
    fields: Mapping[str, RenderFn], variables: Mapping[str, Any]
) -> dict[str, str] | None:
    """Every field of one message under one budget; None when it is over the budget."""
    token = _BUDGET.set(_Budget())
    try:
        return {name: render(variables) for name, render in fields.items()}
    except OverBudget:
        return None
    finally:
        _BUDGET.reset(token)


def render_fields(fields: Mapping[str, RenderFn], variables: Mapping[str, Any]) -> dict[str, str]:
    """Every field of one channel's template, each under its own budget (never None)."""
    return {name: render(variables) for name, render in fields.items()}
