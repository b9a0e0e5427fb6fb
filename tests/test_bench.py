from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from flowkit.bench.report import write_report
from flowkit.bench.runner import run_suite
from flowkit.bench.suite import Suite, list_suites, load_suite
from flowkit.cli import app
from flowkit.errors import ConfigError

from .conftest import write_colour_classes

TINY_SUITE = dict(
    name="t",
    dataset="fake:per_class=30",
    classes=[0, 1],
    encoders=["dcgan_ae:width=8,latent_dim=8"],
    flows=["realnvp:hidden=16,layers=2,blocks=1"],
    epochs_encoder=1,
    epochs_flow=3,
)


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_shipped_suites_load():
    assert {"quick", "paper-mnist", "paper-cifar10", "paper-svhn-ood"} <= set(list_suites())
    # --suite's help names every suite that ships with flowkit
    import pathlib

    import typer.main

    import flowkit

    shipped = {p.stem for p in (pathlib.Path(flowkit.__file__).parent / "suites").glob("*.toml")}
    bench_cmd = typer.main.get_command(app).commands["bench"]
    suite_help = next(p.help for p in bench_cmd.params if p.name == "suite")
    suite_help = suite_help.split(")", 1)[0]
    assert shipped == set(suite_help.split("(", 1)[1].split(", ")), suite_help
    quick = load_suite("quick")
    assert quick.dataset == "digits" and set(quick.flows) == {"realnvp", "gaussian"}
    assert load_suite("paper-svhn-ood").protocol == "ood"
    assert load_suite("paper-mnist").seeds == [0, 1, 2]


def test_overrides_and_bad_fields(tmp_path):
    s = load_suite("quick").with_overrides(classes=[0, 1, 7], seeds=None)
    assert s.classes == [0, 1, 7] and s.seeds == [0]
    bad = tmp_path / "bad.toml"
    bad.write_text('dataset = "digits"\nflws = ["realnvp"]\n')
    with pytest.raises(ConfigError, match="unknown field.*flws"):
        load_suite(str(bad))


def test_a_bench_cell_scores_as_the_detector_fitted_on_its_split(tmp_path):
    """The bench's unit and Detector.fit share one fit path: through both public APIs, on the
    same data and seed, the test scores and thresholds are identical, for every flow (with
    and without augmented latents) and scorer of a unit."""
    from flowkit import Detector
    from flowkit.bench.runner import cell_scores, load_bench_data

    suite = Suite(
        **{
            **TINY_SUITE,
            "classes": [1],
            "encoders": ["simclr:width=8,latent_dim=8"],
            "flows": ["realnvp:hidden=16,layers=2,blocks=1", "gaussian"],
            "scorers": ["nll", "nll+knn:k=2"],
            "flow_augment": 1,
        }
    ).validate()
    store = run_suite(suite, tmp_path / "run", device="cpu")
    records = [r for r in store.records() if r["status"] == "ok"]
    assert len(records) == 4
    data = load_bench_data(suite)
    cells = {c.cell_id: c for c in suite.cells(data.targets(suite))}
    for rec in records:
        cell = cells[rec["cell_id"]]
        split = data.split(cell)
        det = Detector(**cell.detector_params("cpu")).fit(split.train.images)
        bench = cell_scores(store, cell.cell_id)
        np.testing.assert_array_equal(bench["anomaly_score"], det.anomaly_score(split.test.images))
        assert rec["threshold"] == det.threshold_


def test_grid_trains_each_encoder_once_and_resumes(tmp_path):
    suite = Suite(**TINY_SUITE).validate()
    store = run_suite(suite, tmp_path, device="cpu")
    recs = lines(store.results_path)
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs)
    assert {r["target_name"] for r in recs} == {"0", "1"}
    r = recs[0]
    assert {"auc", "ap", "f1"} <= set(r["metrics"])
    assert {"encoder_fit_s", "flow_fit_s", "score_images_per_s"} <= set(r["timings"])
    assert r["provenance"]["versions"]["torch"] and r["provenance"]["seed"] == 0
    enc_files = sorted(store.cache.glob("encoders/*.pt"))
    assert len(enc_files) == 2
    mtimes = [f.stat().st_mtime_ns for f in enc_files]

    # Adding a flow and a scorer trains no encoder again and reruns no finished cell.
    bigger = suite.with_overrides(flows=suite.flows + ["gaussian"], scorers=["nll", "bpd"])
    run_suite(bigger, tmp_path, device="cpu")
    recs = lines(store.results_path)
    assert len(recs) == 8 and len({r["cell_id"] for r in recs}) == 8
    assert all(r["timings"]["encoder_cached"] for r in recs[2:])
    assert [f.stat().st_mtime_ns for f in enc_files] == mtimes
    # the flow is shared by scorers: bpd cells reuse the cached realnvp
    bpd_realnvp = [
        r for r in recs[2:] if r["config"]["scorer"] == "bpd" and "realnvp" in r["config"]["flow"]
    ]
    assert bpd_realnvp and all(r["timings"]["flow_cached"] for r in bpd_realnvp)

    # Everything done: a rerun appends nothing.
    run_suite(bigger, tmp_path, device="cpu")
    assert len(lines(store.results_path)) == 8


def test_killed_run_resumes_and_torn_line_is_repaired(tmp_path):
    suite = Suite(**TINY_SUITE).validate()
    store = run_suite(suite, tmp_path, device="cpu")
    full = store.results_path.read_text().splitlines(keepends=True)
    # Simulate a SIGKILL during the second append: half a line, no newline.
    store.results_path.write_text(full[0] + full[1][: len(full[1]) // 2])
    with pytest.warns(UserWarning, match="incomplete last record"):
        run_suite(suite, tmp_path, device="cpu")
    recs = lines(store.results_path)
    assert len(recs) == 2 and len({r["cell_id"] for r in recs}) == 2


def test_failed_cell_is_recorded_and_others_continue(tmp_path):
    # the rotation scorer needs a rotnet encoder: that fails in the cell, not up front
    suite = Suite(**{**TINY_SUITE, "scorers": ["nll", "rotation"]}).validate()
    run_suite(suite, tmp_path, device="cpu")
    recs = lines(tmp_path / "results.jsonl")
    ok = [r for r in recs if r["status"] == "ok"]
    failed = [r for r in recs if r["status"] == "failed"]
    assert len(ok) == 2 and len(failed) == 2
    assert "rotation-prediction encoder" in failed[0]["error"]
    paths = write_report(tmp_path)
    text = paths["markdown"].read_text()
    assert "## Failed cells" in text and "rotation" in text


@pytest.mark.parametrize(
    "flow, match",
    [
        ("realnvp:hidden=16,bogus=1", "no option 'bogus'"),
        ("realnvp:layers=abc", "option layers must be an integer"),
        ("realnvp:layers=-2", "layers must be >= 1"),
    ],
)
def test_bad_component_specs_stop_the_bench_before_training(tmp_path, flow, match):
    suite = Suite(**{**TINY_SUITE, "flows": ["realnvp:hidden=16,layers=2,blocks=1", flow]})
    with pytest.raises(ConfigError, match=match):
        run_suite(suite.validate(), tmp_path, device="cpu")
    assert list(tmp_path.iterdir()) == []  # refused before the run directory was touched
    res = CliRunner().invoke(
        app, ["bench", "--suite", "quick", "--flow", flow, "--out", str(tmp_path / "b"), "-q"]
    )
    assert res.exit_code == 2 and match.split("'")[0] in res.output
    assert "Traceback" not in res.output


def test_report_tables_plots_and_reference(tmp_path):
    suite = Suite(**{**TINY_SUITE, "seeds": [0, 1]}).validate()
    run_suite(suite, tmp_path, device="cpu")
    paths = write_report(tmp_path)
    md = paths["markdown"].read_text()
    assert "± " in md and "**mean**" in md and "Caveats" in md
    csv_text = paths["csv"].read_text()
    assert csv_text.splitlines()[0].startswith("dataset,protocol,target")
    pngs = [p for k, p in paths.items() if k not in ("markdown", "csv")]
    assert len(pngs) == 3 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    # the image grid: what the model flags, from the images each cell kept
    assert any("-extremes-" in p.name for p in pngs)
    with np.load(next((tmp_path / "scores").glob("*.npz"))) as npz:
        top, s = npz["top_images"], npz["anomaly_score"]
        assert npz["bottom_images"].shape == top.shape
        assert top.dtype == np.uint8 and top.shape[0] == 8 and top.shape[1:] == (1, 32, 32)
        assert s[npz["top_index"][0]] == s.max() and s[npz["bottom_index"][0]] == s.min()
    # a results folder kept without its scores/ (as benchmarks/results/ keeps them): the
    # report is rewritten from the records, and the figures drawn from scores stay as drawn
    drawn = {k: p.read_bytes() for k, p in paths.items() if "-hist-" in k or "-extremes-" in k}
    shutil.rmtree(tmp_path / "scores")
    again = write_report(tmp_path)
    assert {k: again[k].read_bytes() for k in drawn} == drawn
    assert all(f"]({again[k].name})" in again["markdown"].read_text() for k in drawn)


def test_reference_figures_are_labelled():
    from flowkit.bench.report import _reference_columns, load_reference

    ref = load_reference()
    # one-class runs get the published one-class means, labelled, on CIFAR-10's classes only
    from flowkit.bench.report import _published_one_class

    line = _published_one_class("folder", ref, [("0", "airplane"), ("3", "cat")])
    assert "PANDA 0.962" in line[0] and "not re-checked" in line[2]
    assert _published_one_class("folder", ref, [("0", "zero"), ("1", "one")]) == []
    names, cols, notes = _reference_columns("cifar10", ref, [("2", "bird"), ("1", "car")])
    assert cols["GANomaly (published)"] == ["0.510", "0.631†"]  # bird verified, car not
    assert cols["Skip-GANomaly (published)"] == ["0.448†", "0.953"]
    assert "unverified" in notes[0]
    names, cols, _ = _reference_columns("mnist", ref, [("1", "1")])
    assert cols[names[0]] == ["chart only"]
    # a folder of CIFAR-10 classes (torchvision's names) gets the CIFAR-10 rows, by name
    names, cols, _ = _reference_columns("folder", ref, [("0", "airplane"), ("2", "bird")])
    assert cols["GANomaly (published)"] == ["0.633†", "0.510"]
    assert _reference_columns("folder", ref, [("0", "airplane"), ("1", "c_dog")]) == ([], {}, [])


def test_the_auc_figure_shows_the_published_bars_a_folder_of_cifar_classes_gets(
    tmp_path, monkeypatch
):
    # the report's table matched a folder's CIFAR-10 class names; its AUC bars did not
    from flowkit.bench import plots
    from flowkit.bench.aggregate import Aggregate, published_table
    from flowkit.bench.report import load_reference

    ref = load_reference()
    table, index = published_table("folder", ref, [("0", "ship"), ("1", "airplane")])
    assert index == [8, 0] and table is ref["cifar10"]
    assert published_table("cifar10", ref, [("8", "8"), ("12", "12")])[1] == [8, None]
    drawn = []
    monkeypatch.setattr(plots, "_figure_bytes", lambda fig: drawn.append(fig) or b"")
    monkeypatch.setattr(plots, "atomic_write_bytes", lambda path, data: path)
    agg = Aggregate("folder", "loo", "0", "ship", "a", {}, {}, values={"auc": [0.6]}, seeds=[0])
    plots._auc_bars(SimpleNamespace(root=tmp_path), "folder", "loo", [agg], ref, "Data: x")
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "GANomaly (published)"]
    assert [round(b.get_height(), 3) for b in ax.patches] == [0.6, 0.616]  # ship's published


def test_a_cached_encoder_trained_on_other_views_is_retrained_with_its_density(tmp_path):
    """An entry written before views="auto" gave colour images natural views (no tag, so
    random-affine views) is stale for an RGB simclr; a grayscale one still resumes."""
    import torch

    colour = Suite(
        **{
            **TINY_SUITE,
            "dataset": "fake:per_class=30,channels=3",
            "classes": [0],
            "encoders": ["simclr:width=8,latent_dim=8,projection_dim=8"],
        }
    ).validate()
    gray = colour.with_overrides(dataset="fake:per_class=30")
    for suite, name in ((colour, "c"), (gray, "g")):
        store = run_suite(suite, tmp_path / name, device="cpu")
        (entry,) = store.cache.glob("encoders/*.pt")
        old = torch.load(entry, weights_only=False)
        assert old.pop("views").startswith("Augment(affine=%s" % (name == "g"))
        torch.save(old, entry)  # as an earlier flowkit wrote it
        (store.results_path).unlink()
        run_suite(suite, tmp_path / name, device="cpu")
        (rec,) = lines(store.results_path)
        cached = name == "g"
        assert rec["timings"]["encoder_cached"] is cached
        assert rec["timings"]["flow_cached"] is cached
        # the retrained entry is tagged; the resumed one is left as it was
        assert ("views" in torch.load(entry, weights_only=False)) is not cached


def test_the_views_tag_is_the_same_in_every_process():
    """A plugin encoder whose views are a plain function must not be retrained on every
    resume because the function's repr names its address."""
    from torch import nn

    from flowkit.pipeline import views_tag

    def my_views(x):
        return x

    class WithFunctionViews(nn.Module):
        augment = staticmethod(my_views)

    tag = views_tag(WithFunctionViews())
    assert "0x" not in tag and "my_views" in tag


def test_ood_protocol(tmp_path):
    suite = Suite(
        name="o",
        dataset="fake:per_class=20",
        protocol="ood",
        out_datasets=["fake:per_class=20,seed=5,channels=1,classes=2"],
        encoders=["dcgan_ae:width=8,latent_dim=8"],
        flows=["gaussian"],
        epochs_encoder=1,
        epochs_flow=2,
    ).validate()
    run_suite(suite, tmp_path, device="cpu")
    rec = lines(tmp_path / "results.jsonl")[0]
    assert rec["status"] == "ok", rec.get("error")
    assert {"aupr_in", "aupr_out", "fpr95"} <= set(rec["metrics"])


def test_ood_sets_take_the_models_channels_and_their_own_root(tmp_path):
    from PIL import Image

    from flowkit.bench.runner import load_bench_data

    elsewhere = tmp_path / "elsewhere" / "digits"
    elsewhere.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((12, 12), 40 * i, np.uint8)).save(elsewhere / f"{i}.png")
    suite = Suite(
        name="o",
        dataset="fake:per_class=20,channels=3",
        protocol="ood",
        out_datasets=[
            "fake:per_class=20,seed=5,channels=1,classes=2",
            f"folder:root={tmp_path / 'elsewhere'}",
        ],
        encoders=["dcgan_ae:width=8,latent_dim=8"],
        flows=["gaussian"],
        epochs_encoder=1,
        epochs_flow=2,
    ).validate()
    data = load_bench_data(suite, root=tmp_path / "nothing-here", download=False)
    gray, folder = data.out.values()
    assert data.data.images.shape[1] == 3
    assert gray.images.shape[1:] == folder.images.shape[1:] == (3, 32, 32)
    # grayscale repeated on every channel, read from the set's own root
    assert torch.equal(gray.images[:, 0], gray.images[:, 2])
    run_suite(suite, tmp_path / "run", device="cpu")
    assert [r["status"] for r in lines(tmp_path / "run" / "results.jsonl")] == ["ok", "ok"]


def test_bench_cli_resumes(tmp_path):
    runner = CliRunner()
    args = [
        "bench",
        "--dataset",
        "fake:per_class=30",
        "--classes",
        "0,1",
        "--encoder",
        "dcgan_ae:width=8,latent_dim=8",
        "--flow",
        "gaussian",
        "--epochs-encoder",
        "1",
        "--epochs-flow",
        "2",
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
        "-q",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "mean ROC AUC" in res.output and (tmp_path / "report.md").exists()
    before = (tmp_path / "results.jsonl").read_text()
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and (tmp_path / "results.jsonl").read_text() == before
    assert os.path.exists(tmp_path / "report.csv")


def test_paper_mnist_suite_runs_on_files_in_torchvision_layout(tmp_path):
    from .test_data import write_mnist

    write_mnist(tmp_path / "data", n=60)
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "bench",
            "--suite",
            "paper-mnist",
            "--data-root",
            str(tmp_path / "data"),
            "--no-download",
            "--classes",
            "3",
            "--seeds",
            "0",
            "--encoder",
            "dcgan_ae:width=8,latent_dim=8",
            "--epochs-encoder",
            "1",
            "--epochs-flow",
            "2",
            "--out",
            str(tmp_path / "run"),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    rec = lines(tmp_path / "run" / "results.jsonl")[0]
    assert rec["config"]["dataset"] == "mnist" and rec["status"] == "ok"
    assert rec["sizes"]["anomalies"] == 12  # every image of digit 3, from both splits
    md = (tmp_path / "run" / "report.md").read_text()
    assert "chart only" in md  # GANomaly's MNIST figures exist only as a chart


def test_compare_anomalib_says_how_to_install_it_when_missing(tmp_path):
    """The anomalib comparison is optional: without anomalib it says so and exits cleanly
    (before touching the data root, so any path will do)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "compare_anomalib.py"
    blocker = tmp_path / "anomalib.py"
    blocker.write_text("raise ImportError('blocked for this test')\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    res = subprocess.run(
        [sys.executable, str(script), "--data-root", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "anomalib is not installed: pip install anomalib" in res.stdout


def test_compare_anomalib_trains_and_scores_flowkits_side_with_its_overrides(tmp_path, monkeypatch):
    """The script's flowkit side (no anomalib needed) on tiny data: the suite's cell with
    ``--flowkit-epochs`` and ``--flowkit-precision`` applied, scores for every test file."""
    import importlib.util
    from pathlib import Path

    import numpy as np

    import flowkit
    from flowkit.data import leave_one_class_out

    path = Path(__file__).parents[1] / "benchmarks" / "compare_anomalib.py"
    spec = importlib.util.spec_from_file_location("compare_anomalib", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    built = []

    class Recording(flowkit.Detector):
        def __init__(self, **params):
            super().__init__(**params)
            built.append(params)

    monkeypatch.setattr(flowkit, "Detector", Recording)
    split = leave_one_class_out(flowkit.load_dataset("fake:per_class=20"), 1, seed=0)
    files = script._write_pngs(split.test.images, tmp_path / "test")
    r = script._flowkit(split, 1, "paper-mnist", 1, "bf16", files)
    assert built[0]["encoder"] == "dcgan_ae:latent_dim=100" and built[0]["scorer"] == "nll"
    assert (built[0]["epochs_encoder"], built[0]["precision"]) == (1, "bf16")
    assert r["scores"].shape == (len(files),) and np.isfinite(r["scores"]).all()
    assert r["fit_s"] > 0 and r["images_per_s"] > 0 and set(r["stages"]) == {"encoder", "flow"}


def test_recommended_suite_runs_unchanged_on_3_channel_cifar_files(tmp_path, monkeypatch):
    """The generalization guard's second half: nothing in the recommended pipeline is
    specific to 1-channel digits (CIFAR-10 python batches, 3 channels, written offline)."""
    from .test_data import write_cifar10

    (tmp_path / "data").mkdir()
    write_cifar10(tmp_path / "data", monkeypatch)
    args = ["bench", "--suite", "recommended", "--dataset", "cifar10"]
    args += ["--data-root", str(tmp_path / "data"), "--no-download", "--classes", "9"]
    args += ["--epochs-encoder", "1", "--epochs-flow", "2", "--out", str(tmp_path / "run"), "-q"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    recs = lines(tmp_path / "run" / "results.jsonl")
    assert len(recs) == 3 and all(r["status"] == "ok" for r in recs), recs
    assert {r["config"]["preprocess"] for r in recs} == {"pca:32"}
    assert all(r["config"]["dataset"] == "cifar10" for r in recs)
    # the report's plots work for 3-channel data: image grids of RGB test images, one a scorer
    grids = sorted((tmp_path / "run").glob("cifar10-loo-extremes-*.png"))
    assert len(grids) == 3 and all(p.read_bytes()[:4] == b"\x89PNG" for p in grids)
    with np.load(next((tmp_path / "run" / "scores").glob("*.npz"))) as npz:
        assert npz["top_images"].shape[1] == 3  # kept in colour
    # and the published CIFAR-10 rows are beside it
    assert "GANomaly (published)" in (tmp_path / "run" / "report.md").read_text()


def test_detector_defaults_are_the_recommended_suites_primary_pipeline():
    from flowkit import Detector
    from flowkit.preprocess import Preprocess

    suite = load_suite("recommended")
    cell = next(c for c in suite.cells(targets=[0]) if c.scorer == suite.scorers[-1])
    params, defaults = cell.detector_params("cpu"), Detector(device="cpu").get_params()
    differ = {k for k in params if params[k] != defaults[k]}
    assert differ == {"preprocess"}, differ  # the suite spells out what "auto" is for it
    parts = (128, 128)  # simclr's trunk and head, side by side: pca:32 on each
    assert Preprocess(params["preprocess"], 256, part_sizes=parts).out_dim == 64
    assert Preprocess(defaults["preprocess"], 256, part_sizes=parts).out_dim == 64


def _rec(combination, seed, target, auc, **timings):
    return {
        "status": "ok",
        "combination": combination,
        "config": {"seed": seed, "target": target},
        "metrics": {"auc": auc},
        "timings": timings,
    }


def test_ranking_says_whether_the_lead_is_beyond_seed_noise():
    from flowkit.bench.report import _seed_noise_verdict

    one = [_rec("a", 0, 0, 0.95), _rec("b", 0, 0, 0.945)]
    assert "within seed noise" in _seed_noise_verdict(["a", "b"], {"a": 0.95, "b": 0.945}, one)
    assert "more than the" in _seed_noise_verdict(["a", "b"], {"a": 0.95, "b": 0.90}, one)
    # three seeds: a lead of 0.02 against a per-seed spread of ~0.05 is noise, against ~0.001 not
    noisy = [_rec("a", s, 0, v) for s, v in enumerate([0.90, 1.00, 0.95])]
    noisy += [_rec("b", s, 0, v) for s, v in enumerate([0.93, 0.93, 0.93])]
    assert "within seed noise" in _seed_noise_verdict(["a", "b"], {"a": 0.95, "b": 0.93}, noisy)
    steady = [_rec("a", s, 0, 0.95 + s * 0.001) for s in range(3)]
    steady += [_rec("b", s, 0, 0.93) for s in range(3)]
    verdict = _seed_noise_verdict(["a", "b"], {"a": 0.951, "b": 0.93}, steady)
    assert "over 3 seeds: beyond seed noise" in verdict


def test_report_times_each_combination_without_cached_stages():
    from flowkit.bench.report import _timing_table

    recs = [
        _rec("a", 0, 0, 0.9, encoder_fit_s=100.0, flow_fit_s=10.0, score_images_per_s=1000.0),
        _rec("a", 0, 1, 0.9, encoder_fit_s=50.0, encoder_cached=True, flow_fit_s=20.0),
    ]
    table = "\n".join(_timing_table(["a"], recs))
    assert "| a | 100 | 15.0 | 115 | 1,000 |" in table  # the cached encoder is not averaged in


def test_figures_say_which_data_they_show():
    from flowkit.bench.plots import data_label

    label = data_label("digits", [{"status": "ok", "sizes": {"train": 1_047, "test": 360}}])
    assert (
        label == "Data: embedded scikit-learn digits (8×8, upscaled), 1,047 train / 360 test images"
    )
    assert data_label("mnist", []) == "Data: mnist"
    # a folder run names the folder it read (the dataset spec alone says "folder")
    rec = {"status": "ok", "data_name": "cifar10-dev", "sizes": {"train": 3_240, "test": 1_400}}
    assert (
        data_label("folder", [rec]) == "Data: folder (cifar10-dev), 3,240 train / 1,400 test images"
    )
    assert data_label("digits", [{**rec, "data_name": "digits"}]).startswith("Data: embedded")
    assert data_label("fake:per_class=3", [{"data_name": "fake"}]) == "Data: fake:per_class=3"


def test_a_folder_run_names_its_folder_in_records_and_report(tmp_path):
    root = tmp_path / "photos-dev"
    write_colour_classes(root, per_class=20)
    suite = Suite(**{**TINY_SUITE, "dataset": "folder", "classes": [1]}).validate()
    store = run_suite(suite, tmp_path / "run", data_root=root, device="cpu")
    recs = lines(store.results_path)
    assert [r["data_name"] for r in recs] == ["photos-dev"] and recs[0]["status"] == "ok"
    write_report(store.root, plots=False)
    report = (store.root / "report.md").read_text()
    assert "## folder (photos-dev): leave-one-class-out" in report
    assert "Best mean AUC on folder (photos-dev)" in report
    res = CliRunner().invoke(app, ["report", str(store.root), "--no-plots"])
    assert res.exit_code == 0 and "folder (photos-dev)" in res.output, res.output


def test_long_combination_names_keep_figures_of_their_own():
    """The histograms of one long flow name's scorers once shared a cut file name (and
    overwrote one another): a long name keeps its head and tail and a hash of the whole."""
    from flowkit.bench.plots import _slug

    stem = "simclr:temperature=0.5 + realnvp:batch_norm=true [pca:32] / "
    names = [stem + s for s in ("nll", "knn:k=2,metric=cosine", "nll+knn:k=2,metric=cosine")]
    slugs = [_slug(n) for n in names]
    assert len(set(slugs)) == 3 and all(len(s) <= 60 for s in slugs)
    assert slugs[2].startswith("simclr-temperature") and "metric-cosine" in slugs[2]
    assert _slug("dcgan_ae + realnvp / nll") == "dcgan-ae---realnvp---nll"  # short: as before
