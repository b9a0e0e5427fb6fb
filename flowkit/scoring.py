"""Scoring image files in chunks: here, on worker processes, or on Ray.

A folder too large for one process is cut into chunks of ``batch_size`` files, in the
order :func:`flowkit.images.find_images` gives them. Each worker opens the model **once**
(a Detector model file, or an exported ``.onnx`` file run by onnxruntime alone), reads and
decodes its chunks' files itself (so decoding runs in parallel too) and returns their scores;
the driver yields the chunks **in their order**, so the rows are the same files, in the same
order, as scoring here. The chunks run through flowkit's one executor layer
(:mod:`flowkit.executors`, ``map``: results in order): on Ray, a Ray Data dataset of one
block per chunk, mapped by ``--workers`` tasks at a time in Ray worker processes that each
open the model once; a worker's flowkit error is raised here as its own class. An image's
score never depends on the images beside it (the input contract), so cutting the folder
changes no label; a score moves only in its float rounding (about 2e-5 at most measured:
another batch or thread count sums in another order). Unreadable files fail the run, or,
with ``skip_unreadable``, are counted and reported while the others are scored.

This module imports neither torch nor Ray until an executor needs them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flowkit.errors import ConfigError, DataError
from flowkit.executors import Job, check_count, cores, make_executor, require_ray

__all__ = [
    "ChunkScores",
    "open_model",
    "score_chunk",
    "score_files",
    "display_range",
    "map_outputs",
    "SCORE_EXECUTORS",
]

SCORE_EXECUTORS = ("local", "process", "ray")


@dataclass
class ChunkScores:
    """One chunk's results: the files that were read, their scores, and how many were
    skipped as unreadable (with their names, for the warning)."""

    kept: list[Path]
    anomaly_score: np.ndarray
    log_prob: np.ndarray
    skipped: list[str]
    #: with ``maps``: each kept file's anomaly map at that image's own size
    maps: list[np.ndarray] | None = None


def open_model(path: str | Path, backend: str = "auto", device: str = "auto") -> Any:
    """A Detector (``backend="torch"``) or an OnnxDetector (``"onnx"``; no torch import);
    ``"auto"`` goes by the file's suffix."""
    path = Path(path)
    if backend == "onnx" or (backend == "auto" and path.suffix.lower() == ".onnx"):
        from flowkit.runtime import OnnxDetector

        return OnnxDetector(path, device=device)
    from flowkit.detector import Detector

    return Detector.load(path, device=device)


def score_chunk(
    model: Any, files: list[Path], skip_unreadable: bool = False, maps: bool = False
) -> ChunkScores:
    """Read, decode and score ``files`` with an open model. Files skipped as unreadable come
    back in ``skipped``, without a warning per chunk: the caller reports them once. With
    ``maps``, each file's anomaly map comes back too, resized to that image's own size."""
    from flowkit.heatmaps import maps_at
    from flowkit.images import image_size_of, read_images

    c, h, _ = model.input_shape_
    try:
        images, kept = read_images(files, h, c, skip_unreadable, warn=False)
    except DataError:
        if not skip_unreadable:
            raise
        empty = np.empty(0)
        return ChunkScores([], empty, empty, [str(f) for f in files], [] if maps else None)
    result = model.score(images, maps=True) if maps else model.score(images)
    kept_set = set(kept)
    own = maps_at(result["anomaly_map"], [image_size_of(f) for f in kept]) if maps else None
    return ChunkScores(
        list(kept),
        np.asarray(result["anomaly_score"], dtype=np.float64),
        np.asarray(result["log_prob"], dtype=np.float64),
        [str(f) for f in files if f not in kept_set],
        own,
    )


def display_range(model: Any) -> tuple[float, float]:
    """The colour scale of an open model's heatmaps (:func:`flowkit.heatmaps.heatmap_rgb`):
    the median pixel of normal validation images and the pixel threshold; one line for a
    model without anomaly maps."""
    from flowkit.runtime import OnnxDetector

    span = (
        model.map_range_ if isinstance(model, OnnxDetector) else model.calibration_stage_.map_range_
    )
    if span is None:
        raise ConfigError(
            "--maps: this model gives no anomaly maps (train one with --preset defects, or a "
            "spatial flow such as patchflow or patchknn on a backbone's feature maps)"
        )
    return float(span[0]), float(span[1])


# -- the job workers run (module level: spawned processes and Ray import it) ----------------

_MODEL: dict[str, Any] = {}


def _open_here(device: str, path: str, backend: str, skip_unreadable: bool, maps: bool) -> None:
    _MODEL.update(model=open_model(path, backend, device), skip=skip_unreadable, maps=maps)


def _score_here(files: list[Path]) -> ChunkScores:
    return score_chunk(_MODEL["model"], files, _MODEL["skip"], _MODEL["maps"])


def check_executor(executor: str, workers: int | None, threads: int | None) -> int:
    """The worker count ``executor`` runs with, every value checked before any work."""
    if executor not in SCORE_EXECUTORS:
        raise ConfigError(
            f"unknown executor {executor!r} for scoring; use one of {', '.join(SCORE_EXECUTORS)}"
        )
    check_count("workers", workers)
    check_count("threads", threads)
    if executor == "local":
        if workers not in (None, 1):
            raise ConfigError("workers need the process or ray executor")
        return 1
    if executor == "ray":
        require_ray()
    return workers or max(1, cores())


def score_files(
    model_path: str | Path,
    chunks: list[list[Path]],
    *,
    backend: str = "auto",
    device: str = "auto",
    skip_unreadable: bool = False,
    executor: str = "local",
    workers: int | None = None,
    threads: int | None = None,
    model: Any = None,
    maps: bool = False,
) -> Iterator[ChunkScores]:
    """The scores of every chunk, in the chunks' order, computed by ``executor``
    (:mod:`flowkit.executors`): ``local`` (here, with ``model`` if it is already open),
    ``process`` (``workers`` spawned processes) or ``ray`` (a Ray Data dataset mapped by
    ``workers`` tasks at a time, on a local instance or the cluster Ray is connected to).
    Each worker opens the model once; ``threads`` sets each worker's torch threads (default:
    cores / workers). With ``maps``, each chunk carries its files' anomaly maps, each at its
    image's own size."""
    n = check_executor(executor, workers, threads)
    path = str(model_path)
    if executor == "local" and model is not None:
        for chunk in chunks:
            yield score_chunk(model, chunk, skip_unreadable, maps)
        return
    runner = make_executor(executor, None if executor == "local" else n, threads=threads)
    job = Job(_score_here, _open_here, (path, backend, skip_unreadable, maps))
    yield from runner.map(job, chunks, device)


def map_outputs(files: list[Path], paths: list[Path], out: Path) -> dict[Path, Path]:
    """Where ``--maps out`` writes each file's heatmap: ``out/<stem>.png``, under the same
    subfolders as below the folder given (so that ``a/x.jpg`` and ``b/x.jpg`` keep two
    maps); two files that would share one map are refused before any scoring."""
    roots = [p for p in paths if p.is_dir()]
    where: dict[Path, Path] = {}
    for f in files:
        base = next((r for r in roots if f.is_relative_to(r)), None)
        rel = f.relative_to(base).parent if base is not None else Path()
        where[f] = out / rel / f"{f.stem}.png"
    seen: dict[Path, Path] = {}
    for f, target in where.items():
        if target in seen:
            raise ConfigError(
                f"--maps: {seen[target]} and {f} would both write {target}; score them apart "
                "or give their folder"
            )
        seen[target] = f
    return where
