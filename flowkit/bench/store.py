"""The run directory: append-only results, per-cell scores and the encoder/flow cache.

``results.jsonl`` gets one line per finished cell, written with a single ``write`` on a file
opened for appending and fsynced, so a run killed at any moment loses at most the cell in
flight. A torn last line (a kill in the middle of a write) is repaired on the next open.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowkit.artifact import atomic_write_bytes
from flowkit.errors import ConfigError, RunLockedError

__all__ = ["RunStore", "git_sha", "read_results", "REQUIRED_FIELDS"]

LOCK_NAME = ".lock"
# What the report needs of every record; records without them are skipped with a warning.
REQUIRED_FIELDS = ("cell_id", "status", "combination", "config")
REQUIRED_CONFIG = (
    "dataset",
    "protocol",
    "target",
    "seed",
    "encoder",
    "preprocess",
    "flow",
    "scorer",
)


def git_sha() -> str | None:
    """The commit of the flowkit source tree, when it is a git checkout."""
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


class RunStore:
    """Files of one bench run under ``root`` (and a cache, by default ``root/cache``).

    ``create=False`` (for reading, e.g. ``flowkit report``) creates nothing and repairs
    nothing; a run opens its store with ``create=True`` and holds :meth:`lock` while it writes.
    """

    def __init__(
        self, root: str | Path, cache: str | Path | None = None, create: bool = False
    ) -> None:
        self.root = Path(root)
        self.cache = Path(cache) if cache else self.root / "cache"
        self.results_path = self.root / "results.jsonl"
        self.lock_path = self.root / LOCK_NAME
        if create:
            if self.root.exists() and not self.root.is_dir():
                raise ConfigError(f"out_dir {self.root} is a file, not a run directory")
            try:
                for d in (
                    self.root,
                    self.root / "scores",
                    self.cache / "encoders",
                    self.cache / "densities",
                ):
                    d.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create the run directory {self.root}: {exc}") from None

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory: one writer at a time. A second process gets a
        :class:`RunLockedError` naming the holder's pid; a lock left by a killed run is
        released by the kernel with its process, so the next run takes it over."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                raise RunLockedError(
                    f"{self.root} is in use by another flowkit bench (pid {holder}); wait for "
                    "it to finish or choose another --out"
                ) from None
            previous = os.pread(fd, 64, 0).decode(errors="replace").strip()
            if previous and previous != str(os.getpid()):
                warnings.warn(
                    f"{self.root}: took over the lock of pid {previous}, which ended without "
                    "releasing it (killed?); its finished cells are kept",
                    stacklevel=3,
                )
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            self._repair()
            try:
                yield
            finally:
                os.ftruncate(fd, 0)  # an empty lock file: released cleanly
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # -- results ---------------------------------------------------------------------------

    def _repair(self) -> None:
        """Cut a torn last line left by a kill in the middle of an append."""
        if not self.results_path.exists():
            return
        data = self.results_path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with open(self.results_path, "r+b") as fh:
                fh.truncate(keep)
            warnings.warn(
                f"{self.results_path}: removed an incomplete last record "
                "(the previous run was killed while writing it)",
                stacklevel=3,
            )

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, sort_keys=True, default=_json_default) + "\n").encode()
        fd = os.open(self.results_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def records(self) -> list[dict[str, Any]]:
        """The latest record of each cell (a retried failure replaces the failure)."""
        return list(read_results(self.results_path).values())

    def done(self) -> set[str]:
        return {cid for cid, r in read_results(self.results_path).items() if r["status"] == "ok"}

    # -- per-cell scores, for histograms -------------------------------------------------

    def scores_path(self, cell_id: str) -> Path:
        return self.root / "scores" / f"{cell_id}.npz"

    def save_scores(self, cell_id: str, **arrays: np.ndarray) -> Path:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return atomic_write_bytes(self.scores_path(cell_id), buf.getvalue())

    # -- cache -----------------------------------------------------------------------------

    def encoder_path(self, key: str) -> Path:
        return self.cache / "encoders" / f"{key}.pt"

    def density_path(self, key: str) -> Path:
        """A fitted density stage's state (preprocessing and flows), by the cell's flow key."""
        return self.cache / "densities" / f"{key}.pt"

    def save_tensors(self, path: Path, payload: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(payload, buf)
        atomic_write_bytes(path, buf.getvalue())

    def load_tensors(self, path: Path) -> dict[str, Any] | None:
        """A cached payload, or ``None`` if absent or unreadable (then it is rebuilt)."""
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            warnings.warn(f"ignoring unreadable cache file {path}: {exc}", stacklevel=2)
            return None


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """Records by cell id, the latest winning; unreadable lines are skipped with a warning."""
    out: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return out
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{n}: skipping an unreadable record", stacklevel=2)
                continue
            rec = upgrade_record(rec)
            missing = _missing_fields(rec)
            if missing:
                warnings.warn(
                    f"{path}:{n}: skipping a record without {', '.join(missing)}", stacklevel=2
                )
                continue
            out[rec["cell_id"]] = rec
    return out


#: Config fields of earlier versions and their names now (the commit that renamed each
#: promised that old records stay readable).
RENAMED_CONFIG = {"latent": "preprocess"}


def upgrade_record(rec: Any) -> Any:
    """A record of an earlier version with today's field names (a copy; others unchanged)."""
    cfg = rec.get("config") if isinstance(rec, dict) else None
    if not isinstance(cfg, dict) or not any(old in cfg for old in RENAMED_CONFIG):
        return rec
    cfg = dict(cfg)
    for old, new in RENAMED_CONFIG.items():
        if old in cfg and new not in cfg:
            cfg[new] = cfg.pop(old)
    return {**rec, "config": cfg}


def _missing_fields(rec: Any) -> list[str]:
    if not isinstance(rec, dict):
        return ["a JSON object"]
    missing = [k for k in REQUIRED_FIELDS if k not in rec]
    cfg = rec.get("config")
    if isinstance(cfg, dict):
        missing += [f"config.{k}" for k in REQUIRED_CONFIG if k not in cfg]
    elif "config" in rec:
        missing.append("config (an object)")
    metrics = rec.get("metrics")
    if rec.get("status") == "ok" and not (isinstance(metrics, dict) and "auc" in metrics):
        missing.append("metrics.auc")
    return missing


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
