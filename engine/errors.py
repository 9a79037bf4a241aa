"""The one exception hierarchy of tetik.

Every error a user can cause derives from :class:`TetikError`, so the command
line and the flows catch one type and print its message. Messages say what was
wrong, with the offending value, and what to do where that is known.
"""

from __future__ import annotations


class TetikError(Exception):
    """Base class of every error tetik reports to a user."""


class InvalidEvent(TetikError):
    """An event breaks a rule of the event contract (SPEC section 1).

    ``reason`` is a one-line explanation naming the field and the bad value;
    the flows write it to the dead-letter topic beside the original bytes.
    """

    def __init__(self, reason: str) -> None:
        reason = one_line(reason)
        super().__init__(reason)
        self.reason = reason


def one_line(text: str) -> str:
    """``text`` with its line breaks (any of Python's) written as ``\\n``."""
    return "\\n".join(text.splitlines())


class ConfigError(TetikError):
    """A configuration value (environment, window settings) is unusable."""


class ExpressionError(TetikError):
    """An expression of the rules language does not parse or type-check.

    ``offset`` is the 0-based character position in the expression text where
    the problem is; the rules loader turns it into a file line and column.
    """

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


class RulesError(TetikError):
    """A rules file is rejected; ``problems`` lists every ``FILE:LINE:COL: message``.

    The whole file is rejected: rules already running stay in force.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
