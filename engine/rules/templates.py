"""Message templates: Jinja2 text compiled once at load, rendered safely at send time.

Rules of this interface:

* :func:`compile_template` turns one template field (e.g. an email ``subject``)
  into a :data:`~engine.rules.model.RenderFn`, or raises :class:`TemplateProblem`
  with the message and the 1-based line inside the template text. Syntax errors,
  unknown filters and unknown variable names are load errors.
* The variables a template may use are :data:`RENDER_VARIABLES`, which the runtime
  passes: ``profile`` (attributes), ``entry`` and ``event`` (events), ``cart``
  (``total``, ``count``, ``items``), ``user_id``, ``journey`` (its id) and ``now``
  (epoch ms); loop and ``set`` variables and Jinja's own globals are allowed too.
* Rendering never raises: a missing value (``{{ profile.x.y.z }}``) and ``None``
  render as empty text, and any runtime error (a division by zero, an unsafe
  attribute, an error of a filter) renders the whole field as ``""``.
* Templates run in Jinja2's immutable sandbox with autoescape off (content is
  plain text for every channel): no attribute starting with ``_``, no method
  that mutates the runtime's data, bounded ``range``, and ``*``/``**`` refuse
  to build huge values. ``a.b`` on a mapping prefers its key ``b`` over a
  method of the same name, so ``cart.items`` is the list of product ids.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from jinja2 import ChainableUndefined, TemplateSyntaxError, meta
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.events import suggest
from engine.rules.model import RenderFn

RENDER_VARIABLES: Final = ("profile", "entry", "event", "cart", "user_id", "journey", "now")
MAX_REPEAT: Final = 10_000  # longest string or list `*` may build
MAX_EXPONENT: Final = 100
_NO_FILTER = re.compile(r"No (filter|test) named '([^']+)'")


class TemplateProblem(Exception):
    """A template does not compile: ``message`` and 1-based ``lineno`` in its text."""

    def __init__(self, message: str, lineno: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.lineno = lineno


def _blank_none(value: Any) -> Any:
    """``{{ x }}`` with ``x`` None renders nothing, like a missing value."""
    return "" if value is None else value


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with ``*`` and ``**`` bounded against memory bombs."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is larger than {MAX_EXPONENT}")
        if operator == "*" and _repeat(left, right) > MAX_REPEAT:
            raise SecurityError(f"`*` would build more than {MAX_REPEAT} items")
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        """``cart.items`` is the key ``items`` of a mapping, not the ``dict.items`` method."""
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


def _repeat(left: Any, right: Any) -> int:
    """Length of the sequence ``left * right`` builds (0 for numbers)."""
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, str | list | tuple) and isinstance(times, int):
            return len(seq) * times
    return 0


_ENV: Final = _Sandbox(undefined=ChainableUndefined, autoescape=False, finalize=_blank_none)


def compile_template(source: str) -> RenderFn:
    """Compile one template field; raise TemplateProblem when it cannot render."""
    try:
        tree = _ENV.parse(source)
        _check_names(tree, source)
        template = _ENV.from_string(tree)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(_explain(exc.message or str(exc)), exc.lineno) from None

    def render(variables: Mapping[str, Any]) -> str:
        try:
            return template.render(variables)
        except Exception:  # a template must never break a send; the field is empty
            return ""

    return render


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
    return message.rstrip(".") + suggest(match.group(2), known)


def render_fields(fields: Mapping[str, RenderFn], variables: Mapping[str, Any]) -> dict[str, str]:
    """Render every field of one channel's template (the action's ``content``)."""
    return {name: render(variables) for name, render in fields.items()}
