"""Run the ``tetik`` command line as a user would: a child process, its output captured."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping


def tetik(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``tetik ARGS`` (``python -m cli.main``) with this environment plus ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
