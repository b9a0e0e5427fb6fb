"""Running a suite: encoders trained once per (dataset, held-out class, seed) and cached with
their latents; flows cached per encoder; scorers reuse both. Every finished cell is appended
to ``results.jsonl``; rerunning skips what is done. The units run on any executor of
:mod:`flowkit.executors` (:mod:`flowkit.bench.units` is what each runs)."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowkit.artifact import package_versions
from flowkit.bench.data import BenchData, load_bench_data
from flowkit.bench.store import RunStore, git_sha
from flowkit.bench.suite import Cell, Suite
from flowkit.bench.units import (
    Sink,
    StoreSink,
    deliver,
    fail_unit,
    pack_cache,
    run_unit,
    unit_job,
    unit_pipeline,
    units_of,
)
from flowkit.detector import Detector
from flowkit.errors import ConfigError, FlowkitError
from flowkit.executors import Executor, LocalExecutor
from flowkit.plugins import notify
from flowkit.registry import encoders, flows, scorers
from flowkit.spec import Spec
from flowkit.training import resolve_device

__all__ = [
    "run_suite",
    "run_unit",
    "unit_pipeline",
    "units_of",
    "check_cells",
    "cell_scores",
    "load_bench_data",
    "BenchData",
    "Sink",
    "StoreSink",
]


def check_cells(cells: list[Cell], input_shape: tuple[int, int, int], device: str) -> None:
    """Build every distinct component of the grid once, untrained, exactly as ``flowkit
    train`` does: a bad spec or option stops the run before anything trains."""
    seen: set[tuple[str, ...]] = set()
    for cell in cells:
        combo = (cell.encoder, cell.preprocess, cell.flow, cell.scorer)
        if combo not in seen:
            seen.add(combo)
            Detector(**cell.detector_params(device)).check_config(input_shape)


def _plugin(registry: Any, spec: str) -> str:
    try:
        return registry.get(Spec.parse(spec).factory_args()[0]).plugin
    except FlowkitError:
        return "?"


class _Recorder:
    """Writes one record per finished (or failed) cell and tells the progress display."""

    def __init__(
        self,
        suite: Suite,
        store: RunStore,
        bench_data: BenchData,
        device: str,
        progress: Any,
        task: Any,
        on_cell: Callable[[dict[str, Any]], None] | None,
        threads: int | None = None,
    ) -> None:
        self.suite, self.store, self.bench_data = suite, store, bench_data
        self.progress, self.task, self.on_cell = progress, task, on_cell
        self.provenance = {
            "versions": package_versions(),
            "git_sha": git_sha(),
            "device": device,
            # the threads each unit ran on (the executor's), not the driver's
            "torch_threads": threads or torch.get_num_threads(),
        }

    def __call__(self, cell: Cell, status: str, **fields: Any) -> None:
        rec = {
            "cell_id": cell.cell_id,
            "status": status,
            "suite": self.suite.name,
            "config": cell.config(),
            "combination": cell.combination,
            "target_name": self.bench_data.target_name(cell),
            "data_name": self.bench_data.name,
            "encoder_key": cell.encoder_key,
            "flow_key": cell.flow_key,
            "plugins": {
                "encoder": _plugin(encoders, cell.encoder),
                "flow": _plugin(flows, cell.flow),
                "scorer": _plugin(scorers, cell.scorer),
            },
            "provenance": {**self.provenance, "seed": cell.seed},
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **fields,
        }
        self.store.append(rec)
        notify("flowkit_bench_record", record=rec, run_dir=self.store.root)
        if self.progress is not None:
            self.progress.advance(self.task)
        if self.on_cell is not None:
            self.on_cell(rec)


def run_suite(
    suite: Suite,
    out_dir: str | Path,
    *,
    data_root: Any = None,
    download: bool = True,
    device: str = "auto",
    cache: str | Path | None = None,
    retry_failed: bool = True,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
    progress: Any = None,
    data: BenchData | None = None,
    executor: Executor | None = None,
) -> RunStore:
    """Run (or resume) ``suite`` into ``out_dir``; returns the store holding its results.

    One process at a time holds ``out_dir`` (a second raises :class:`RunLockedError` naming
    the holder's pid). Every component of the grid is built once, untrained, before anything
    trains. ``on_cell`` is called with each record as it is written (the CLI's live table).
    ``executor`` (:mod:`flowkit.executors`: auto, local, process, ray; None: local)
    runs the units; only this process writes the run directory and the cache, whatever the
    executor.
    """
    dev = str(resolve_device(device))
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ConfigError(f"out_dir {out_dir} is a file, not a run directory")
    # Everything that can be refused is refused before the run directory is touched.
    bench_data = data or load_bench_data(suite, data_root, download)
    cells = suite.cells(bench_data.targets(suite))
    check_cells(cells, bench_data.input_shape(), dev)
    store = RunStore(out_dir, cache, create=True)
    with store.lock():
        previous = {}
        for r in store.records():
            previous[r["cell_id"]] = r
            # a record written under earlier field names counts for the cell it describes
            current = _current_cell_id(r["config"])
            if current is not None:
                previous.setdefault(current, r)
        todo = [
            c
            for c in cells
            if c.cell_id not in previous or (retry_failed and previous[c.cell_id]["status"] != "ok")
        ]
        task = (
            progress.add_task("cells", total=len(cells), completed=len(cells) - len(todo))
            if progress is not None
            else None
        )
        units = units_of(todo)
        plan = (executor or LocalExecutor()).plan(len(units), dev)
        record = _Recorder(suite, store, bench_data, dev, progress, task, on_cell, plan.threads)
        sink = StoreSink(store, record)
        # a live display only reaches units run in this process
        job = unit_job(units, bench_data, progress if plan.name == "local" else None)
        plan.run(
            job,
            units,
            dev,
            pack=lambda unit: pack_cache(sink, unit),
            done=lambda unit, result: deliver(result, unit, sink),
            died=lambda unit, reason: fail_unit(unit, reason, sink),
        )
    return store


def _current_cell_id(config: dict[str, Any]) -> str | None:
    """The id today's :class:`Cell` has for a record's config (``None`` if it is not one)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(Cell)}
    try:
        return Cell(**{k: v for k, v in config.items() if k in names}).cell_id
    except TypeError:
        return None


def cell_scores(store: RunStore, cell_id: str) -> dict[str, np.ndarray] | None:
    path = store.scores_path(cell_id)
    if not path.exists():
        return None
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}
