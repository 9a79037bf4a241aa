"""``tetik --help`` and ``tetik --version``: every command explains itself.

Rules of this interface: :func:`explain_all` gives every subcommand (and
sub-subcommand) a description (its one-line ``help`` when it has none of its
own) and a formatter that shows each option's default, unless the option's
help already says it (the word "default", ``(VALUE)`` or a ``%(default)s``)
or it has no meaningful one (None, False, ""). :func:`version` is the installed package's.
"""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: X)`` to options whose help does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not meaningful(action.default) or "default" in text or f"({action.default})" in text:
            return action.help
        return super()._get_help_string(action)


def meaningful(default: object) -> bool:
    """A default worth showing: not None, False, an empty string or argparse's SUPPRESS."""
    return not (default is None or default is False or default in ("", argparse.SUPPRESS))


def explain_all(parser: argparse.ArgumentParser) -> None:
    """Describe every subcommand below ``parser`` and show their defaults."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, child in action.choices.items():
            child.formatter_class = DefaultsFormatter
            if not child.description:
                child.description = _sentence(helps.get(name))
            _name_defaults(child)
            explain_all(child)


def _name_defaults(parser: argparse.ArgumentParser) -> None:
    """Options without a help line get one that shows their default (argparse shows
    nothing for an option without help)."""
    for action in parser._actions:
        if action.help is None and action.option_strings and meaningful(action.default):
            action.help = "(default: %(default)s)"


def _sentence(text: str | None) -> str | None:
    """A one-line help as a description: capitalised, ending with a full stop."""
    if not text:
        return None
    text = text[0].upper() + text[1:]
    return text if text.endswith(".") else f"{text}."


def version() -> str:
    """The installed ``tetik`` distribution's version."""
    try:
        return package_version("tetik")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"
