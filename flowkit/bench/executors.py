"""Where a suite's units run: in this process, in a pool of processes, or on Ray.

A *unit* is what :func:`flowkit.bench.runner.units_of` groups: one encoder fit for a
(dataset, held-out class, seed, encoder) with all its flows and scorers, so the cache still
pays off. Whatever the executor, **the driver alone writes** the run directory and the cache:
a worker receives its unit, the cached artifacts it may reuse (as bytes) and the data, and
returns its records, score arrays and new cache artifacts (as bytes: no shared file system is
assumed). Resume and the one-writer lock therefore hold unchanged.

- :class:`AutoExecutor` (``--executor auto``, the default): on a CPU with two or more
  cores, two or more units run on one spawned worker per core (at most one per unit), each
  on one torch thread (``--threads T``: T each, ``cores / T`` workers); otherwise as
  ``local``.
- :class:`LocalExecutor` (``--executor local``): units run one after another here.
- :class:`ProcessExecutor` (``--executor process --workers N``): ``concurrent.futures``
  processes (spawned), each with ``cores / N`` torch threads, or one device each with
  ``devices=["cuda:0", "cuda:1"]``.
- :class:`RayExecutor` (``--executor ray``): Ray tasks on a cluster (``address="auto"`` or
  ``"HOST:PORT"``), or on a local Ray instance with ``workers`` CPUs; the data goes through
  Ray's object store once.

A worker that dies (killed, out of memory, a lost Ray node) gets its unit retried once (in the
process pool, alone: a dead worker breaks the whole pool, so units running beside the culprit
are retried too, and must not die with it twice); a second death records every cell of the
unit as failed with the reason, and the run goes on.
Ctrl-C stops the workers; every finished cell is already written.
"""

from __future__ import annotations

import importlib
import io
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flowkit.artifact import atomic_write_bytes
from flowkit.bench.runner import BenchData, Sink, StoreSink, run_unit
from flowkit.bench.suite import Cell
from flowkit.errors import ConfigError
from flowkit.registry import encoders, flows, parse_spec, scorers

__all__ = [
    "EXECUTORS",
    "AutoExecutor",
    "LocalExecutor",
    "ProcessExecutor",
    "RayExecutor",
    "UnitResult",
    "make_executor",
]

EXECUTORS = ("auto", "local", "process", "ray")
RETRIES = 1  # a unit whose worker died is run once more, then recorded as failed
# ``auto`` starts at most this many workers: each holds its own torch and copy of the data
# (about 1 GiB on MNIST); --executor process --workers N goes further
AUTO_MAX_WORKERS = 16


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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

    def load_encoder(self, key: str) -> dict[str, Any] | None:
        import torch

        data = self.cache.get(f"encoders/{key}.pt")
        if data is None:
            return None
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def save_encoder(self, key: str, payload: dict[str, Any]) -> None:
        import torch

        buf = io.BytesIO()
        torch.save(payload, buf)
        self.result.artifacts[f"encoders/{key}.pt"] = buf.getvalue()

    def load_flow(self, key: str, device: str) -> Any:
        import tempfile
        from pathlib import Path

        from flowkit.detector import Detector
        from flowkit.errors import FlowkitError

        data = self.cache.get(f"flows/{key}.flowkit")
        if data is None:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "flow.flowkit"
            path.write_bytes(data)
            try:
                return Detector.load(path, device=device)
            except FlowkitError:
                return None

    def save_flow(self, key: str, det: Any) -> None:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            path = det.save(Path(tmp) / "flow.flowkit")
            self.result.artifacts[f"flows/{key}.flowkit"] = path.read_bytes()

    def save_scores(self, cell_id: str, **arrays: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        self.result.scores[cell_id] = buf.getvalue()

    def record(self, cell: Cell, status: str, **fields: Any) -> None:
        self.result.records.append((cell.cell_id, status, fields))


def pack_cache(sink: StoreSink, unit: list[Cell]) -> dict[str, bytes]:
    """The cached files a unit may reuse, as bytes (the driver reads, the worker gets)."""
    store = sink.store
    wanted = [(f"encoders/{unit[0].encoder_key}.pt", store.encoder_path(unit[0].encoder_key))]
    wanted += [(f"flows/{c.flow_key}.flowkit", store.flow_path(c.flow_key)) for c in unit]
    return {rel: path.read_bytes() for rel, path in dict(wanted).items() if path.exists()}


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


def component_modules(units: list[list[Cell]]) -> list[str]:
    """Modules that registered the suite's components outside entry points (a script or a
    test calling ``registry.register``): a spawned worker imports them to see the same
    registry. Entry-point plugins load in the worker as they do here."""
    modules: set[str] = set()
    for unit in units:
        for cell in unit:
            for registry, spec in ((encoders, cell.encoder), (flows, cell.flow)):
                entry = registry.get(parse_spec(spec)[0])
                if entry.plugin == "user":
                    modules.add(entry.factory.__module__)
            for part in parse_spec(cell.scorer)[0].split("+"):
                entry = scorers.get(parse_spec(part.replace(";", ","))[0])
                if entry.plugin == "user":
                    modules.add(entry.factory.__module__)
    return sorted(m for m in modules if m not in ("__main__", "builtins"))


# -- the worker side (module level, so that spawned processes and Ray can import it) ------

_WORKER: dict[str, Any] = {}


def _init_worker(
    data: BenchData, threads: int, devices: Any, modules: list[str], default_device: str
) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    for name in modules:
        importlib.import_module(name)
    _WORKER["data"] = data
    _WORKER["device"] = devices.get() if devices is not None else default_device


def _work(unit: list[Cell], cache: dict[str, bytes]) -> UnitResult:
    sink = CollectSink(cache)
    run_unit(unit, _WORKER["data"], sink, _WORKER["device"])
    return sink.result


def _ray_work(
    unit: list[Cell],
    cache: dict[str, bytes],
    data: BenchData,
    device: str,
    threads: int,
    modules: list[str],
) -> UnitResult:
    import torch

    torch.set_num_threads(max(1, threads))
    for name in modules:
        importlib.import_module(name)
    sink = CollectSink(cache)
    run_unit(unit, data, sink, device)
    return sink.result


# -- executors ------------------------------------------------------------------------------


class LocalExecutor:
    """Units one after another in this process."""

    name = "local"

    def run(
        self,
        units: list[list[Cell]],
        data: BenchData,
        sink: StoreSink,
        device: str,
        progress: Any = None,
    ) -> None:
        for unit in units:
            run_unit(unit, data, sink, device, progress)


def _sized(workers: int, threads: int | None) -> tuple[int, int]:
    """Checked worker count and torch threads per worker (default: cores / workers)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be a positive integer, got {workers!r}")
    return workers, threads or max(1, _cores() // workers)


def _died(exc: BaseException) -> str:
    return f"its worker died twice ({type(exc).__name__}: killed, or out of memory?)"


def _retrying(inflight: dict[Any, tuple[list[Cell], int]]) -> bool:
    return any(tries for _, tries in inflight.values())


class ProcessExecutor:
    """Units on ``workers`` spawned processes (``concurrent.futures``)."""

    name = "process"

    def __init__(
        self, workers: int = 2, devices: list[str] | None = None, threads: int | None = None
    ) -> None:
        self.workers, self.threads = _sized(workers, threads)
        self.devices = devices or None

    def run(
        self,
        units: list[list[Cell]],
        data: BenchData,
        sink: StoreSink,
        device: str,
        progress: Any = None,
    ) -> None:
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        ctx = mp.get_context("spawn")  # fork would copy torch's thread pools
        modules = component_modules(units)
        pending = deque((unit, 0) for unit in units)
        while pending:
            devices = None
            if self.devices:
                devices = ctx.Queue()
                for i in range(self.workers):
                    devices.put(self.devices[i % len(self.devices)])
            broken: list[tuple[list[Cell] | None, int, BaseException]] = []
            with ProcessPoolExecutor(
                self.workers,
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(data, self.threads, devices, modules, device),
            ) as pool:
                inflight: dict[Any, tuple[list[Cell], int]] = {}
                try:
                    while pending or inflight:
                        # at most one unit per worker in flight: a dead worker's units are
                        # exactly the ones that were running. A retry runs alone, so a unit
                        # that kills its worker again takes no other unit down with it.
                        while pending and len(inflight) < self.workers and not broken:
                            unit, tries = pending[0]
                            if tries and inflight or _retrying(inflight):
                                break
                            try:
                                fut = pool.submit(_work, unit, pack_cache(sink, unit))
                            except BrokenProcessPool as exc:  # broke before a future said so
                                broken.append((None, 0, exc))
                                break
                            pending.popleft()
                            inflight[fut] = (unit, tries)
                        if not inflight:
                            break
                        done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                        for fut in done:
                            unit, tries = inflight.pop(fut)
                            try:
                                deliver(fut.result(), unit, sink)
                            except BrokenProcessPool as exc:
                                broken.append((unit, tries, exc))
                except KeyboardInterrupt:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
            for unit, tries, exc in broken:
                if unit is None:
                    continue
                if tries >= RETRIES:
                    fail_unit(unit, _died(exc), sink)
                else:
                    pending.appendleft((unit, tries + 1))


class AutoExecutor:
    """The default: a process pool where the CPU has cores to spare, else here.

    On a CPU with at least ``2 × threads`` cores, a grid of two or more units runs on
    ``cores // threads`` spawned workers (at most one per unit, and at most
    :data:`AUTO_MAX_WORKERS`) of ``threads`` torch threads each (default 1); on a GPU, one
    core, or a single unit, units run here one after another.
    Per-unit threads fixed at one make a CPU run's numbers the same on 2 cores or 64 (the
    thread count sets the order of float sums), and on 2 cores two one-thread workers train
    faster than one two-thread process (``benchmarks/README.md``).
    """

    name = "auto"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or 1

    def plan(self, units: int, device: str) -> Any:
        """The executor this run uses for ``units`` units on ``device``."""
        workers = min(_cores() // self.threads, units, AUTO_MAX_WORKERS)
        if not device.startswith("cpu") or workers < 2:
            return LocalExecutor()
        return ProcessExecutor(workers, threads=self.threads)

    def run(
        self,
        units: list[list[Cell]],
        data: BenchData,
        sink: StoreSink,
        device: str,
        progress: Any = None,
    ) -> None:
        self.plan(len(units), device).run(units, data, sink, device, progress)


class RayExecutor:
    """Units as Ray tasks: on the cluster at ``address`` or on a local Ray instance."""

    name = "ray"

    def __init__(
        self,
        workers: int = 2,
        address: str | None = None,
        devices: list[str] | None = None,
        threads: int | None = None,
    ) -> None:
        self.workers, self.threads = _sized(workers, threads)
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--executor ray needs Ray: pip install 'flowkit[ray]' (or pip install ray)"
            ) from None
        self.address, self.devices = address, devices or None

    def run(
        self,
        units: list[list[Cell]],
        data: BenchData,
        sink: StoreSink,
        device: str,
        progress: Any = None,
    ) -> None:
        import ray
        from ray.exceptions import RayError

        started = not ray.is_initialized()
        if started:
            if self.address:
                ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
            else:
                ray.init(
                    num_cpus=self.workers,
                    num_gpus=len(self.devices) if self.devices else 0,
                    include_dashboard=False,
                    logging_level="ERROR",
                    log_to_driver=False,
                )
        try:
            gpus = 1 if self.devices else 0
            task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=RETRIES)(_ray_work)
            # Ray sets CUDA_VISIBLE_DEVICES per task: "cuda" is that task's own GPU
            dev = "cuda" if gpus else device
            modules = component_modules(units)
            data_ref = ray.put(data)
            refs = {
                task.remote(
                    unit, pack_cache(sink, unit), data_ref, dev, self.threads, modules
                ): unit
                for unit in units
            }
            try:
                while refs:
                    done, _ = ray.wait(list(refs), num_returns=1)
                    unit = refs.pop(done[0])
                    try:
                        result = ray.get(done[0])
                    except RayError as exc:  # a lost worker or node, after Ray's retry
                        first = (str(exc).strip().splitlines() or [""])[0][:160]
                        fail_unit(unit, f"Ray: {type(exc).__name__}: {first}", sink)
                        continue
                    deliver(result, unit, sink)
            except KeyboardInterrupt:
                for ref in refs:
                    ray.cancel(ref, force=True)
                raise
        finally:
            if started:
                ray.shutdown()


def make_executor(
    name: str,
    workers: int | None = None,
    devices: list[str] | None = None,
    ray_address: str | None = None,
    threads: int | None = None,
) -> Any:
    """The executor the CLI's ``--executor``, ``--workers``, ``--devices``, ``--ray-address``
    and ``--threads`` ask for, checked before anything runs. ``auto`` with ``--workers`` or
    ``--devices`` is ``process``."""
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; use one of {', '.join(EXECUTORS)}")
    if name == "local" and (workers not in (None, 1) or devices):
        raise ConfigError(
            "--workers and --devices need --executor process or ray (local runs one unit at a time)"
        )
    if ray_address and name != "ray":
        raise ConfigError("--ray-address needs --executor ray")
    if name == "auto":
        if not (workers or devices):
            return AutoExecutor(threads)
        name = "process"
    if name == "local":
        return LocalExecutor()
    n = workers or (len(devices) if devices else 2)
    if name == "process":
        return ProcessExecutor(n, devices)
    return RayExecutor(n, ray_address, devices)
