"""``tetik chaos``: run the fault scenarios, print the table, exit 0 only if all passed.

Rules of this interface:

* :func:`run_chaos` runs the chosen scenarios (all by default, in
  :data:`chaos.scenarios.SCENARIOS` order) one after the other, each on its
  own fresh servers. The terminal gets a progress line per scenario and the
  final table; ``DIR/chaos.log`` gets plain time-stamped lines (what was
  injected when, each scenario's figures), and each engine's log sits in
  ``DIR/<scenario>/engine.log``.
* Exit code: 0 when every scenario that ran passed (a skipped one, e.g.
  ``broker-restart`` without Java, says why and does not fail the run), 1
  when one failed, 2 for a bad argument.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from chaos.report import table, write_json
from chaos.scenarios import SCENARIOS, Context, Result, sizes
from engine.errors import ConfigError

__all__ = ["run_chaos"]

DEFAULT_DIR = Path(".tetik") / "chaos"


class Log:
    """Plain lines to the run's log file; ``say`` also puts them on stderr."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = path.open("a", encoding="utf-8")
        self.path = path

    def __call__(self, line: str) -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
        self._file.write(f"{stamp} {line}\n")
        self._file.flush()

    def say(self, line: str) -> None:
        self(line)
        print(f"tetik: {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._file.close()


def run_chaos(
    scenarios: Sequence[str] = (),
    *,
    short: bool = False,
    kills: int | None = None,
    freeze_s: float | None = None,
    seed: int = 11,
    json_path: str | None = None,
    out: str | None = None,
) -> int:
    """Run the scenarios (see the module rules); the process exit code."""
    names = list(dict.fromkeys(scenarios)) or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ConfigError(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    if kills is not None and kills < 1:
        raise ConfigError(f"--kills must be at least 1, got {kills}")
    workdir = Path(out) if out else DEFAULT_DIR / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    log = Log(workdir / "chaos.log")
    ctx = Context(sizes(short, kills, freeze_s), seed, workdir, log)
    log.say(f"chaos: {', '.join(names)} ({'short' if short else 'full'}, seed {seed}); "
            f"log in {log.path}")  # fmt: skip
    started = time.monotonic()
    results = [_one(name, ctx, log) for name in names]
    print(table(results), flush=True)
    if json_path:
        params = {"scenarios": names, "short": short, "seed": seed, "size": ctx.size}
        write_json(Path(json_path), results, params)
        log.say(f"wrote {json_path}")
    failed = [r.scenario for r in results if r.verdict == "FAIL"]
    outcome = f"FAILED: {', '.join(failed)}" if failed else "every scenario that ran passed"
    log.say(f"chaos finished in {time.monotonic() - started:.0f} s: {outcome}")
    log.close()
    return 1 if failed else 0


def _one(name: str, ctx: Context, log: Log) -> Result:
    """One scenario; an error inside it fails that scenario (traceback in the log only)."""
    log(f"{name}: start")
    try:
        result = SCENARIOS[name](ctx)
    except Exception as exc:  # the run goes on to the next scenario
        log(f"{name}: error\n{traceback.format_exc()}")
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        result = Result(scenario=name, verdict="FAIL", why=f"{why} (traceback in the log)")
    log(f"{name}: {result.verdict} {result.why} | {result}")
    return result
