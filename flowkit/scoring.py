"""Scoring image files in chunks: here, on worker processes, or on Ray actors.

A folder too large for one process is cut into chunks of ``batch_size`` files, in the
order :func:`flowkit.images.find_images` gives them. Each worker opens the model **once**
(a Detector model file, or an exported ``.onnx`` file run by onnxruntime alone), reads and
decodes its chunks' files itself (so decoding runs in parallel too) and returns their scores;
the driver yields the chunks **in their order**, so the rows are the same, in the same order,
as scoring here. On Ray the chunks are a Ray Data dataset (one block per chunk, order
preserved) mapped by ``--workers`` tasks at a time, in Ray worker processes that each open
the model once, one row per chunk out. An image's score never depends on the images beside
it (the input contract), so cutting the folder changes no score. Unreadable files fail the
run, or, with ``skip_unreadable``, are counted and reported while the others are scored.

This module imports neither torch nor Ray until an executor needs them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flowkit.errors import ConfigError, DataError, FlowkitError

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
    """Read, decode and score ``files`` with an open model. Files skipped as unreadable come
    back in ``skipped``, without a warning per chunk: the caller reports them once."""
    from flowkit.images import read_images

    c, h, _ = model.input_shape_
    try:
        images, kept = read_images(files, h, c, skip_unreadable, warn=False)
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


def _ray_score(
    batch: dict[str, np.ndarray],
    path: str,
    backend: str,
    device: str,
    threads: int | None,
    skip: bool,
) -> dict[str, list[Any]]:
    """A Ray Data map over chunks of file paths (column ``files``), in a Ray worker process
    that opens the model once (Ray reuses its worker processes: the model stays open between
    tasks). Out comes one row per chunk: :class:`ChunkScores`' fields as lists, and
    ``error``. A user's error (an unreadable file without ``skip``, a refused model file)
    comes back there as ``"Type: message"``, for the driver to raise: Ray Data would wrap it
    in its own exception and traceback."""
    out: dict[str, list[Any]] = {k: [] for k in _RAY_COLUMNS}
    for files in batch["files"]:
        try:
            if _MODEL.get("opened") != (path, backend, device, threads):
                _open_here(path, backend, device, threads)
                _MODEL["opened"] = (path, backend, device, threads)
            got, error = _score_here([Path(f) for f in files], skip), ""
        except FlowkitError as err:
            empty = np.empty(0)
            got, error = ChunkScores([], empty, empty, []), f"{type(err).__name__}: {err}"
        out["kept"].append([str(f) for f in got.kept])
        out["anomaly_score"].append(got.anomaly_score.tolist())
        out["log_prob"].append(got.log_prob.tolist())
        out["skipped"].append(got.skipped)
        out["error"].append(error)
    return out


_RAY_COLUMNS = ("kept", "anomaly_score", "log_prob", "skipped", "error")


def _raise_user_error(error: str) -> None:
    """Raise, on the driver, the flowkit error a Ray worker reported as ``"Type: message"``."""
    from flowkit import errors

    name, _, message = error.partition(": ")
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, FlowkitError)):
        cls = FlowkitError
    try:
        raise cls(message)
    except TypeError:  # an error class whose constructor takes other arguments
        raise FlowkitError(message) from None


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
    import ray.data

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=n, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    log = logging.getLogger("ray.data")
    level = log.level
    try:
        context.execution_options.preserve_order = True  # rows in the chunks' order
        context.enable_progress_bars = False  # the CLI has its own
        log.setLevel(logging.ERROR)  # its INFO lines on stderr
        items = [{"files": [str(f) for f in c]} for c in chunks]
        rows = ray.data.from_items(items, override_num_blocks=len(chunks)).map_batches(
            _ray_score,
            fn_kwargs={
                "path": path,
                "backend": backend,
                "device": device,
                "threads": t,
                "skip": skip,
            },
            batch_size=1,  # one chunk a call: chunks are already --batch-size files
            batch_format="numpy",
            compute=ray.data.TaskPoolStrategy(size=n),  # --workers tasks at a time
            num_cpus=1,
        )
        for row in rows.iter_rows():  # one a chunk, in the chunks' order
            if row["error"]:
                _raise_user_error(row["error"])
            yield ChunkScores(
                [Path(f) for f in row["kept"]],
                np.asarray(row["anomaly_score"], dtype=np.float64),
                np.asarray(row["log_prob"], dtype=np.float64),
                [str(f) for f in row["skipped"]],
            )
    finally:
        # a driver's own Ray Data settings come back as they were
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        log.setLevel(level)
        if started:
            ray.shutdown()
