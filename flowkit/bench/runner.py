"""Running a suite: encoders trained once per (dataset, held-out class, seed) and cached with
their latents; flows cached per encoder; scorers reuse both. Every finished cell is appended
to ``results.jsonl``; rerunning skips what is done."""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from flowkit.artifact import package_versions
from flowkit.bench.store import RunStore, git_sha
from flowkit.bench.suite import Cell, Suite, target_dataset
from flowkit.data.base import ImageSet, match_channels
from flowkit.data.protocols import (
    Split,
    labelled_split,
    leave_one_class_out,
    out_of_distribution,
)
from flowkit.detector import Detector
from flowkit.encoders.augment import Augment
from flowkit.encoders.base import views
from flowkit.errors import ConfigError, FlowkitError
from flowkit.metrics import detection_metrics, ood_metrics
from flowkit.plugins import notify
from flowkit.registry import datasets, encoders, flows, parse_spec, scorers
from flowkit.spec import Spec
from flowkit.stages import CalibrationStage, DensityStage, EncoderStage, split_validation
from flowkit.training import resolve_device

if TYPE_CHECKING:
    from flowkit.bench.executors import Executor

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

    @property
    def name(self) -> str | None:
        """The loaded data's own name (a folder's name for ``folder``), shown in reports."""
        return self.data.name if self.data is not None else None

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
        # a dataset's own root= (an OOD set kept elsewhere) wins over the run's
        name, opts = parse_spec(spec)
        where = opts.pop("root", root)
        return datasets.create(
            name, root=where, split=split, image_size=suite.image_size, download=download, **opts
        )

    if suite.protocol == "loo":
        return BenchData(data=load(suite.dataset, "all"))
    if suite.protocol == "given":
        targets = _given_categories(suite, root)
        return BenchData(
            given={str(t): load(target_dataset(suite.dataset, "given", t), "all") for t in targets}
        )
    data = load(suite.dataset, "train")
    out = {}
    for name in suite.out_datasets:  # digits against a model of photographs come as RGB
        found = load(name, "test")
        out[name] = replace(found, images=match_channels(found.images, data.images.shape[1]))
    return BenchData(data=data, test_in=load(suite.dataset, "test"), out=out)


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


@dataclass
class EncodedSplit:
    """A trained encoder stage and the latents of one split's images (train, validation,
    test, and the augmented copies of the training images the density trains on)."""

    stage: EncoderStage
    train_images: torch.Tensor
    val_images: torch.Tensor
    test_images: torch.Tensor
    z_train: torch.Tensor
    z_val: torch.Tensor
    z_test: torch.Tensor
    cached: bool
    fit_seconds: float
    embed_seconds: float

    @property
    def history(self) -> dict[str, Any]:
        return self.stage.history_


def views_tag(encoder: Any) -> str:
    """What an encoder's random views are, in words: part of its cache entry, so that an
    entry trained on other views (the same spec, before ``views="auto"`` picked natural-image
    views for colour data) is retrained rather than reused. Memory addresses (a plain function's
    repr) are left out, so that the tag is the same in every process."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(views(encoder)))


_DEFAULT_VIEWS = repr(Augment())  # the views of every cache entry written before the tag


def encode_split(
    cell: Cell, split: Split, sink: Sink | RunStore, device: str, progress: Any
) -> EncodedSplit:
    """The cell's encoder stage from the cache, or trained now and cached, with its latents."""
    if isinstance(sink, RunStore):
        sink = StoreSink(sink, None)
    config = cell.detector_config(device)
    train, val = split_validation(split.train.images, config.val_fraction, config.seed)
    shape = tuple(int(s) for s in train.shape[1:])
    cached = sink.load_encoder(cell.encoder_key)
    stage = EncoderStage(config)
    if cached is not None:
        stage.restore(shape, cached["state"], cached["history"])  # type: ignore[arg-type]
        if cached.get("views", _DEFAULT_VIEWS) != views_tag(stage.encoder_):
            cached = None  # trained on other views (before views="auto" knew colour images)
    if cached is not None:
        z_train, z_val = cached["z_train"], cached["z_val"]
        fit_seconds = float(cached["fit_seconds"])
    else:
        start = time.perf_counter()
        encoder = stage.build(shape)  # type: ignore[arg-type]
        stage.fit(train, val, device=device, encoder=encoder, progress=progress)
        z_train = stage.embed(train, device=device)
        z_val = stage.embed(val, device=device)
        fit_seconds = time.perf_counter() - start
        sink.save_encoder(
            cell.encoder_key,
            {
                "state": stage.state_dict()["state"],
                "history": stage.history_,
                "z_train": z_train,
                "z_val": z_val,
                "fit_seconds": fit_seconds,
                "views": views_tag(stage.encoder_),
            },
        )
    start = time.perf_counter()
    z_test = stage.embed(split.test.images, device=device)
    return EncodedSplit(
        stage=stage,
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


def fit_density(
    cell: Cell, enc: EncodedSplit, sink: Sink, device: str, progress: Any
) -> tuple[DensityStage, bool]:
    """The cell's density stage from the cache, or fitted now (on the training latents and
    their augmented copies) and cached; and whether it came from the cache."""
    config = cell.detector_config(device)
    # a density fitted on the latents of an encoder that was retrained just now (its cache
    # entry was gone or stale) is stale too
    cached = sink.load_density(cell.flow_key) if enc.cached else None
    if cached is not None:
        try:
            stage = DensityStage.from_state_dict(
                config, cached["pipeline"], cached["flow"], cached["history"], "cache"
            )
            return stage, True
        except (FlowkitError, KeyError, RuntimeError):
            pass  # an unreadable cache entry: fit it again
    z_aug = enc.stage.embed_augmented(enc.train_images, device=device)
    z_flow = enc.z_train if z_aug is None else torch.cat([enc.z_train, z_aug])
    stage = DensityStage(config).fit(
        z_flow, enc.z_val, device=device, part_sizes=enc.stage.part_sizes, progress=progress
    )
    sink.save_density(cell.flow_key, {**stage.state_dict(), "history": stage.history_})
    return stage, False


def _run_flow_group(
    cells: list[Cell],
    enc: EncodedSplit,
    split: Split,
    sink: Sink,
    device: str,
    progress: Any,
) -> None:
    start = time.perf_counter()
    density, flow_cached = fit_density(cells[0], enc, sink, device, progress)
    flow_seconds = time.perf_counter() - start
    encoder = enc.stage.encoder_
    # what every scorer sees, computed once for the group
    contexts = {
        name: density.context(z, images, encoder, device)
        for name, z, images in (
            ("train", enc.z_train, enc.train_images),
            ("val", enc.z_val, enc.val_images),
            ("test", enc.z_test, enc.test_images),
        )
    }
    context_seconds = time.perf_counter() - start - flow_seconds
    y = split.is_anomaly.numpy()
    fh = density.history_
    for cell in cells:
        try:
            start = time.perf_counter()
            calibration = CalibrationStage(cell.detector_config(device))
            calibration.fit(contexts["train"], contexts["val"])
            s = calibration.score(contexts["test"]).numpy()
            score_seconds = time.perf_counter() - start + enc.embed_seconds + context_seconds
            metrics = detection_metrics(y, s, calibration.threshold_)
            if cell.protocol == "ood":
                metrics.update(ood_metrics(y, s))
            sink.save_scores(
                cell.cell_id,
                anomaly_score=s,
                log_prob=contexts["test"].log_prob.numpy(),
                is_anomaly=y,
                labels=split.test.labels.numpy(),
                **extremes(s, enc.test_images),
            )
            sink.record(
                cell,
                "ok",
                metrics=metrics,
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


#: How many of the most and of the least anomalous test images each cell keeps, for the
#: report's image grids (so a user can see what the model flags).
EXTREMES = 8


def extremes(scores: np.ndarray, images: torch.Tensor) -> dict[str, np.ndarray]:
    """The :data:`EXTREMES` most and least anomalous test images (uint8, any channels) and
    their indices into the test set, most anomalous first / least anomalous first."""
    k = min(EXTREMES, len(scores))
    order = np.argsort(scores, kind="stable")
    top, bottom = order[::-1][:k].copy(), order[:k].copy()
    return {
        "top_index": top,
        "top_images": images[torch.from_numpy(top)].numpy(),
        "bottom_index": bottom,
        "bottom_images": images[torch.from_numpy(bottom)].numpy(),
    }


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

    def load_density(self, key: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def save_density(self, key: str, payload: dict[str, Any]) -> None:
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
    executor: Executor | None = None,
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
        plan = executor.plan(len(units), dev) if executor is not None else None
        threads = plan.threads if plan is not None else None
        record = _Recorder(suite, store, bench_data, dev, progress, task, on_cell, threads)
        sink = StoreSink(store, record)
        if plan is None:  # one unit after another, here
            for unit in units:
                run_unit(unit, bench_data, sink, dev, progress)
        else:
            plan.run(units, bench_data, sink, dev, progress)
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
