"""Checks ``TETIK_FUZZ_EXAMPLES`` once, before any fuzz target is collected.

A bad value stops the run with one line (``ERROR: TETIK_FUZZ_EXAMPLES=...``)
instead of a collection error per module.
"""

from __future__ import annotations

import pytest

from tests.fuzz.support import ENV, long_examples


def pytest_configure(config: pytest.Config) -> None:
    try:
        long_examples()
    except ValueError as exc:
        raise pytest.UsageError(f"{ENV}: {exc}") from None
