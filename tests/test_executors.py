"""bench executors: local, process and ray give the same results; only the driver writes;
dead workers are retried once, then recorded as failed."""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from flowkit.bench.report import write_report
from flowkit.bench.runner import run_suite
from flowkit.bench.suite import Suite
from flowkit.cli import app
from flowkit.errors import ConfigError
from flowkit.executors import ProcessExecutor, RayExecutor, make_executor

GRID = dict(
    name="x",
    dataset="fake:per_class=30",
    classes=[0, 1, 2],
    encoders=["dcgan_ae:width=8,latent_dim=8"],
    flows=["realnvp:hidden=16,layers=2,blocks=1", "gaussian"],
    scorers=["nll", "knn"],
    epochs_encoder=1,
    epochs_flow=3,
)


def _aucs(store) -> dict[str, float]:
    recs = [json.loads(line) for line in store.results_path.read_text().splitlines()]
    assert all(r["status"] == "ok" for r in recs), [r.get("error") for r in recs]
    return {r["cell_id"]: r["metrics"]["auc"] for r in recs}


@pytest.fixture(scope="module")
def local_aucs(tmp_path_factory):
    """The local run, on one torch thread like each of 2 workers on this 2-core machine: a
    different thread count sums in a different order, which training can amplify."""
    import torch

    out = tmp_path_factory.mktemp("local")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        return _aucs(run_suite(Suite(**GRID).validate(), out, device="cpu"))
    finally:
        torch.set_num_threads(threads)


def _same(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == set(want) and len(want) == 12
    assert max(abs(got[k] - want[k]) for k in want) <= 1e-6


def test_process_executor_gives_the_local_results_and_resumes(tmp_path, local_aucs):
    store = run_suite(Suite(**GRID).validate(), tmp_path, device="cpu", executor=ProcessExecutor(2))
    _same(_aucs(store), local_aucs)
    # the driver wrote the cache and the scores the workers sent back
    assert len(list(store.cache.glob("encoders/*.pt"))) == 3
    assert len(list(store.cache.glob("densities/*.pt"))) == 6
    assert len(list((store.root / "scores").glob("*.npz"))) == 12
    mtimes = {p: p.stat().st_mtime_ns for p in store.cache.rglob("*.*")}
    run_suite(Suite(**GRID).validate(), tmp_path, device="cpu", executor=ProcessExecutor(2))
    assert len(store.results_path.read_text().splitlines()) == 12  # nothing rerun
    assert {p: p.stat().st_mtime_ns for p in store.cache.rglob("*.*")} == mtimes


def test_ray_executor_gives_the_local_results(tmp_path, local_aucs):
    store = run_suite(Suite(**GRID).validate(), tmp_path, device="cpu", executor=RayExecutor(2))
    _same(_aucs(store), local_aucs)
    assert len(list(store.cache.glob("encoders/*.pt"))) == 3


def test_a_worker_that_dies_is_retried_once_then_recorded_failed(tmp_path):
    from . import crashing_encoder

    crashing_encoder.register()
    grid = dict(GRID, encoders=["dcgan_ae:width=8,latent_dim=8", "crash_test"], classes=[0, 1])
    grid.update(flows=["gaussian"], scorers=["nll"])
    store = run_suite(Suite(**grid).validate(), tmp_path, device="cpu", executor=ProcessExecutor(2))
    recs = [json.loads(line) for line in store.results_path.read_text().splitlines()]
    by_status = {s: [r for r in recs if r["status"] == s] for s in ("ok", "failed")}
    assert len(recs) == 4 and len(by_status["ok"]) == 2
    assert {r["config"]["encoder"] for r in by_status["ok"]} == {"dcgan_ae:latent_dim=8,width=8"}
    assert all("worker died twice" in r["error"] for r in by_status["failed"])
    report = write_report(tmp_path, plots=False)["markdown"].read_text()
    assert "crash_test" in report and "worker died twice" in report


@pytest.mark.parametrize(
    "args, message",
    [
        (["--executor", "local", "--workers", "2"], "--workers and --devices need --executor"),
        (["--executor", "local", "--devices", "cuda:0"], "--workers and --devices need"),
        (["--ray-address", "auto"], "--ray-address needs --executor ray"),
        (["--executor", "process", "--ray-address", "auto"], "--ray-address needs"),
        (["--executor", "dask"], "unknown executor 'dask'; use one of auto, local, process, ray"),
    ],
)
def test_bad_executor_options_fail_in_one_line(args, message, tmp_path):
    res = CliRunner().invoke(app, ["bench", "--out", str(tmp_path / "r"), *args])
    assert res.exit_code == 2 and message in res.output
    assert not (tmp_path / "r").exists()


def test_ray_missing_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'flowkit\[ray\]'"):
        make_executor("ray", 2)


def test_bench_cli_runs_on_process_workers(tmp_path, local_aucs):
    suite = tmp_path / "x.toml"
    suite.write_text(
        "\n".join(f"{k} = {json.dumps(v)}" for k, v in GRID.items() if k != "name") + "\n"
    )
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "--suite",
            str(suite),
            "--out",
            str(tmp_path / "r"),
            "--executor",
            "process",
            "--workers",
            "2",
            "--device",
            "cpu",
            "-q",
            "--no-plots",
        ],
    )
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in (tmp_path / "r" / "results.jsonl").read_text().splitlines()]
    assert {r["cell_id"]: r["metrics"]["auc"] for r in recs} == pytest.approx(local_aucs, abs=1e-6)


def test_auto_executor_plans_one_single_thread_worker_per_core(monkeypatch):
    from flowkit import executors
    from flowkit.executors import AutoExecutor, LocalExecutor

    monkeypatch.setattr(executors, "cores", lambda: 4)
    plan = AutoExecutor().plan(10, "cpu")
    assert isinstance(plan, ProcessExecutor) and (plan.workers, plan.threads) == (4, 1)
    plan = AutoExecutor().plan(3, "cpu")  # never more workers than units
    assert (plan.workers, plan.threads) == (3, 1)
    plan = AutoExecutor(threads=2).plan(10, "cpu")  # --threads 2: 4 cores make 2 workers
    assert (plan.workers, plan.threads) == (2, 2)
    for units, device, threads in ((1, "cpu", None), (10, "cuda:0", None), (10, "cpu", 4)):
        assert isinstance(AutoExecutor(threads).plan(units, device), LocalExecutor)
    monkeypatch.setattr(executors, "cores", lambda: 1)
    assert isinstance(AutoExecutor().plan(10, "cpu"), LocalExecutor)
    monkeypatch.setattr(executors, "cores", lambda: 128)  # each worker copies torch + data
    assert AutoExecutor().plan(100, "cpu").workers == executors.AUTO_MAX_WORKERS
    # on CUDA: one worker per GPU, each on its own device; one GPU or a named one: here
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    plan = AutoExecutor().plan(10, "cuda")
    assert isinstance(plan, ProcessExecutor) and plan.workers == 4
    assert plan.devices == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert AutoExecutor().plan(3, "cuda").devices == ["cuda:0", "cuda:1", "cuda:2"]
    assert isinstance(AutoExecutor().plan(10, "cuda:2"), LocalExecutor)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert isinstance(AutoExecutor().plan(10, "cuda"), LocalExecutor)


def test_auto_is_the_default_and_workers_or_devices_make_it_process():
    from flowkit.executors import AutoExecutor

    assert isinstance(make_executor("auto"), AutoExecutor)
    assert make_executor("auto", threads=2).threads == 2
    proc = make_executor("auto", workers=3)
    assert isinstance(proc, ProcessExecutor) and proc.workers == 3
    assert make_executor("auto", devices=["cpu", "cpu"]).devices == ["cpu", "cpu"]
    # the library speaks of its parameters; the CLI maps them to flags (the table above)
    with pytest.raises(ConfigError, match="ray_address needs the ray executor"):
        make_executor("auto", ray_address="auto")
    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        make_executor("process", threads=0)
    # --threads is honoured by every executor, not dropped
    assert make_executor("process", workers=2, threads=1).threads == 1
    assert make_executor("local", threads=1).threads == 1
    assert AutoExecutor(threads=1).plan(5, "cpu").threads == 1


def test_auto_executor_gives_the_local_results(tmp_path, local_aucs):
    from flowkit.executors import AutoExecutor

    store = run_suite(Suite(**GRID).validate(), tmp_path, device="cpu", executor=AutoExecutor())
    _same(_aucs(store), local_aucs)


def test_library_errors_name_parameters_and_the_cli_spells_them_as_flags(tmp_path):
    from flowkit.bench.runner import run_suite
    from flowkit.cli._common import as_flags

    with pytest.raises(ConfigError, match="^workers must be a positive integer") as info:
        make_executor("process", workers=0)
    assert as_flags(str(info.value)).startswith("--workers must be a positive integer")
    with pytest.raises(ConfigError, match="^workers and devices need") as info:
        make_executor("local", workers=2)
    assert as_flags(str(info.value)).startswith("--workers and --devices need")
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="^out_dir .* is a file") as info:
        run_suite(Suite(**GRID).validate(), tmp_path / "f", device="cpu")
    assert as_flags(str(info.value)).startswith("--out ")
    assert as_flags("the threads of torch") == "the threads of torch"  # only the phrases


def test_every_executor_flag_is_checked_before_the_run_folder_exists(tmp_path):
    out = tmp_path / "run"
    for args, message in (
        (["--executor", "process", "--devices", "bogus"], "--devices: unknown device 'bogus'"),
        (["--executor", "ray", "--devices", "cpu,bogus"], "--devices: unknown device 'bogus'"),
        (["--devices", "cuda:7"], "--devices: device 'cuda:7' asked for"),
    ):
        res = CliRunner().invoke(app, ["bench", "--classes", "0", "--out", str(out), *args])
        if "cuda:7" in args and "CUDA is not available" not in res.output:
            continue  # a machine with a GPU: cuda:7 may exist
        assert res.exit_code == 2 and message in res.output, res.output
        assert not out.exists()


def test_threads_reach_the_workers_and_their_count_is_recorded(tmp_path):
    grid = {**GRID, "classes": [0]}
    store = run_suite(
        Suite(**grid).validate(), tmp_path, device="cpu", executor=ProcessExecutor(1, threads=1)
    )
    recs = [json.loads(line) for line in store.results_path.read_text().splitlines()]
    assert recs and all(r["provenance"]["torch_threads"] == 1 for r in recs)
