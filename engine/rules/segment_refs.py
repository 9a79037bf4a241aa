"""``in_segment('NAME')``: a segment's condition used inside another condition (SPEC section 9).

Rules of this interface:

* :func:`segment_call` compiles ``in_segment('NAME')`` against the segments the
  caller knows (``segments``: name -> compiled condition, or None for one that
  did not compile, whose file is rejected anyway). It evaluates the segment's
  definition in the same context, at the same ``now``: the answer is exact at
  that moment, never the membership stored at the last event or recheck
  instant (which ``trigger: {segment: S}`` journeys watch).
* NAME is one quoted string; an unknown one raises
  :class:`~engine.errors.ExpressionError` with a "did you mean".
* :func:`referenced` lists the ``in_segment`` calls of a syntax tree, so that
  the loader can order segments by dependency and refuse cycles before any of
  them is compiled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from engine.errors import ExpressionError
from engine.events import suggest
from engine.rules.model import Condition
from engine.rules.nodes import Call, Literal, Name, Node, children
from engine.rules.typed import Typed, cut

FUNCTION = "in_segment"


def segment_name(node: Call) -> str:
    """The segment an ``in_segment`` call names; its argument must be one quoted string."""
    args = node.args
    if len(args) > 1:
        raise ExpressionError("too many arguments: in_segment('NAME')", args[1].start)
    if not args:
        raise ExpressionError("missing argument: in_segment('NAME')", node.end - 1)
    arg = args[0]
    if isinstance(arg, Name) and len(arg.parts) == 1:
        name = cut(arg.parts[0])
        raise ExpressionError(f"quote the segment name: in_segment('{name}')", arg.start)
    if not (isinstance(arg, Literal) and isinstance(arg.value, str)):
        raise ExpressionError(
            "in_segment takes a segment name in quotes, e.g. in_segment('loyal')", arg.start
        )
    return arg.value


def segment_call(node: Call, segments: Mapping[str, Condition | None] | None) -> Typed:
    """Compile ``in_segment('NAME')`` (see the module rules)."""
    name = segment_name(node)
    known = segments or {}
    if name not in known:
        hint = suggest(name, known) or (
            f"; segments defined: {', '.join(sorted(known))}"
            if known
            else "; define it under the top-level `segments:`"
        )
        raise ExpressionError(f"unknown segment {cut(name)!r}{hint}", node.args[0].start)
    cond = known[name]
    if cond is None:
        return Typed("bool", lambda ctx: False, sure=True)
    fn = cond.fn
    return Typed("bool", lambda ctx: fn(ctx) is True, sure=True)


def referenced(node: Node) -> list[tuple[str, Call]]:
    """Every well-formed ``in_segment('NAME')`` call in the tree, in source order."""
    found: list[tuple[str, Call]] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, Call) and current.name == FUNCTION:
            with contextlib.suppress(ExpressionError):  # the compiler reports it
                found.append((segment_name(current), current))
        stack.extend(reversed(children(current)))
    return found
