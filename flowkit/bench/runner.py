"""Running a suite: encoders trained once per (dataset, held-out class, seed) and cached with
their latents; flows cached per encoder; scorers reuse both. Every finished cell is appended
to ``results.jsonl``; rerunning skips what is done."""

from __future__ import annotations

import datetime as _dt
import hashlib
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowkit.artifact import package_versions
from flowkit.bench.store import RunStore, git_sha
from flowkit.bench.suite import Cell, Suite, target_dataset
from flowkit.data.base import ImageSet
from flowkit.data.protocols import (
    Split,
    labelled_split,
    leave_one_class_out,
    out_of_distribution,
)
from flowkit.detector import Detector
from flowkit.errors import ConfigError, FlowkitError
from flowkit.metrics import detection_metrics, ood_metrics
from flowkit.plugins import notify
from flowkit.registry import datasets, encoders, flows, parse_spec, scorers
from flowkit.training import resolve_device

__all__ = ["run_suite", "run_unit", "units_of", "BenchData", "Sink", "StoreSink"]


@dataclass
class BenchData:
    """The images a suite needs, loaded once."""

    data: ImageSet | None = None  # loo: all images; ood: the in-distribution train split
    test_in: ImageSet | None = None  # ood only
    out: dict[str, ImageSet] | None = None  # ood only
    given: dict[str, ImageSet] | None = None  # given: each target's images (train + test)

    @property
    def n_classes(self) -> int:
        assert self.data is not None
        return len(self.data.classes)

    def targets(self, suite: Suite) -> list[int | str]:
        if suite.protocol == "given":
            assert self.given is not None
            return list(self.given)
        return suite.targets(n_classes=self.n_classes)

    def input_shape(self) -> tuple[int, int, int]:
        some = self.data if self.data is not None else next(iter((self.given or {}).values()))
        return some.shape

    def split(self, cell: Cell) -> Split:
        if cell.protocol == "loo":
            assert self.data is not None
            return leave_one_class_out(self.data, int(cell.target), seed=cell.seed)
        if cell.protocol == "given":
            assert self.given is not None
            return labelled_split(self.given[str(cell.target)])
        assert self.data is not None and self.test_in is not None and self.out is not None
        return out_of_distribution(self.data, self.test_in, self.out[str(cell.target)])

    def target_name(self, cell: Cell) -> str:
        if cell.protocol == "loo" and self.data is not None:
            return self.data.classes[int(cell.target)]
        return str(cell.target)


def _given_categories(suite: Suite, root: Any) -> list[str]:
    """The categories of a ``given`` suite, discovering them for ``categories = ["all"]``
    through the dataset factory's ``categories(root)`` attribute."""
    if suite.categories != ["all"]:
        return suite.targets()
    name, opts = parse_spec(suite.dataset)
    lister = getattr(datasets.get(name).factory, "categories", None)
    if lister is None:
        raise ConfigError(
            f"suite {suite.name}: dataset {name!r} has no categories to discover; "
            "list them in the suite's categories field"
        )
    found = list(lister(root))
    if not found:  # let the dataset say where its files belong
        datasets.create(name, root=root, split="all", image_size=suite.image_size, **opts)
        raise ConfigError(f"no {name} categories found under {root}")
    return found


def load_bench_data(suite: Suite, root: Any = None, download: bool = True) -> BenchData:
    def load(spec: str, split: str) -> ImageSet:
        name, opts = parse_spec(spec)
        return datasets.create(
            name, root=root, split=split, image_size=suite.image_size, download=download, **opts
        )

    if suite.protocol == "loo":
        return BenchData(data=load(suite.dataset, "all"))
    if suite.protocol == "given":
        targets = _given_categories(suite, root)
        return BenchData(
            given={str(t): load(target_dataset(suite.dataset, "given", t), "all") for t in targets}
        )
    return BenchData(
        data=load(suite.dataset, "train"),
        test_in=load(suite.dataset, "test"),
        out={name: load(name, "test") for name in suite.out_datasets},
    )


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
    name = parse_spec(spec)[0]
    try:
        return registry.get("combo" if "+" in name else name).plugin
    except FlowkitError:
        return "?"


@dataclass
class EncodedSplit:
    """A trained encoder and the latents of one split's images (train, validation, test)."""

    encoder: torch.nn.Module
    history: dict[str, Any]
    train_images: torch.Tensor
    val_images: torch.Tensor
    test_images: torch.Tensor
    z_train: torch.Tensor
    z_val: torch.Tensor
    z_test: torch.Tensor
    cached: bool
    fit_seconds: float
    embed_seconds: float


def encode_split(
    cell: Cell, split: Split, sink: Sink | RunStore, device: str, progress: Any
) -> EncodedSplit:
    """The cell's encoder from the cache, or trained now and cached, with its latents."""
    if isinstance(sink, RunStore):
        sink = StoreSink(sink, None)
    det = Detector(**cell.detector_params(device))
    train, val = det.split_validation(split.train.images)
    cached = sink.load_encoder(cell.encoder_key)
    encoder = det.build_encoder(tuple(train.shape[1:]))
    if cached is not None:
        encoder.load_state_dict(cached["state"])
        det.set_encoder(encoder, tuple(train.shape[1:]), cached["history"])
        z_train, z_val = cached["z_train"], cached["z_val"]
        fit_seconds = float(cached["fit_seconds"])
    else:
        start = time.perf_counter()
        det.fit_encoder(train, val, encoder=encoder, progress=progress)
        z_train, z_val = det.embed(train), det.embed(val)
        fit_seconds = time.perf_counter() - start
        sink.save_encoder(
            cell.encoder_key,
            {
                "state": {k: v.cpu() for k, v in det.encoder_.state_dict().items()},
                "history": det.history_["encoder"],
                "z_train": z_train,
                "z_val": z_val,
                "fit_seconds": fit_seconds,
            },
        )
    start = time.perf_counter()
    z_test = det.embed(split.test.images)
    return EncodedSplit(
        encoder=det.encoder_,
        history=det.history_["encoder"],
        train_images=train,
        val_images=val,
        test_images=split.test.images,
        z_train=z_train,
        z_val=z_val,
        z_test=z_test,
        cached=cached is not None,
        fit_seconds=fit_seconds,
        embed_seconds=time.perf_counter() - start,
    )


def _run_flow_group(
    cells: list[Cell],
    enc: EncodedSplit,
    split: Split,
    sink: Sink,
    device: str,
    progress: Any,
) -> None:
    first = cells[0]
    det = Detector(**first.detector_params(device))
    det.set_encoder(enc.encoder, tuple(enc.train_images.shape[1:]), enc.history)
    start = time.perf_counter()
    loaded = sink.load_flow(first.flow_key, device)
    flow_cached = loaded is not None
    if loaded is not None:
        det.pipeline_, det.flow_ = loaded.pipeline_, loaded.flow_
        det.history_["flow"] = loaded.history_.get("flow", {})
    else:
        det.fit_from_latents(
            enc.z_train, enc.z_val, enc.train_images, enc.val_images, progress=progress
        )
        sink.save_flow(first.flow_key, det)
    flow_seconds = time.perf_counter() - start
    for cell in cells:
        try:
            det.scorer = cell.scorer
            start = time.perf_counter()
            det.fit_scorer(enc.z_train, enc.z_val, enc.train_images, enc.val_images)
            out = det.score_latents(enc.z_test, enc.test_images)
            score_seconds = time.perf_counter() - start + enc.embed_seconds
            y = split.is_anomaly.numpy()
            s = out["anomaly_score"]
            metrics = detection_metrics(y, s, det.threshold_)
            if cell.protocol == "ood":
                metrics.update(ood_metrics(y, s))
            sink.save_scores(
                cell.cell_id,
                anomaly_score=s,
                log_prob=out["log_prob"],
                is_anomaly=y,
                labels=split.test.labels.numpy(),
            )
            fh = det.history_.get("flow", {})
            sink.record(
                cell,
                "ok",
                metrics=metrics,
                threshold=det.threshold_,
                scorer_state_sha=state_digest(det.scorer_.state_dict()),
                timings={
                    "encoder_fit_s": enc.fit_seconds,
                    "encoder_cached": enc.cached,
                    "flow_fit_s": float(fh.get("seconds", flow_seconds)),
                    "flow_cached": flow_cached,
                    "score_images_per_s": len(s) / score_seconds if score_seconds > 0 else None,
                },
                training={
                    "encoder_best_epoch": enc.history.get("best_epoch"),
                    "encoder_epochs_run": enc.history.get("epochs_run"),
                    "flow_best_epoch": fh.get("best_epoch"),
                    "flow_epochs_run": fh.get("epochs_run"),
                    "flow_stopped_early": fh.get("stopped_early"),
                },
                sizes={
                    "train": len(enc.train_images),
                    "val": len(enc.val_images),
                    "test": len(s),
                    "anomalies": int(y.sum()),
                },
            )
        except Exception as exc:  # a failed cell is recorded; the grid goes on
            sink.record(cell, "failed", error=_error_text(exc))


def state_digest(state: dict[str, Any]) -> str:
    """A digest of a scorer's fitted state (to prove it never depends on test data)."""
    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        h.update(key.encode())
        h.update(
            value.detach().cpu().numpy().tobytes()
            if torch.is_tensor(value)
            else repr(value).encode()
        )
    return h.hexdigest()[:16]


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

    def load_flow(self, key: str, device: str) -> Detector | None:
        raise NotImplementedError

    def save_flow(self, key: str, det: Detector) -> None:
        raise NotImplementedError

    def save_scores(self, cell_id: str, **arrays: np.ndarray) -> None:
        raise NotImplementedError

    def record(self, cell: Cell, status: str, **fields: Any) -> None:
        raise NotImplementedError


class StoreSink(Sink):
    """Straight into the run directory and its cache (the driver, the local executor)."""

    def __init__(self, store: RunStore, recorder: Callable[..., None] | None) -> None:
        self.store, self.recorder = store, recorder

    def load_encoder(self, key: str) -> dict[str, Any] | None:
        return self.store.load_tensors(self.store.encoder_path(key))

    def save_encoder(self, key: str, payload: dict[str, Any]) -> None:
        self.store.save_tensors(self.store.encoder_path(key), payload)

    def load_flow(self, key: str, device: str) -> Detector | None:
        path = self.store.flow_path(key)
        if not path.exists():
            return None
        try:
            return Detector.load(path, device=device)
        except FlowkitError:
            return None  # unreadable cache entry: retrain it

    def save_flow(self, key: str, det: Detector) -> None:
        det.save(self.store.flow_path(key))

    def save_scores(self, cell_id: str, **arrays: np.ndarray) -> None:
        self.store.save_scores(cell_id, **arrays)

    def record(self, cell: Cell, status: str, **fields: Any) -> None:
        if self.recorder is None:
            raise RuntimeError("this sink records nothing")
        self.recorder(cell, status, **fields)


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
    ) -> None:
        self.suite, self.store, self.bench_data = suite, store, bench_data
        self.progress, self.task, self.on_cell = progress, task, on_cell
        self.provenance = {
            "versions": package_versions(),
            "git_sha": git_sha(),
            "device": device,
            "torch_threads": torch.get_num_threads(),
        }

    def __call__(self, cell: Cell, status: str, **fields: Any) -> None:
        rec = {
            "cell_id": cell.cell_id,
            "status": status,
            "suite": self.suite.name,
            "config": cell.config(),
            "combination": cell.combination,
            "target_name": self.bench_data.target_name(cell),
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


def run_unit(
    group: list[Cell], bench_data: BenchData, sink: Sink, device: str, progress: Any = None
) -> None:
    """One unit of work: an encoder (trained or cached) for a (dataset, held-out class,
    seed), with every flow and scorer that shares it. Everything it produces goes to
    ``sink``; exceptions become failed records, so a unit always finishes."""
    try:
        split = bench_data.split(group[0])
        enc = encode_split(group[0], split, sink, device, progress)
    except Exception as exc:  # a failed cell is recorded; the grid goes on
        for cell in group:
            sink.record(cell, "failed", error=_error_text(exc))
        return
    for _, flow_iter in groupby(group, key=lambda c: c.flow_key):
        flow_cells = list(flow_iter)
        try:
            _run_flow_group(flow_cells, enc, split, sink, device, progress)
        except Exception as exc:  # a failed cell is recorded; the grid goes on
            for cell in flow_cells:
                sink.record(cell, "failed", error=_error_text(exc))


def units_of(cells: list[Cell]) -> list[list[Cell]]:
    """The cells grouped into units: one encoder fit per (encoder, held-out class, seed)."""
    return [list(g) for _, g in groupby(cells, key=lambda c: (c.encoder_key, str(c.target)))]


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
    executor: Any = None,
) -> RunStore:
    """Run (or resume) ``suite`` into ``out_dir``; returns the store holding its results.

    One process at a time holds ``out_dir`` (a second raises :class:`RunLockedError` naming
    the holder's pid). Every component of the grid is built once, untrained, before anything
    trains. ``on_cell`` is called with each record as it is written (the CLI's live table).
    ``executor`` (:mod:`flowkit.bench.executors`: auto, local, process, ray; None: local)
    runs the units; only this process writes the run directory and the cache, whatever the
    executor.
    """
    dev = str(resolve_device(device))
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ConfigError(f"--out {out_dir} is a file, not a run directory")
    # Everything that can be refused is refused before the run directory is touched.
    bench_data = data or load_bench_data(suite, data_root, download)
    cells = suite.cells(bench_data.targets(suite))
    check_cells(cells, bench_data.input_shape(), dev)
    store = RunStore(out_dir, cache, create=True)
    with store.lock():
        previous = {r["cell_id"]: r for r in store.records()}
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
        record = _Recorder(suite, store, bench_data, dev, progress, task, on_cell)
        sink = StoreSink(store, record)
        if executor is None:  # local: one unit after another, here
            for unit in units_of(todo):
                run_unit(unit, bench_data, sink, dev, progress)
        else:
            executor.run(units_of(todo), bench_data, sink, dev, progress)
    return store


def cell_scores(store: RunStore, cell_id: str) -> dict[str, np.ndarray] | None:
    path = store.scores_path(cell_id)
    if not path.exists():
        return None
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}
