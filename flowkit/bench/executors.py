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
from typing import Any, Protocol, runtime_checkable

import numpy as np

from flowkit.artifact import atomic_write_bytes
from flowkit.bench.runner import BenchData, Sink, StoreSink, run_unit
from flowkit.bench.suite import Cell
from flowkit.errors import ConfigError
from flowkit.registry import encoders, flows, scorers
from flowkit.spec import Spec

__all__ = [
    "EXECUTORS",
    "Executor",
    "RetrySchedule",
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

    def _load(self, rel: str) -> dict[str, Any] | None:
        import torch

        data = self.cache.get(rel)
        if data is None:
            return None
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception:  # an unreadable cache entry is rebuilt, as the driver's store does
            return None

    def _save(self, rel: str, payload: dict[str, Any]) -> None:
        import torch

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


def pack_cache(sink: StoreSink, unit: list[Cell]) -> dict[str, bytes]:
    """The cached files a unit may reuse, as bytes (the driver reads, the worker gets)."""
    store = sink.store
    wanted = [(f"encoders/{unit[0].encoder_key}.pt", store.encoder_path(unit[0].encoder_key))]
    wanted += [(f"densities/{c.flow_key}.pt", store.density_path(c.flow_key)) for c in unit]
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
            for registry, spec in (
                (encoders, cell.encoder),
                (flows, cell.flow),
                *((scorers, leaf) for leaf in Spec.parse(cell.scorer).leaves()),
            ):
                entry = registry.get(Spec.parse(spec).name)
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


@runtime_checkable
class Executor(Protocol):
    """Where a suite's units run: units in, results out.

    ``run`` hands every unit's products to ``sink`` (a :class:`StoreSink`: only the driver
    writes the run directory) and returns when every unit has a record for each of its cells,
    finished or failed; a unit never fails the run. ``threads`` is the torch thread count
    each unit runs on (``None``: the executor's own default), part of the run's provenance.
    """

    name: str
    threads: int | None

    def plan(self, units: int, device: str) -> Executor:
        """The executor that runs ``units`` units on ``device`` (itself, or what ``auto``
        chooses)."""
        ...

    def run(
        self,
        units: list[list[Cell]],
        data: BenchData,
        sink: StoreSink,
        device: str,
        progress: Any = None,
    ) -> None: ...


class _Runs:
    """An executor that runs units itself: its plan is itself."""

    def plan(self, units: int, device: str) -> Executor:
        return self  # type: ignore[return-value]


class LocalExecutor(_Runs):
    """Units one after another in this process (on ``threads`` torch threads, if given)."""

    name = "local"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = _threads(threads)

    def run(
        self,
        units: list[list[Cell]],
        data: BenchData,
        sink: StoreSink,
        device: str,
        progress: Any = None,
    ) -> None:
        import torch

        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            for unit in units:
                run_unit(unit, data, sink, device, progress)
        finally:
            torch.set_num_threads(previous)


def _threads(threads: int | None) -> int | None:
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    return threads


def _sized(workers: int, threads: int | None) -> tuple[int, int]:
    """Checked worker count and torch threads per worker (default: cores / workers)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    return workers, _threads(threads) or max(1, _cores() // workers)


def _died(exc: BaseException) -> str:
    return f"its worker died twice ({type(exc).__name__}: killed, or out of memory?)"


class RetrySchedule:
    """Which unit runs next, apart from any pool: units in order, at most ``slots`` at a time;
    a unit whose worker died is retried :data:`RETRIES` time(s), **alone** (a dead worker
    breaks a whole process pool, so the units beside it are retried too and must not die with
    it twice), then recorded as failed."""

    def __init__(self, units: list[list[Cell]], slots: int) -> None:
        self.pending: deque[tuple[list[Cell], int]] = deque((u, 0) for u in units)
        self.running: dict[Any, tuple[list[Cell], int]] = {}
        self.slots = slots

    def __bool__(self) -> bool:
        return bool(self.pending or self.running)

    def next(self) -> tuple[list[Cell], int] | None:
        """The unit that may start now, or ``None`` (all slots busy, or a retry waits to
        run alone, or runs alone)."""
        if not self.pending or len(self.running) >= self.slots:
            return None
        if any(tries for _, tries in self.running.values()):
            return None  # a retry runs alone
        unit, tries = self.pending[0]
        if tries and self.running:
            return None  # wait for the others to finish, then retry alone
        return self.pending.popleft()

    def started(self, handle: Any, unit: list[Cell], tries: int) -> None:
        self.running[handle] = (unit, tries)

    def finished(self, handle: Any) -> tuple[list[Cell], int]:
        return self.running.pop(handle)

    def died(self, unit: list[Cell], tries: int, exc: BaseException, sink: Sink) -> None:
        """The unit's worker died: retry it first, or record its cells as failed."""
        if tries >= RETRIES:
            fail_unit(unit, _died(exc), sink)
        else:
            self.pending.appendleft((unit, tries + 1))


class ProcessExecutor(_Runs):
    """Units on ``workers`` spawned processes (``concurrent.futures``), each on ``threads``
    torch threads (default ``cores / workers``) or one device each of ``devices``."""

    name = "process"

    def __init__(
        self, workers: int = 2, devices: list[str] | None = None, threads: int | None = None
    ) -> None:
        self.workers, self.threads = _sized(workers, threads)
        self.devices = devices or None

    def _pool(self, data: BenchData, modules: list[str], device: str) -> Any:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")  # fork would copy torch's thread pools
        devices = None
        if self.devices:
            devices = ctx.Queue()
            for i in range(self.workers):
                devices.put(self.devices[i % len(self.devices)])
        return ProcessPoolExecutor(
            self.workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(data, self.threads, devices, modules, device),
        )

    def run(
        self,
        units: list[list[Cell]],
        data: BenchData,
        sink: StoreSink,
        device: str,
        progress: Any = None,
    ) -> None:
        modules = component_modules(units)
        schedule = RetrySchedule(units, self.workers)
        while schedule:  # one pool per round: a dead worker breaks the pool it was in
            with self._pool(data, modules, device) as pool:
                try:
                    self._round(pool, schedule, sink)
                except KeyboardInterrupt:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise

    @staticmethod
    def _round(pool: Any, schedule: RetrySchedule, sink: StoreSink) -> None:
        """Submit and collect until done or the pool breaks (its units are rescheduled)."""
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        broken: list[tuple[list[Cell], int, BaseException]] = []
        while schedule:
            while not broken and (job := schedule.next()) is not None:
                unit, tries = job
                try:
                    fut = pool.submit(_work, unit, pack_cache(sink, unit))
                except BrokenProcessPool as exc:  # broke before a future said so
                    schedule.pending.appendleft(job)
                    broken.append(([], 0, exc))
                    break
                schedule.started(fut, unit, tries)
            if not schedule.running:
                break
            done, _ = wait(list(schedule.running), return_when=FIRST_COMPLETED)
            for fut in done:
                unit, tries = schedule.finished(fut)
                try:
                    deliver(fut.result(), unit, sink)
                except BrokenProcessPool as exc:
                    broken.append((unit, tries, exc))
            if broken and not schedule.running:
                break
        for unit, tries, exc in broken:
            if unit:
                schedule.died(unit, tries, exc, sink)


class AutoExecutor:
    """The default: a process pool where the CPU has cores to spare, else here.

    On a CPU with at least ``2 × threads`` cores, a grid of two or more units runs on
    ``cores // threads`` spawned workers (at most one per unit, and at most
    :data:`AUTO_MAX_WORKERS`) of ``threads`` torch threads each (default 1); on ``cuda``
    with several GPUs, one worker per GPU (a unit on each at a time); on one GPU, a named
    ``cuda:K``, one core, or a single unit, units run here one after another.
    Per-unit threads fixed at one make a CPU run's numbers the same on 2 cores or 64 (the
    thread count sets the order of float sums), and on small models two one-thread workers
    train faster than one two-thread process (benchmarks/EXPERIMENTS.md).
    """

    name = "auto"

    def __init__(self, threads: int | None = None) -> None:
        self.requested = _threads(threads)  # run here, the process's own unless given
        self.threads = self.requested or 1

    def plan(self, units: int, device: str) -> Executor:
        """The executor this run uses for ``units`` units on ``device``."""
        if device == "cuda":  # every GPU there is (not one named cuda:K): one unit on each
            import torch

            gpus = min(torch.cuda.device_count(), units)
            if gpus < 2:
                return LocalExecutor(self.requested)
            devices = [f"cuda:{i}" for i in range(gpus)]
            return ProcessExecutor(gpus, devices, threads=self.threads)
        workers = min(_cores() // self.threads, units, AUTO_MAX_WORKERS)
        if not device.startswith("cpu") or workers < 2:
            return LocalExecutor(self.requested)
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


class RayExecutor(_Runs):
    """Units as Ray tasks: on the cluster at ``address`` or on a local Ray instance, each
    on ``threads`` torch threads (default ``cores / workers``)."""

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
                "the ray executor needs Ray: pip install 'flowkit[ray]' (or pip install ray)"
            ) from None
        self.address, self.devices = address, devices or None

    def _init(self) -> bool:
        """Start or join Ray; whether this call started it (and so shuts it down)."""
        import ray

        if ray.is_initialized():
            return False
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
        return True

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

        started = self._init()
        try:
            gpus = 1 if self.devices else 0
            # Ray retries a task whose worker died (max_retries): the retry policy is Ray's
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
) -> Executor:
    """The executor ``name`` with ``workers``, ``devices``, ``ray_address`` and ``threads``
    (each unit's torch threads, honoured by every executor), checked before anything runs.
    ``auto`` with ``workers`` or ``devices`` is ``process``."""
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; use one of {', '.join(EXECUTORS)}")
    _threads(threads)
    if name == "local" and (workers not in (None, 1) or devices):
        raise ConfigError(
            "workers and devices need the process or ray executor (local runs one unit at a time)"
        )
    if ray_address and name != "ray":
        raise ConfigError("ray_address needs the ray executor")
    if devices:  # every device checked now, not when a worker first uses it
        from flowkit.training import resolve_device

        for d in devices:
            try:
                resolve_device(d)
            except ConfigError as exc:
                raise ConfigError(f"devices: {exc}") from None
    if name == "auto":
        if workers is None and not devices:
            return AutoExecutor(threads)
        name = "process"
    if name == "local":
        return LocalExecutor(threads)
    n = workers if workers is not None else (len(devices) if devices else 2)
    if name == "process":
        return ProcessExecutor(n, devices, threads)
    return RayExecutor(n, ray_address, devices, threads)
