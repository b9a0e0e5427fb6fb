from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from flowkit.cli import app


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return tmp_path


def test_bench_leaves_one_mlflow_run_per_cell_and_the_report(store):
    from mlflow.tracking import MlflowClient

    suite = store / "s.toml"
    suite.write_text(
        'dataset = "fake:per_class=20"\nclasses = [0, 1]\n'
        'encoders = ["dcgan_ae:width=8,latent_dim=8"]\n'
        'flows = ["realnvp:hidden=16,layers=2,blocks=1", "gaussian"]\n'
        "epochs_encoder = 1\nepochs_flow = 2\n"
    )
    args = ["bench", "--suite", str(suite), "--out", str(store / "run"), "--device", "cpu"]
    res = CliRunner().invoke(app, [*args, "-q", "--no-plots"])
    assert res.exit_code == 0, res.output
    client = MlflowClient()
    exp = client.get_experiment_by_name("flowkit/s")
    runs = client.search_runs([exp.experiment_id])
    cells = [r for r in runs if r.data.tags["flowkit.kind"] == "cell"]
    assert len(cells) == 4
    assert len({r.data.tags["flowkit.cell_id"] for r in cells}) == 4
    one = cells[0]
    assert one.data.params["flow"] in ("realnvp:blocks=1,hidden=16,layers=2", "gaussian")
    assert 0.0 <= one.data.metrics["auc"] <= 1.0 and "timings.flow_fit_s" in one.data.metrics
    artifacts = [a.path for a in client.list_artifacts(one.info.run_id)]
    assert any(p.endswith(".npz") for p in artifacts)
    reports = [r for r in runs if r.data.tags["flowkit.kind"] == "report"]
    assert len(reports) == 1
    names = {a.path for a in client.list_artifacts(reports[0].info.run_id)}
    assert {"report.md", "report.csv"} <= names
    # a resumed run logs nothing new for finished cells
    res = CliRunner().invoke(app, [*args, "-q", "--no-plots"])
    runs = client.search_runs([exp.experiment_id])
    assert len([r for r in runs if r.data.tags["flowkit.kind"] == "cell"]) == 4


def test_a_failing_tracker_warns_and_the_bench_goes_on(store, monkeypatch):
    import flowkit_mlflow

    def broken(*args, **kwargs):
        raise RuntimeError("tracking server down")

    monkeypatch.setattr(flowkit_mlflow, "_client", broken)
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "--suite",
            "quick",
            "--classes",
            "0",
            "--flow",
            "gaussian",
            "--epochs-encoder",
            "1",
            "--encoder",
            "dcgan_ae:width=8,latent_dim=8",
            "--out",
            str(store / "r2"),
            "-q",
            "--no-plots",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "tracking server down" in res.output and "logs nothing more" in res.output
    assert res.output.count("is unavailable") == 1  # warned once, then off
    lines = (store / "r2" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and np.isfinite(
        float(__import__("json").loads(lines[0])["metrics"]["auc"])
    )


def test_nothing_is_logged_without_a_tracking_uri(tmp_path, monkeypatch):
    import flowkit_mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)

    def must_not_run(*args, **kwargs):
        raise AssertionError("logged without a tracking URI")

    monkeypatch.setattr(flowkit_mlflow, "_client", must_not_run)
    flowkit_mlflow.flowkit_bench_record(record={}, run_dir=tmp_path)
    flowkit_mlflow.flowkit_bench_report(run_dir=tmp_path, paths={}, records=[])
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_server_is_checked_once_and_never_stalls_the_bench(tmp_path, monkeypatch):
    import time

    import flowkit_mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")  # nothing listens there
    calls = []
    monkeypatch.setattr(flowkit_mlflow, "_client", lambda: calls.append(1))
    start = time.perf_counter()
    res = CliRunner().invoke(
        app,
        ["bench", "--suite", "quick", "--classes", "0,1", "--flow", "gaussian",
         "--epochs-encoder", "1", "--encoder", "dcgan_ae:width=8,latent_dim=8",
         "--out", str(tmp_path / "r"), "-q", "--no-plots", "--device", "cpu",
         "--executor", "local"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.output.count("is unavailable") == 1 and "127.0.0.1:1" in res.output
    assert calls == []  # no MLflow call after the failed check, for cells or the report
    assert time.perf_counter() - start < 60
    assert len((tmp_path / "r" / "results.jsonl").read_text().splitlines()) == 2
