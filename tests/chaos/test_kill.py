"""A real, short ``kill`` scenario: ``tetik run`` SIGKILLed while events flow, judged by replay."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson
import pytest

from chaos.scenarios import Context, kill, sizes

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.scenario]


def test_random_kills_lose_and_double_nothing(tmp_path: Path) -> None:
    size = dataclasses.replace(sizes(short=True), kills=3, tail_s=5.0, drain_s=30.0)
    lines: list[str] = []
    result = kill(Context(size, seed=5, workdir=tmp_path, log=lines.append))
    print("\n".join(lines))
    assert result.faults == 3
    assert result.expected > 50  # carts, reminders and thanks: enough to prove something
    figures = (result.duplicate, result.missing, result.unexpected, result.different)
    assert figures == (0, 0, 0, 0), orjson.dumps(result.examples)
    assert result.engine_exits == 0, result.exit_lines
    assert result.verdict == "pass", result.why
    assert result.recover_first_s is not None
    assert result.recover_first_s < 20
    assert sum(1 for line in lines if "engine killed and started again" in line) == 3
