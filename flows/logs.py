"""The log: every diagnostic line of every job, configured in one place.

Rules of this interface:

* :func:`configure` sets up the standard library's root logger once per
  process (the command line calls it first; :func:`ensure` does it from the
  environment for a job started any other way). Calling it again replaces
  its handler rather than adding one.
* Lines go to stderr (the stream ``sys.stderr`` is at the moment of writing,
  so a live view or a test that swaps it sees them); stdout stays for what a
  command prints as its result.
* ``TETIK_LOG_LEVEL`` (DEBUG, INFO, WARNING, ERROR; INFO by default) sets
  the level; ``TETIK_LOG_FORMAT=json`` writes one JSON object per line
  (``ts``, ``level``, ``logger``, ``message``, then any ``extra`` fields),
  anything else plain lines: ``tetik: MESSAGE`` at INFO, ``tetik: LEVEL:
  MESSAGE`` otherwise; a problem with a line of an input file
  (:func:`bad_line`, logger ``tetik.input``) stays ``FILE:LINE: reason`` in
  plain text, as compilers write it. Both are read by :mod:`flows.settings`.
* librdkafka's own lines (``%3|...|FAIL|...``) go to :data:`KAFKA` (a Kafka
  client's ``logger`` setting): kept out of the log unless the level is
  DEBUG, since tetik's own line says what a fault means and what to do.
* No e-mail address or phone number reaches a log: :class:`Redact` replaces
  them in the message, the ``extra`` fields and any traceback of every record
  the handler writes (third-party loggers' too).

Nothing here imports Bytewax, Kafka or Redis: any module may use it.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

import orjson

if TYPE_CHECKING:  # flows.settings imports modules that log: read it when configuring
    from flows.settings import LogConfig

__all__ = [
    "JsonFormatter",
    "Redact",
    "TextFormatter",
    "bad_line",
    "configure",
    "ensure",
    "redact",
]

# user@example.com, first.last+tag@mail.example.co.uk
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# E.164 and its usual spellings: +49 170 1234567, +1 (415) 555-0100, +447911123456.
# A leading + is required, so epoch milliseconds and counts are left alone.
PHONE = re.compile(r"\+[1-9](?:[ .\-()]{0,2}\d){6,14}")

# Problems with lines of an input file (an event log, a feed): FILE:LINE: reason.
INPUT = logging.getLogger("tetik.input")

# librdkafka's lines: give it as ``"logger": KAFKA`` in a Kafka client's settings.
KAFKA = logging.getLogger("tetik.kafka")
KAFKA.setLevel(logging.CRITICAL)

# The attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def bad_line(path: str, number: int, reason: str) -> None:
    """Log that line ``number`` of the input file ``path`` was left out, and why."""
    ensure()
    INPUT.warning("%s:%d: %s", path, number, reason, extra={"file": path, "line": number})


def redact(text: str) -> str:
    """``text`` with e-mail addresses and phone numbers replaced by placeholders."""
    return PHONE.sub("<phone>", EMAIL.sub("<email>", text))


class Redact(logging.Filter):
    """Redacts e-mail addresses and phone numbers from each record, in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        for name, value in extras(record).items():
            if isinstance(value, str):
                setattr(record, name, redact(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller added with ``extra=``."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    """``tetik: MESSAGE`` at INFO, ``tetik: warning: MESSAGE`` and so on otherwise."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        line = f"tetik: {level}{record.getMessage()}"
        if record.name == INPUT.name:
            line = record.getMessage()  # FILE:LINE: reason, as compilers write it
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (RFC 3339, UTC), ``level``, ``logger``,
    ``message``, the ``extra`` fields, and ``exc`` when there was an exception."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in extras(record).items():
            line.setdefault(name, value)
        if record.exc_text:
            line["exc"] = record.exc_text
        return orjson.dumps(line, default=str).decode()


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when a record is written."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass  # always the current stderr


def configure(config: LogConfig | None = None) -> None:
    """Set up the root logger (``config`` or the environment's), replacing our handler."""
    from flows.settings import log_config_from_env

    config = config or log_config_from_env()
    handler = _StderrHandler()
    handler.addFilter(Redact())
    handler.setFormatter(JsonFormatter() if config.json else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level)
    KAFKA.setLevel(logging.DEBUG if config.level == "DEBUG" else logging.CRITICAL)


def writes_json() -> bool:
    """Whether the log is configured to write JSON lines (``TETIK_LOG_FORMAT=json``)."""
    return any(
        isinstance(h, _StderrHandler) and isinstance(h.formatter, JsonFormatter)
        for h in logging.getLogger().handlers
    )


def ensure() -> None:
    """:func:`configure` from the environment, unless this process already did.

    A bad ``TETIK_LOG_*`` value falls back to the defaults here; the command
    line reports it (it configures first).
    """
    if any(isinstance(h, _StderrHandler) for h in logging.getLogger().handlers):
        return
    from engine.errors import ConfigError
    from flows.settings import LogConfig

    try:
        configure()
    except ConfigError:
        configure(LogConfig())
