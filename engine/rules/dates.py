"""Date literals of the rules language: ``date('2024-01-01')``, ``date('2024-01-01T10:00')``.

Rules of this interface:

* :func:`parse_date` turns the text into epoch ms, read as a wall-clock time
  in the rules' ``timezone``, once, at load. Accepted forms: ``YYYY-MM-DD``
  (midnight), ``YYYY-MM-DDTHH:MM`` and ``YYYY-MM-DDTHH:MM:SS`` (a space may
  stand for the ``T``). Years 1970 to 2099, like event times.
* A wall-clock time that a daylight-saving change skips or repeats is read
  with the offset in force before the change (``fold=0``, Python's rule).
* Anything else raises ``ValueError`` with a message naming the problem and
  the accepted forms; the compiler turns it into a ``FILE:LINE:COL`` error.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo

FORMS: Final = "'YYYY-MM-DD' or 'YYYY-MM-DDTHH:MM'"
_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?)?\Z")


def parse_date(text: str, timezone: str) -> int:
    """Epoch ms of ``text`` read in ``timezone`` (see the module rules)."""
    match = _DATE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a date; expected {FORMS}")
    year, month, day, hour, minute, second = (int(part or 0) for part in match.groups())
    if not 1970 <= year <= 2099:
        raise ValueError(f"{text!r}: the year must be between 1970 and 2099")
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=ZoneInfo(timezone))
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid date ({exc}); expected {FORMS}") from None
    return int(moment.timestamp() * 1000)
