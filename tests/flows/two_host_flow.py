"""A trivial Bytewax dataflow run as one process of a cluster, for the two-host test.

``python -m tests.flows.two_host_flow OUT_DIR PROCESS_ID ADDRESS...`` runs process
PROCESS_ID (one worker) of a cluster whose processes listen on ``ADDRESS...``
(``host:port``, one per process, the same list in each). The flow counts the items of
:data:`ITEMS` by key; the worker that owns a key writes ``key count`` to
``OUT_DIR/worker-<index>.txt`` once the input ends. Together the files hold
``Counter(ITEMS)``, each key in exactly one of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.run import cli_main
from bytewax.testing import TestingSource

KEYS = 24
ITEMS = [f"k{(i * 7) % KEYS:02d}" for i in range(600)]


class _WorkerFile(StatelessSinkPartition[tuple[str, int]]):
    def __init__(self, path: Path) -> None:
        self._file = path.open("a")

    def write_batch(self, items: list[tuple[str, int]]) -> None:
        for key, count in items:
            self._file.write(f"{key} {count}\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class WorkerFiles(DynamicSink[tuple[str, int]]):
    """One file per worker: ``worker-<index>.txt`` in ``out``."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _WorkerFile:
        del step_id, worker_count
        return _WorkerFile(self.out / f"worker-{worker_index}.txt")


def build(out: Path) -> Dataflow:
    """Items -> keyed by themselves -> final count per key -> the owning worker's file."""
    flow = Dataflow("two_hosts")
    items = op.input("items", flow, TestingSource(ITEMS))
    counts = op.count_final("count", items, lambda item: item)
    op.output("files", counts, WorkerFiles(out))
    return flow


def main(argv: list[str]) -> None:
    out, process_id, addresses = Path(argv[0]), int(argv[1]), argv[2:]
    cli_main(  # type: ignore[no-untyped-call]
        build(out), workers_per_process=1, process_id=process_id, addresses=addresses
    )


if __name__ == "__main__":
    main(sys.argv[1:])
