"""MLflow tracking for ``flowkit bench``, through flowkit's results hooks.

Each finished bench cell becomes one MLflow run (tag ``flowkit.kind = cell``) in the
experiment ``flowkit/<suite>``: its configuration as parameters, its metrics, timings and
threshold as metrics, its per-image scores (``scores.npz``) as an artifact, and its status,
cell id, combination and provenance as tags. Each written report becomes one run tagged
``flowkit.kind = report`` holding ``report.md``, ``report.csv`` and the plots as artifacts.

Logging is on when ``MLFLOW_TRACKING_URI`` is set (a server, a database, or a local folder —
MLflow 3 asks for ``MLFLOW_ALLOW_FILE_STORE=true`` for the latter); without it the plugin does
nothing, so installing it never makes a bench write tracking files into the working folder.
``FLOWKIT_MLFLOW_EXPERIMENT`` overrides the experiment name. Resumed runs log only the cells
they finish.

A tracking server that cannot be reached never stalls the bench: it is checked once, up
front, with a short timeout (``FLOWKIT_MLFLOW_TIMEOUT`` seconds, default 3), and on failure
(or the first failed call to MLflow) the plugin warns once and logs nothing more in this
process; the bench's own results are unaffected.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from flowkit import hookimpl

__version__ = "0.1.0"
__all__ = ["cell_params", "cell_metrics", "enabled"]


def _client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def _experiment(client: Any, suite: str) -> str:
    name = os.environ.get("FLOWKIT_MLFLOW_EXPERIMENT") or f"flowkit/{suite}"
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def cell_params(record: dict[str, Any]) -> dict[str, str]:
    """The cell's configuration as MLflow parameters (strings, at most 500 characters)."""
    return {k: str(v)[:500] for k, v in record["config"].items()}


def cell_metrics(record: dict[str, Any]) -> dict[str, float]:
    """Metrics, timings and the threshold: every finite number of the record."""
    out: dict[str, float] = {}
    for group in ("metrics", "timings", "training", "sizes"):
        for key, value in (record.get(group) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key if group == "metrics" else f"{group}.{key}"] = float(value)
    if isinstance(record.get("threshold"), (int, float)):
        out["threshold"] = float(record["threshold"])
    return out


_STATE: dict[str, Any] = {}  # per process: the URI checked, and whether it answered


def _off(why: str) -> None:
    """Warn once and log nothing more in this process."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if _STATE.get("off") != uri:
        warnings.warn(
            f"MLflow tracking at {uri} is unavailable ({why}); flowkit-mlflow logs nothing "
            "more in this run (the bench's own results are unaffected)",
            stacklevel=3,
        )
    _STATE["off"] = uri


def _reachable(uri: str) -> str | None:
    """``None`` when a tracking server answers within the timeout (any HTTP status counts),
    else why not. Non-HTTP URIs (a folder, a database) are not probed."""
    if not uri.startswith(("http://", "https://")):
        return None
    import urllib.error
    import urllib.request

    timeout = float(os.environ.get("FLOWKIT_MLFLOW_TIMEOUT", "3"))
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {str(exc)[:120]}"
    return None


def enabled() -> bool:
    """Whether runs are logged: only where the user chose a tracking URI, and while it is
    reachable (checked once per URI and process)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri or _STATE.get("off") == uri:
        return False
    if _STATE.get("checked") != uri:
        _STATE["checked"] = uri
        why = _reachable(uri)
        if why is not None:
            _off(why)
            return False
    return True


def _guarded(hook: Any) -> Any:
    """A hook whose MLflow failures warn once and turn the plugin off, never the bench."""
    import functools

    @functools.wraps(hook)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        if not enabled():
            return
        try:
            hook(*args, **kwargs)
        except Exception as exc:  # MLflow's own errors are many; none may stop a bench
            _off(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")

    return wrapper


@hookimpl
@_guarded
def flowkit_bench_record(record: dict[str, Any], run_dir: Path) -> None:
    from mlflow.entities import Metric, Param, RunTag

    client = _client()
    prov = record.get("provenance", {})
    tags = {
        "flowkit.kind": "cell",
        "flowkit.cell_id": record["cell_id"],
        "flowkit.status": record["status"],
        "flowkit.combination": record["combination"],
        "flowkit.target": str(record.get("target_name", "")),
        "flowkit.git_sha": str(prov.get("git_sha")),
        "flowkit.device": str(prov.get("device")),
        "flowkit.versions": str(prov.get("versions")),
    }
    if record.get("error"):
        tags["flowkit.error"] = str(record["error"])[:5000]
    run = client.create_run(
        _experiment(client, record.get("suite", "bench")),
        run_name=f"{record['combination']} | {record.get('target_name')} | seed "
        f"{record['config'].get('seed')}",
        tags=tags,
    )
    run_id = run.info.run_id
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, 0, 0) for k, v in cell_metrics(record).items()],
        params=[Param(k, v) for k, v in cell_params(record).items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    scores = Path(run_dir) / "scores" / f"{record['cell_id']}.npz"
    if scores.exists():
        client.log_artifact(run_id, str(scores))
    client.set_terminated(run_id, "FINISHED" if record["status"] == "ok" else "FAILED")


@hookimpl
@_guarded
def flowkit_bench_report(
    run_dir: Path, paths: dict[str, Path], records: list[dict[str, Any]]
) -> None:
    client = _client()
    suites = sorted({r.get("suite", "bench") for r in records}) or ["bench"]
    run = client.create_run(
        _experiment(client, suites[0]),
        run_name=f"report | {Path(run_dir).name}",
        tags={"flowkit.kind": "report", "flowkit.run_dir": str(run_dir)},
    )
    for path in paths.values():
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id, "FINISHED")
