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
        super().__init__(reason)
        self.reason = reason


class ConfigError(TetikError):
    """A configuration value (environment, window settings) is unusable."""
