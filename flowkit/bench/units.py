"""A bench unit: one encoder fit for a (dataset, held-out class, seed, encoder) with every flow
and scorer that shares it, run through the one fit path (:class:`~flowkit.pipeline.StagePipeline`)
and, on any executor (:mod:`flowkit.executors`), as a :class:`~flowkit.executors.Job`.

Whatever the executor, **the driver alone writes** the run directory and the cache: a worker
receives its unit, the cached artifacts it may reuse (as bytes) and the data, and returns
its records, score arrays and new cache artifacts (as bytes: no shared file system is
assumed), which :func:`deliver` writes. Resume and the one-writer lock therefore hold
unchanged. A unit whose worker died twice has every cell recorded as failed with the reason
(:func:`fail_unit`), and the run goes on.
"""

from __future__ import annotations

import io
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowkit.artifact import atomic_write_bytes, state_digest
from flowkit.bench.data import BenchData
from flowkit.bench.store import RunStore
from flowkit.bench.suite import Cell
from flowkit.data.protocols import Split
from flowkit.executors import Job
from flowkit.metrics import detection_metrics, ood_metrics
from flowkit.pipeline import LatentMemo, StagePipeline
from flowkit.registry import encoders, flows, scorers
from flowkit.spec import Spec

__all__ = [
    "Sink",
    "StoreSink",
    "CollectSink",
    "UnitResult",
    "unit_pipeline",
    "run_unit",
    "units_of",
    "unit_job",
    "pack_cache",
    "deliver",
    "fail_unit",
    "extremes",
    "state_digest",
    "EXTREMES",
]


def unit_pipeline(
    cell: Cell, split: Split, sink: Sink | RunStore, device: str, progress: Any = None
) -> StagePipeline:
    """The fit path (:class:`~flowkit.pipeline.StagePipeline`) of a unit: the cell's
    configuration on its split's normal training images, the run's cache as its hook."""
    if isinstance(sink, RunStore):
        sink = StoreSink(sink, None)
    return StagePipeline(
        cell.detector_config(device),
        split.train.images,
        device=device,
        cache=sink,
        encoder_key=cell.encoder_key,
        progress=progress,
        memo=FROZEN_LATENTS,
    )


@dataclass
class TestLatents:
    """The latents of a split's test images under a unit's encoder, and how long they took."""

    images: torch.Tensor
    z: torch.Tensor
    seconds: float


def embed_test(path: StagePipeline, split: Split) -> TestLatents:
    z, seconds = path.embed_timed(split.test.images)
    return TestLatents(split.test.images, z, seconds)


def _run_flow_group(
    cells: list[Cell],
    path: StagePipeline,
    split: Split,
    test: TestLatents,
    sink: Sink,
    device: str,
) -> None:
    start = time.perf_counter()
    density, flow_cached = path.density_and_source(
        cells[0].detector_config(device), cells[0].flow_key
    )
    flow_seconds = time.perf_counter() - start
    enc = path.encoded()
    # what every scorer sees, computed once for the group (scoring speed: the test part's)
    path.contexts(density)
    start = time.perf_counter()
    test_ctx = density.context(test.z, test.images, enc.stage.encoder_, device)
    context_seconds = time.perf_counter() - start
    y = split.is_anomaly.numpy()
    fh, eh = density.history_, enc.stage.history_
    for cell in cells:
        try:
            start = time.perf_counter()
            calibration = path.calibrate(cell.detector_config(device), density)
            s = calibration.score(test_ctx).numpy()
            score_seconds = time.perf_counter() - start + test.seconds + context_seconds
            metrics = detection_metrics(y, s, calibration.threshold_)
            if cell.protocol == "ood":
                metrics.update(ood_metrics(y, s))
            located = split.localization(test_ctx.maps, s)
            if located:
                metrics.update({k: located[k] for k in ("pixel_auc", "pro")})
            sink.save_scores(
                cell.cell_id,
                anomaly_score=s,
                log_prob=test_ctx.log_prob.numpy(),
                is_anomaly=y,
                labels=split.test.labels.numpy(),
                **extremes(s, test.images, test_ctx.maps, split.test.masks),
            )
            sink.record(
                cell,
                "ok",
                metrics=metrics,
                **({"per_type": located["per_type"]} if located else {}),
                **(
                    {"pixel_threshold": calibration.pixel_threshold_}
                    if calibration.pixel_threshold_ is not None
                    else {}
                ),
                threshold=calibration.threshold_,
                scorer_state_sha=state_digest(calibration.scorer_.state_dict()),
                timings={
                    "encoder_fit_s": enc.fit_seconds,
                    "encoder_cached": enc.cached,
                    "flow_fit_s": float(fh.get("seconds", flow_seconds)),
                    "flow_cached": flow_cached,
                    "score_images_per_s": len(s) / score_seconds if score_seconds > 0 else None,
                },
                training={
                    "encoder_best_epoch": eh.get("best_epoch"),
                    "encoder_epochs_run": eh.get("epochs_run"),
                    "flow_best_epoch": fh.get("best_epoch"),
                    "flow_epochs_run": fh.get("epochs_run"),
                    "flow_stopped_early": fh.get("stopped_early"),
                },
                sizes={
                    "train": len(path.train_images),
                    "val": len(path.val_images),
                    "test": len(s),
                    "anomalies": int(y.sum()),
                },
            )
        except Exception as exc:  # a failed cell is recorded; the grid goes on
            sink.record(cell, "failed", error=_error_text(exc))


#: How many of the most and of the least anomalous test images each cell keeps, for the
#: report's image grids (so a user can see what the model flags).
EXTREMES = 8
#: This process's latents of frozen encoders, shared by its units (every held-out class).
FROZEN_LATENTS = LatentMemo()


def extremes(
    scores: np.ndarray,
    images: torch.Tensor,
    maps: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
) -> dict[str, np.ndarray]:
    """The :data:`EXTREMES` most and least anomalous test images (uint8, any channels) and
    their indices into the test set, most anomalous first / least anomalous first; with
    anomaly maps, their maps too (float16) and, for data with masks, their masks."""
    k = min(EXTREMES, len(scores))
    order = np.argsort(scores, kind="stable")
    out = {}
    for end, pick in (("top", order[::-1][:k].copy()), ("bottom", order[:k].copy())):
        index = torch.from_numpy(pick)
        out[f"{end}_index"] = pick
        out[f"{end}_images"] = images[index].numpy()
        if maps is not None:
            out[f"{end}_maps"] = maps[index].numpy().astype(np.float16)
        if maps is not None and masks is not None:
            out[f"{end}_masks"] = masks[index].numpy()
    return out


def _error_text(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {Path(last[0].filename).name}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


class Sink:
    """Where a unit's products go: cached encoders and flows, score arrays, records."""

    def load_encoder(self, key: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def save_encoder(self, key: str, payload: dict[str, Any]) -> None:
        raise NotImplementedError

    def load_density(self, key: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def save_density(self, key: str, payload: dict[str, Any]) -> None:
        raise NotImplementedError

    def save_scores(self, cell_id: str, **arrays: np.ndarray) -> None:
        raise NotImplementedError

    def record(self, cell: Cell, status: str, **fields: Any) -> None:
        raise NotImplementedError


class StoreSink(Sink):
    """Straight into the run directory and its cache: the driver's sink (its records, and
    :func:`deliver`'s target); a script reusing a run's cache (``unit_pipeline`` with a
    :class:`RunStore`) reads and writes the cache through it. Units on any executor, local
    included, run into a :class:`CollectSink`."""

    def __init__(self, store: RunStore, recorder: Callable[..., None] | None) -> None:
        self.store, self.recorder = store, recorder

    def load_encoder(self, key: str) -> dict[str, Any] | None:
        return self.store.load_tensors(self.store.encoder_path(key))

    def save_encoder(self, key: str, payload: dict[str, Any]) -> None:
        self.store.save_tensors(self.store.encoder_path(key), payload)

    def load_density(self, key: str) -> dict[str, Any] | None:
        return self.store.load_tensors(self.store.density_path(key))

    def save_density(self, key: str, payload: dict[str, Any]) -> None:
        self.store.save_tensors(self.store.density_path(key), payload)

    def save_scores(self, cell_id: str, **arrays: np.ndarray) -> None:
        self.store.save_scores(cell_id, **arrays)

    def record(self, cell: Cell, status: str, **fields: Any) -> None:
        if self.recorder is None:
            raise RuntimeError("this sink records nothing")
        self.recorder(cell, status, **fields)


def run_unit(
    group: list[Cell], bench_data: BenchData, sink: Sink, device: str, progress: Any = None
) -> None:
    """One unit of work: an encoder (trained or cached) for a (dataset, held-out class,
    seed), with every flow and scorer that shares it. Everything it produces goes to
    ``sink``; exceptions become failed records, so a unit always finishes."""
    try:
        split = bench_data.split(group[0])
        path = unit_pipeline(group[0], split, sink, device, progress)
        test = embed_test(path, split)
    except Exception as exc:  # a failed cell is recorded; the grid goes on
        for cell in group:
            sink.record(cell, "failed", error=_error_text(exc))
        return
    for _, flow_iter in groupby(group, key=lambda c: c.flow_key):
        flow_cells = list(flow_iter)
        try:
            _run_flow_group(flow_cells, path, split, test, sink, device)
        except Exception as exc:  # a failed cell is recorded; the grid goes on
            for cell in flow_cells:
                sink.record(cell, "failed", error=_error_text(exc))


def units_of(cells: list[Cell]) -> list[list[Cell]]:
    """The cells grouped into units: one encoder fit per (encoder, held-out class, seed)."""
    return [list(g) for _, g in groupby(cells, key=lambda c: (c.encoder_key, str(c.target)))]


@dataclass
class UnitResult:
    """What a worker sends back: new cache files and score arrays (bytes), and records."""

    artifacts: dict[str, bytes] = field(default_factory=dict)  # path relative to the cache
    scores: dict[str, bytes] = field(default_factory=dict)  # cell_id → .npz bytes
    records: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)


class CollectSink(Sink):
    """A worker's sink: reads the cache it was given, collects everything it produces."""

    def __init__(self, cache: dict[str, bytes]) -> None:
        self.cache = cache
        self.result = UnitResult()

    def _load(self, rel: str) -> dict[str, Any] | None:
        data = self.cache.get(rel)
        if data is None:
            return None
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception:  # an unreadable cache entry is rebuilt, as the driver's store does
            return None

    def _save(self, rel: str, payload: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(payload, buf)
        self.result.artifacts[rel] = buf.getvalue()

    def load_encoder(self, key: str) -> dict[str, Any] | None:
        return self._load(f"encoders/{key}.pt")

    def save_encoder(self, key: str, payload: dict[str, Any]) -> None:
        self._save(f"encoders/{key}.pt", payload)

    def load_density(self, key: str) -> dict[str, Any] | None:
        return self._load(f"densities/{key}.pt")

    def save_density(self, key: str, payload: dict[str, Any]) -> None:
        self._save(f"densities/{key}.pt", payload)

    def save_scores(self, cell_id: str, **arrays: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        self.result.scores[cell_id] = buf.getvalue()

    def record(self, cell: Cell, status: str, **fields: Any) -> None:
        self.result.records.append((cell.cell_id, status, fields))


def pack_cache(sink: StoreSink, unit: list[Cell]) -> tuple[list[Cell], dict[str, bytes]]:
    """A unit and the cached files it may reuse, as bytes (the driver reads, the worker
    gets): what :func:`unit_job`'s work receives."""
    store = sink.store
    wanted = [(f"encoders/{unit[0].encoder_key}.pt", store.encoder_path(unit[0].encoder_key))]
    wanted += [(f"densities/{c.flow_key}.pt", store.density_path(c.flow_key)) for c in unit]
    return unit, {rel: path.read_bytes() for rel, path in dict(wanted).items() if path.exists()}


def deliver(result: UnitResult, unit: list[Cell], sink: StoreSink) -> None:
    """Write a worker's products into the run directory (cache and scores first, then the
    records, so that a record never points at a missing file)."""
    store = sink.store
    for rel, data in result.artifacts.items():
        atomic_write_bytes(store.cache / rel, data)
    for cell_id, data in result.scores.items():
        atomic_write_bytes(store.scores_path(cell_id), data)
    by_id = {c.cell_id: c for c in unit}
    for cell_id, status, fields in result.records:
        sink.record(by_id[cell_id], status, **fields)


def fail_unit(unit: list[Cell], reason: str, sink: Sink) -> None:
    for cell in unit:
        sink.record(cell, "failed", error=reason)


def component_modules(units: list[list[Cell]]) -> tuple[str, ...]:
    """Modules that registered the suite's components outside entry points (a script or a
    test calling ``registry.register``): a spawned worker imports them to see the same
    registry. Entry-point plugins load in the worker as they do here."""
    modules: set[str] = set()
    for unit in units:
        for cell in unit:
            for registry, spec in (
                (encoders, cell.encoder),
                (flows, cell.flow),
                *((scorers, leaf) for leaf in Spec.parse(cell.scorer).leaves()),
            ):
                entry = registry.get(Spec.parse(spec).name)
                if entry.plugin == "user":
                    modules.add(entry.factory.__module__)
    return tuple(sorted(m for m in modules if m not in ("__main__", "builtins")))


# -- the job (module level, so that spawned processes and Ray import it) -------------------

_UNIT: dict[str, Any] = {}


def _set_up(device: str, data: BenchData, progress: Any) -> None:
    _UNIT.update(data=data, device=device, progress=progress)


def _work(packed: tuple[list[Cell], dict[str, bytes]]) -> UnitResult:
    unit, cache = packed
    sink = CollectSink(cache)
    run_unit(unit, _UNIT["data"], sink, _UNIT["device"], _UNIT["progress"])
    return sink.result


def unit_job(units: list[list[Cell]], data: BenchData, progress: Any = None) -> Job:
    """The bench's :class:`~flowkit.executors.Job`: each worker receives the data once,
    then runs units (with :func:`pack_cache`'s bytes) into a :class:`CollectSink`.
    ``progress`` (a live display) only reaches units run in this process."""
    return Job(_work, _set_up, (data, progress), component_modules(units))
