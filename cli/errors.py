"""What the command line says when a command fails: one line, never a traceback.

Rules of this interface: :func:`explain` turns an exception into the line
``tetik COMMAND: what went wrong; what to do`` and the exit code. Errors a
user can cause (a tetik error, a server that did not start, a file that
cannot be read, Redis or Kafka out of reach, a malformed URL) exit 2; Ctrl-C
exits 130; anything else is a bug: exit 1, with the traceback in the log at
DEBUG (``TETIK_LOG_LEVEL=DEBUG`` shows it).
"""

from __future__ import annotations

import logging

from engine.errors import TetikError
from flows.servers.process import ServerStartError

USAGE = 2  # a user can fix it (the project's exit code for every such error)
BUG = 1
INTERRUPTED = 130

REDIS_HINT = "start it, or point TETIK_REDIS_URL (or --redis) at a running server"
KAFKA_HINT = "start it, or point TETIK_KAFKA_BOOTSTRAP at a running broker"


def explain(command: str, exc: BaseException) -> tuple[str, int]:
    """The one line to print for ``exc`` raised by ``tetik COMMAND``, and the exit code."""
    if isinstance(exc, KeyboardInterrupt):
        return f"tetik {command}: interrupted", INTERRUPTED
    problem = _known(exc)
    if problem is not None:
        return f"tetik {command}: {problem}", USAGE
    logging.getLogger("tetik").debug("tetik %s failed", command, exc_info=exc)
    return (
        f"tetik {command}: unexpected {type(exc).__name__}: {_first_line(exc)}; "
        "run again with TETIK_LOG_LEVEL=DEBUG for the traceback, and report it",
        BUG,
    )


def _known(exc: BaseException) -> str | None:
    """The line for an error a user can cause, else None."""
    # The clients' errors are loaded here, on an error, not at every start of tetik.
    import redis
    from confluent_kafka import KafkaException

    if isinstance(exc, TetikError | ServerStartError):
        return str(exc)  # written for the user (a rules file's problems take a line each)
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {_os_reason(exc)}"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return f"cannot reach Redis ({_first_line(exc)}); {REDIS_HINT}"
    if isinstance(exc, redis.RedisError):
        return f"Redis refused the request ({_first_line(exc)}); check TETIK_REDIS_URL"
    if isinstance(exc, KafkaException):
        return f"Kafka failed ({_first_line(exc)}); {KAFKA_HINT}"
    if isinstance(exc, ValueError) and "URL" in str(exc):
        return f"{_first_line(exc)}; e.g. TETIK_REDIS_URL=redis://127.0.0.1:6379/0"
    return None


def _os_reason(exc: OSError) -> str:
    """Why a file could not be used, and what to do."""
    if isinstance(exc, FileNotFoundError):
        return "no such file or directory; check the path"
    if isinstance(exc, IsADirectoryError):
        return "is a directory; give a file"
    if isinstance(exc, PermissionError):
        return "permission denied; check the file's permissions"
    return f"{exc.strerror or type(exc).__name__}; check the path"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
