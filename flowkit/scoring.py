"""Scoring image files in chunks: here, on worker processes, or on Ray actors.

A folder too large for one process is cut into chunks of ``batch_size`` files, in the
order :func:`flowkit.images.find_images` gives them. Each worker opens the model **once**
(a Detector model file, or an exported ``.onnx`` file run by onnxruntime alone), reads and
decodes its chunks' files itself (so decoding runs in parallel too) and returns their scores;
the driver yields the chunks **in their order**, so the rows are the same, in the same order,
as scoring here. An image's score never depends on the images beside it (the input contract),
so cutting the folder changes no score. Unreadable files fail the run, or, with
``skip_unreadable``, are counted and reported while the others are scored.

This module imports neither torch nor Ray until an executor needs them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flowkit.errors import ConfigError, DataError

__all__ = ["ChunkScores", "open_model", "score_chunk", "score_files", "SCORE_EXECUTORS"]

SCORE_EXECUTORS = ("local", "process", "ray")


@dataclass
class ChunkScores:
    """One chunk's results: the files that were read, their scores, and how many were
    skipped as unreadable (with their names, for the warning)."""

    kept: list[Path]
    anomaly_score: np.ndarray
    log_prob: np.ndarray
    skipped: list[str]


def open_model(path: str | Path, backend: str = "auto", device: str = "auto") -> Any:
    """A Detector (``backend="torch"``) or an OnnxDetector (``"onnx"``; no torch import);
    ``"auto"`` goes by the file's suffix."""
    path = Path(path)
    if backend == "onnx" or (backend == "auto" and path.suffix.lower() == ".onnx"):
        from flowkit.runtime import OnnxDetector

        return OnnxDetector(path, device=device)
    from flowkit.detector import Detector

    return Detector.load(path, device=device)


def score_chunk(model: Any, files: list[Path], skip_unreadable: bool = False) -> ChunkScores:
    """Read, decode and score ``files`` with an open model."""
    from flowkit.images import read_images

    c, h, _ = model.input_shape_
    try:
        images, kept = read_images(files, h, channels=c, skip_unreadable=skip_unreadable)
    except DataError:
        if not skip_unreadable:
            raise
        empty = np.empty(0)
        return ChunkScores([], empty, empty, [str(f) for f in files])
    result = model.score(images)
    kept_set = set(kept)
    return ChunkScores(
        list(kept),
        np.asarray(result["anomaly_score"], dtype=np.float64),
        np.asarray(result["log_prob"], dtype=np.float64),
        [str(f) for f in files if f not in kept_set],
    )


# -- workers (module level: spawned processes and Ray import them) ---------------------------

_MODEL: dict[str, Any] = {}


def _open_here(path: str, backend: str, device: str, threads: int | None) -> None:
    if threads:
        if backend != "onnx" and not path.lower().endswith(".onnx"):
            import torch

            torch.set_num_threads(threads)
    _MODEL["model"] = open_model(path, backend, device)


def _score_here(files: list[Path], skip_unreadable: bool) -> ChunkScores:
    return score_chunk(_MODEL["model"], files, skip_unreadable)


class _Actor:
    """A Ray actor holding the model, opened once."""

    def __init__(self, path: str, backend: str, device: str, threads: int | None) -> None:
        _open_here(path, backend, device, threads)

    def score(self, files: list[Path], skip_unreadable: bool) -> ChunkScores:
        return _score_here(files, skip_unreadable)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_executor(executor: str, workers: int | None, threads: int | None) -> int:
    """The worker count ``executor`` runs with, every value checked before any work."""
    if executor not in SCORE_EXECUTORS:
        raise ConfigError(
            f"unknown executor {executor!r} for scoring; use one of {', '.join(SCORE_EXECUTORS)}"
        )
    for name, value in (("workers", workers), ("threads", threads)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if executor == "local":
        if workers not in (None, 1):
            raise ConfigError("workers need the process or ray executor")
        return 1
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError(
                "the ray executor needs Ray: pip install 'flowkit[ray]' (or pip install ray)"
            ) from None
    return workers or max(1, _cores())


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
) -> Iterator[ChunkScores]:
    """The scores of every chunk, in the chunks' order, computed by ``executor``:
    ``local`` (here, with ``model`` if it is already open), ``process`` (``workers`` spawned
    processes) or ``ray`` (``workers`` Ray actors, on a local instance or the cluster Ray is
    connected to). Each worker opens the model once; ``threads`` sets each worker's torch
    threads (default: cores / workers)."""
    n = check_executor(executor, workers, threads)
    path = str(model_path)
    if executor == "local":
        model = model if model is not None else open_model(path, backend, device)
        for chunk in chunks:
            yield score_chunk(model, chunk, skip_unreadable)
        return
    per_worker = threads or max(1, _cores() // n)
    n = min(n, max(1, len(chunks)))
    if executor == "process":
        yield from _on_processes(path, chunks, backend, device, skip_unreadable, n, per_worker)
    else:
        yield from _on_ray(path, chunks, backend, device, skip_unreadable, n, per_worker)


def _on_processes(
    path: str, chunks: list[list[Path]], backend: str, device: str, skip: bool, n: int, t: int
) -> Iterator[ChunkScores]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(
        n,
        mp_context=mp.get_context("spawn"),  # fork would copy torch's thread pools
        initializer=_open_here,
        initargs=(path, backend, device, t),
    ) as pool:
        # map keeps the chunks' order; a few chunks ahead per worker keep them all busy
        yield from pool.map(_score_here, chunks, [skip] * len(chunks))


def _on_ray(
    path: str, chunks: list[list[Path]], backend: str, device: str, skip: bool, n: int, t: int
) -> Iterator[ChunkScores]:
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=n, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        actor = ray.remote(num_cpus=1)(_Actor)
        actors = [actor.remote(path, backend, device, t) for _ in range(n)]
        refs = [actors[i % n].score.remote(c, skip) for i, c in enumerate(chunks)]
        for ref in refs:  # in the chunks' order, whichever actor finishes first
            yield ray.get(ref)
    finally:
        if started:
            ray.shutdown()
