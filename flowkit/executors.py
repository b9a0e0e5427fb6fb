"""Where work runs: in this process, on spawned worker processes, or on Ray.

The one executor layer of flowkit: the bench's units (:mod:`flowkit.bench.units`) and
``flowkit score``'s chunks of files (:mod:`flowkit.scoring`) both run through it. What runs is
a :class:`Job`: ``setup`` once in each worker (receive the data, open the model), then
``work(item)`` per item; both are module-level functions, so that spawned processes and Ray
import them by name. Two ways to run a job:

- :meth:`Executor.map`: results **in the items' order** (scoring: rows in the local order);
- :meth:`Executor.run`: results as they finish, each handed to ``done`` on the driver; an item
  whose worker died (killed, out of memory, a lost Ray node) is retried once, alone, and then
  handed to ``died`` (the bench: only the driver writes the run directory).

The executors:

- :class:`AutoExecutor` (``auto``, the bench's default): on a CPU with two or more cores, two
  or more items run on one spawned worker per core (at most one per item), each on one torch
  thread (``threads=T``: T each, ``cores / T`` workers); on ``cuda`` with several GPUs, one
  worker per GPU; otherwise as ``local``.
- :class:`LocalExecutor` (``local``): items one after another in this process.
- :class:`ProcessExecutor` (``process``): ``concurrent.futures`` processes (spawned), each on
  ``cores / workers`` torch threads, or one device each of ``devices``.
- :class:`RayExecutor` (``ray``): Ray tasks (:meth:`~Executor.run`) or a Ray Data dataset
  mapped in order (:meth:`~Executor.map`), on the cluster at ``address`` or a local Ray
  instance. A worker's :class:`~flowkit.errors.FlowkitError` comes back in-band and is raised
  on the driver as its own class, not as Ray's wrapper with a traceback.

This module imports neither torch nor Ray until an executor needs them (the onnxruntime
scoring path runs without torch). :func:`cores` is flowkit's one count of usable cores.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from flowkit.errors import ConfigError, FlowkitError

__all__ = [
    "EXECUTORS",
    "Job",
    "Executor",
    "AutoExecutor",
    "LocalExecutor",
    "ProcessExecutor",
    "RayExecutor",
    "RetrySchedule",
    "make_executor",
    "cores",
    "check_count",
    "require_ray",
    "raise_reported",
]

EXECUTORS = ("auto", "local", "process", "ray")
RETRIES = 1  # an item whose worker died is run once more, then handed to ``died``
# ``auto`` starts at most this many workers: each holds its own torch and copy of the data
# (about 1 GiB on MNIST); process with workers=N goes further
AUTO_MAX_WORKERS = 16


def cores() -> int:
    """The CPU cores this process may use (its affinity where the OS says, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_count(name: str, value: Any) -> int | None:
    """``value`` if it is ``None`` or a positive integer, else :class:`ConfigError`."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def require_ray() -> None:
    """:class:`ConfigError` saying how to install Ray, where it is missing."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the ray executor needs Ray: pip install 'flowkit[ray]' (or pip install ray)"
        ) from None


def raise_reported(error: str) -> None:
    """Raise, on the driver, the flowkit error a worker reported as ``"Type: message"``
    (its own class where it is one of :mod:`flowkit.errors`', else :class:`FlowkitError`)."""
    from flowkit import errors

    name, _, message = error.partition(": ")
    cls = vars(errors).get(name)
    if not (isinstance(cls, type) and issubclass(cls, FlowkitError)):
        cls = FlowkitError
    try:
        raise cls(message)
    except TypeError:  # an error class whose constructor takes other arguments
        raise FlowkitError(message) from None


@dataclass(frozen=True)
class Job:
    """What workers run: ``setup(device, *setup_args)`` once in each worker, then
    ``work(item)`` for each item. ``modules`` are imported in each worker first (components a
    script registered by hand, which a spawned process would not otherwise see)."""

    work: Callable[[Any], Any]
    setup: Callable[..., None] | None = None
    setup_args: tuple[Any, ...] = ()
    modules: tuple[str, ...] = ()
    #: tells jobs apart in a reused worker (Ray's): a worker sets up each job once
    key: str = field(default_factory=lambda: uuid.uuid4().hex, compare=False)


# -- the worker side (module level: spawned processes and Ray import it) --------------------

_WORKER: dict[str, Any] = {}


def _set_threads(threads: int | None) -> None:
    """Each worker's torch threads; a worker that never imported torch (onnxruntime) keeps
    it that way."""
    if threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def _prepare(job: Job, device: str, threads: int | None) -> None:
    for name in job.modules:
        importlib.import_module(name)
    if job.setup is not None:
        job.setup(device, *job.setup_args)
    _set_threads(threads)
    _WORKER["job"] = job


def _init_process(job: Job, threads: int | None, devices: Any, device: str) -> None:
    _prepare(job, devices.get() if devices is not None else device, threads)


def _call(item: Any) -> Any:
    return _WORKER["job"].work(item)


def _prepare_once(job: Job, device: str, threads: int | None) -> None:
    """Set ``job`` up in this (reused) Ray worker process unless it already is."""
    if _WORKER.get("prepared") != (job.key, device):
        _prepare(job, device, threads)
        _WORKER["prepared"] = (job.key, device)


def _ray_task(job: Job, item: Any, device: str, threads: int | None) -> Any:
    _prepare_once(job, device, threads)
    return job.work(item)


def _ray_rows(batch: dict[str, Any], job: Job, device: str, threads: int | None) -> dict:
    """A Ray Data map over pickled items (column ``item``): one row out per item, the
    pickled result, or a :class:`FlowkitError` as ``"Type: message"`` in ``error`` (Ray Data
    would wrap it in its own exception and traceback). The job is set up once per Ray worker
    process: Ray reuses them between tasks."""
    _prepare_once(job, device, threads)
    out: dict[str, list[Any]] = {"result": [], "error": []}
    for blob in batch["item"]:
        try:
            result, error = pickle.dumps(_WORKER["job"].work(pickle.loads(blob))), ""
        except FlowkitError as err:
            result, error = b"", f"{type(err).__name__}: {err}"
        out["result"].append(result)
        out["error"].append(error)
    return out


# -- executors ------------------------------------------------------------------------------


Done = Callable[[Any, Any], None]
Died = Callable[[Any, str], None]


@runtime_checkable
class Executor(Protocol):
    """Where a job's items run: items in, results out.

    ``threads`` is the torch thread count each item runs on (``None``: the process's own),
    part of a bench run's provenance; ``workers`` how many run at once.
    """

    name: str
    threads: int | None
    workers: int

    def plan(self, items: int, device: str) -> Executor:
        """The executor that runs ``items`` items on ``device`` (itself, or what ``auto``
        chooses)."""
        ...

    def map(self, job: Job, items: Iterable[Any], device: str) -> Iterator[Any]:
        """``job.work(item)`` of every item, in the items' order."""
        ...

    def run(
        self,
        job: Job,
        items: list[Any],
        device: str,
        *,
        done: Done,
        died: Died,
        pack: Callable[[Any], Any] | None = None,
    ) -> None:
        """Every item's result handed to ``done(item, result)`` as it finishes (on the
        driver); an item whose worker died twice to ``died(item, reason)``. ``pack(item)``,
        called just before an item is sent, is what the worker's ``work`` receives."""
        ...


class _Runs:
    """An executor that runs items itself: its plan is itself."""

    def plan(self, items: int, device: str) -> Executor:
        return self  # type: ignore[return-value]


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    torch = sys.modules.get("torch")
    previous = torch.get_num_threads() if torch is not None else None
    _set_threads(threads)
    try:
        yield
    finally:
        if torch is not None and threads:
            torch.set_num_threads(previous)


class LocalExecutor(_Runs):
    """Items one after another in this process (on ``threads`` torch threads, if given)."""

    name = "local"
    workers = 1

    def __init__(self, threads: int | None = None) -> None:
        self.threads = check_count("threads", threads)

    def map(self, job: Job, items: Iterable[Any], device: str) -> Iterator[Any]:
        with _torch_threads(self.threads):
            if job.setup is not None:
                job.setup(device, *job.setup_args)
            for item in items:
                yield job.work(item)

    def run(
        self,
        job: Job,
        items: list[Any],
        device: str,
        *,
        done: Done,
        died: Died,
        pack: Callable[[Any], Any] | None = None,
    ) -> None:
        packed = (pack(item) if pack else item for item in items)
        for item, result in zip(items, self.map(job, packed, device), strict=True):
            done(item, result)


def _sized(workers: Any, threads: int | None) -> tuple[int, int]:
    """Checked worker count and torch threads per worker (default: cores / workers)."""
    check_count("workers", workers)
    if workers is None:
        raise ConfigError("workers must be a positive integer, got None")
    return workers, check_count("threads", threads) or max(1, cores() // workers)


def _died(exc: BaseException) -> str:
    return f"its worker died twice ({type(exc).__name__}: killed, or out of memory?)"


class RetrySchedule:
    """Which item runs next, apart from any pool: items in order, at most ``slots`` at a
    time; an item whose worker died is retried :data:`RETRIES` time(s), **alone** (a dead
    worker breaks a whole process pool, so the items beside it are retried too and must not
    die with it twice), then handed to ``died``."""

    def __init__(self, items: list[Any], slots: int) -> None:
        self.pending: deque[tuple[Any, int]] = deque((u, 0) for u in items)
        self.running: dict[Any, tuple[Any, int]] = {}
        self.slots = slots

    def __bool__(self) -> bool:
        return bool(self.pending or self.running)

    def next(self) -> tuple[Any, int] | None:
        """The item that may start now, or ``None`` (all slots busy, or a retry waits to
        run alone, or runs alone)."""
        if not self.pending or len(self.running) >= self.slots:
            return None
        if any(tries for _, tries in self.running.values()):
            return None  # a retry runs alone
        item, tries = self.pending[0]
        if tries and self.running:
            return None  # wait for the others to finish, then retry alone
        return self.pending.popleft()

    def started(self, handle: Any, item: Any, tries: int) -> None:
        self.running[handle] = (item, tries)

    def finished(self, handle: Any) -> tuple[Any, int]:
        return self.running.pop(handle)

    def died(self, item: Any, tries: int, exc: BaseException, died: Died) -> None:
        """The item's worker died: retry it first, or hand it to ``died``."""
        if tries >= RETRIES:
            died(item, _died(exc))
        else:
            self.pending.appendleft((item, tries + 1))


class ProcessExecutor(_Runs):
    """Items on ``workers`` spawned processes (``concurrent.futures``), each on ``threads``
    torch threads (default ``cores / workers``) or one device each of ``devices``."""

    name = "process"

    def __init__(
        self, workers: int = 2, devices: list[str] | None = None, threads: int | None = None
    ) -> None:
        self.workers, self.threads = _sized(workers, threads)
        self.devices = devices or None

    def _pool(self, job: Job, device: str, workers: int | None = None) -> Any:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")  # fork would copy torch's thread pools
        n = workers or self.workers
        devices = None
        if self.devices:
            devices = ctx.Queue()
            for i in range(n):
                devices.put(self.devices[i % len(self.devices)])
        return ProcessPoolExecutor(
            n,
            mp_context=ctx,
            initializer=_init_process,
            initargs=(job, self.threads, devices, device),
        )

    def map(self, job: Job, items: Iterable[Any], device: str) -> Iterator[Any]:
        items = list(items)
        with self._pool(job, device, min(self.workers, max(1, len(items)))) as pool:
            # map keeps the items' order; a few ahead per worker keep them all busy
            yield from pool.map(_call, items)

    def run(
        self,
        job: Job,
        items: list[Any],
        device: str,
        *,
        done: Done,
        died: Died,
        pack: Callable[[Any], Any] | None = None,
    ) -> None:
        schedule = RetrySchedule(items, self.workers)
        while schedule:  # one pool per round: a dead worker breaks the pool it was in
            with self._pool(job, device) as pool:
                try:
                    self._round(pool, schedule, done, died, pack)
                except KeyboardInterrupt:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise

    @staticmethod
    def _round(
        pool: Any,
        schedule: RetrySchedule,
        done: Done,
        died: Died,
        pack: Callable[[Any], Any] | None,
    ) -> None:
        """Submit and collect until done or the pool breaks (its items are rescheduled)."""
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        broken: list[tuple[Any, int, BaseException]] = []
        while schedule:
            while not broken and (job := schedule.next()) is not None:
                item, tries = job
                try:
                    fut = pool.submit(_call, pack(item) if pack else item)
                except BrokenProcessPool as exc:  # broke before a future said so
                    schedule.pending.appendleft(job)
                    broken.append((None, 0, exc))
                    break
                schedule.started(fut, item, tries)
            if not schedule.running:
                break
            finished, _ = wait(list(schedule.running), return_when=FIRST_COMPLETED)
            for fut in finished:
                item, tries = schedule.finished(fut)
                try:
                    result = fut.result()
                except BrokenProcessPool as exc:
                    broken.append((item, tries, exc))
                    continue
                done(item, result)
            if broken and not schedule.running:
                break
        for item, tries, exc in broken:
            if item is not None:
                schedule.died(item, tries, exc, died)


class AutoExecutor:
    """The default: a process pool where the CPU has cores to spare, else here.

    On a CPU with at least ``2 × threads`` cores, two or more items run on
    ``cores // threads`` spawned workers (at most one per item, and at most
    :data:`AUTO_MAX_WORKERS`) of ``threads`` torch threads each (default 1); on ``cuda``
    with several GPUs, one worker per GPU; on one GPU, a named ``cuda:K``, one core, or a
    single item, items run here one after another. Per-item threads fixed at one make a CPU
    run's numbers the same on 2 cores or 64 (the thread count sets the order of float sums),
    and on small models two one-thread workers train faster than one two-thread process
    (benchmarks/EXPERIMENTS.md).
    """

    name = "auto"

    def __init__(self, threads: int | None = None) -> None:
        self.requested = check_count("threads", threads)  # run here: the process's own
        self.threads = self.requested or 1
        self.workers = 1

    def plan(self, items: int, device: str) -> Executor:
        """The executor this run uses for ``items`` items on ``device``."""
        if device == "cuda":  # every GPU there is (not one named cuda:K): one item on each
            import torch

            gpus = min(torch.cuda.device_count(), items)
            if gpus < 2:
                return LocalExecutor(self.requested)
            devices = [f"cuda:{i}" for i in range(gpus)]
            return ProcessExecutor(gpus, devices, threads=self.threads)
        workers = min(cores() // self.threads, items, AUTO_MAX_WORKERS)
        if not device.startswith("cpu") or workers < 2:
            return LocalExecutor(self.requested)
        return ProcessExecutor(workers, threads=self.threads)

    def map(self, job: Job, items: Iterable[Any], device: str) -> Iterator[Any]:
        items = list(items)
        return self.plan(len(items), device).map(job, items, device)

    def run(self, job: Job, items: list[Any], device: str, **kwargs: Any) -> None:
        self.plan(len(items), device).run(job, items, device, **kwargs)


class RayExecutor(_Runs):
    """Items on Ray: on the cluster at ``address`` or on a local Ray instance with
    ``workers`` CPUs, each item on ``threads`` torch threads (default ``cores / workers``)."""

    name = "ray"

    def __init__(
        self,
        workers: int = 2,
        address: str | None = None,
        devices: list[str] | None = None,
        threads: int | None = None,
    ) -> None:
        self.workers, self.threads = _sized(workers, threads)
        require_ray()
        self.address, self.devices = address, devices or None

    @contextmanager
    def _session(self) -> Iterator[Any]:
        """Start or join Ray; shut down what this call started."""
        import ray

        started = not ray.is_initialized()
        if started and self.address:
            ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
        elif started:
            ray.init(
                num_cpus=self.workers,
                num_gpus=len(self.devices) if self.devices else 0,
                include_dashboard=False,
                logging_level="ERROR",
                log_to_driver=False,
            )
        try:
            yield ray
        finally:
            if started:
                ray.shutdown()

    def run(
        self,
        job: Job,
        items: list[Any],
        device: str,
        *,
        done: Done,
        died: Died,
        pack: Callable[[Any], Any] | None = None,
    ) -> None:
        from ray.exceptions import RayError

        with self._session() as ray:
            gpus = 1 if self.devices else 0
            # Ray retries a task whose worker died (max_retries): the retry policy is Ray's
            task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=RETRIES)(_ray_task)
            # Ray sets CUDA_VISIBLE_DEVICES per task: "cuda" is that task's own GPU
            dev = "cuda" if gpus else device
            job_ref = ray.put(job)
            refs = {
                task.remote(job_ref, pack(item) if pack else item, dev, self.threads): item
                for item in items
            }
            try:
                while refs:
                    ready, _ = ray.wait(list(refs), num_returns=1)
                    item = refs.pop(ready[0])
                    try:
                        result = ray.get(ready[0])
                    except RayError as exc:  # a lost worker or node, after Ray's retry
                        first = (str(exc).strip().splitlines() or [""])[0][:160]
                        died(item, f"Ray: {type(exc).__name__}: {first}")
                        continue
                    done(item, result)
            except KeyboardInterrupt:
                for ref in refs:
                    ray.cancel(ref, force=True)
                raise

    def map(self, job: Job, items: Iterable[Any], device: str) -> Iterator[Any]:
        """The items as a Ray Data dataset (one block each, order preserved) mapped by
        ``workers`` tasks at a time; a worker's flowkit error is raised here, as its own
        class. A driver's own Ray Data settings (order, progress bars) and its ``ray.data``
        log level are restored after."""
        import logging

        items = list(items)
        with self._session() as ray:
            import ray.data

            context = ray.data.DataContext.get_current()
            saved = (context.execution_options.preserve_order, context.enable_progress_bars)
            log = logging.getLogger("ray.data")
            level = log.level
            try:
                context.execution_options.preserve_order = True  # results in the items' order
                context.enable_progress_bars = False  # the CLI has its own
                log.setLevel(logging.ERROR)  # its INFO lines on stderr
                rows = ray.data.from_items(
                    [{"item": pickle.dumps(item)} for item in items],
                    override_num_blocks=max(1, len(items)),
                ).map_batches(
                    _ray_rows,
                    fn_kwargs={"job": job, "device": device, "threads": self.threads},
                    batch_size=1,  # one item a call
                    batch_format="numpy",
                    compute=ray.data.TaskPoolStrategy(size=min(self.workers, max(1, len(items)))),
                    num_cpus=1,
                )
                for row in rows.iter_rows():
                    if row["error"]:
                        raise_reported(row["error"])
                    yield pickle.loads(row["result"])
            finally:
                context.execution_options.preserve_order, context.enable_progress_bars = saved
                log.setLevel(level)


def make_executor(
    name: str,
    workers: int | None = None,
    devices: list[str] | None = None,
    ray_address: str | None = None,
    threads: int | None = None,
) -> Executor:
    """The executor ``name`` with ``workers``, ``devices``, ``ray_address`` and ``threads``
    (each item's torch threads, honoured by every executor), checked before anything runs.
    ``auto`` with ``workers`` or ``devices`` is ``process``."""
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; use one of {', '.join(EXECUTORS)}")
    check_count("threads", threads)
    check_count("workers", workers)
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
