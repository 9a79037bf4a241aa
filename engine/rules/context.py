"""What a compiled expression sees when it runs.

Rules of this interface:

* A compiled expression is a callable ``(Context) -> value``; it never raises
  for missing data: a missing field, profile attribute or window is ``None``
  (``null``), and comparisons with ``null`` other than ``==``/``!=`` are false.
* ``event`` is the event being evaluated (the trigger in ``trigger.if`` and
  ``audience``, the exit event in ``exit.if``, the event that made a step run,
  or ``None`` when a timer ran it); ``entry`` is the event that started the
  enrollment (``None`` before there is one).
* ``actions`` holds the ``action_id`` of every action this enrollment emitted,
  for ``engaged(CHANNEL [, KIND])``.
* ``it`` is bound only inside a window function's ``WHERE`` argument.
* ``rfm`` holds the base's RFM boundaries by refresh instant (the engine's
  :class:`~engine.rfm.RfmBook`); ``rfm()`` reads those in force at ``now``.
  None: no boundaries, so ``rfm()`` is ``null``.
* ``catalog`` answers ``product(ID)`` and ``bought_together(ID, N)``
  (:class:`~engine.catalog.CatalogReader`); None: no catalog, both are
  ``null`` and ``[]``.
* ``windows`` are the engine's bounds: window reads ignore records older than
  their retention cutoff at ``now`` (:mod:`engine.retention`), and months are
  those of its ``timezone`` (the rules'). The engine passes its own.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Final

from engine.catalog import CatalogReader
from engine.events import Event
from engine.rfm import RfmBook
from engine.state import UserState
from engine.windows import DEFAULT_CONFIG, Stored, WindowConfig

NOT_YET: Final = object()  # Context.rfm_score before rfm() ran


@dataclass(slots=True)
class Context:
    """The inputs of one evaluation."""

    state: UserState
    now: int
    event: Event | None = None
    entry: Event | None = None
    actions: Collection[str] = field(default_factory=frozenset)
    it: Stored | None = None
    rfm: RfmBook | None = None
    windows: WindowConfig = DEFAULT_CONFIG
    # rfm()'s answer once computed in this evaluation (it reads only state, now, rfm)
    rfm_score: Any = NOT_YET
    catalog: CatalogReader | None = None
