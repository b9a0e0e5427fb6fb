"""ONNX export and the onnxruntime-only scoring path (flowkit export, score --backend onnx)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flowkit import Detector, NotExportableError
from flowkit.cli import app
from flowkit.errors import DataError, ModelFileError
from flowkit.export import export_onnx
from flowkit.runtime import OnnxDetector

from .conftest import TINY

RTOL = 1e-4
runner = CliRunner()

SMALL = dict(TINY, epochs_encoder=1, epochs_flow=2)
TRUNK = "width=8,latent_dim=8"

# One export per built-in component that has an ONNX form: each encoder, each flow, each
# scorer, on the tiny settings of conftest.
EXPORTABLE = {
    "encoder dcgan_ae": dict(),
    "encoder simclr": dict(encoder=f"simclr:{TRUNK},projection_dim=8"),
    "encoder rotnet": dict(encoder=f"rotnet:{TRUNK}"),
    "encoder csi + rotation": dict(
        encoder=f"csi:{TRUNK},projection_dim=8", scorer="rotation+nll", flow_augment=1
    ),
    "encoder simclr trunk+head (a flow per part)": dict(
        encoder=f"simclr:{TRUNK},projection_dim=8,features=trunk+head",
        flow="realnvp:hidden=16,layers=2,blocks=1,batch_norm=true",
        scorer="nll+knn:metric=cosine,part=0",
    ),
    "flow maf": dict(flow="maf:hidden=16,layers=2"),
    "flow gaussian": dict(flow="gaussian"),
    "flow realnvp+batch_norm": dict(flow="realnvp:hidden=16,layers=2,blocks=1,batch_norm=true"),
    "preprocess pca": dict(preprocess="l2+pca:4"),
    "scorer bpd": dict(scorer="bpd"),
    "scorer typicality": dict(scorer="typicality"),
    "scorer knn": dict(scorer="knn"),
    "scorer knn cosine": dict(scorer="knn:metric=cosine,k=3"),
    "scorer recon": dict(scorer="recon"),
    "scorer rotation": dict(encoder=f"rotnet:{TRUNK}", scorer="rotation"),
    "scorer nll+knn": dict(scorer="nll+knn"),
}


def _close(got: np.ndarray, want: np.ndarray) -> float:
    """The largest difference relative to the scores' scale (their largest magnitude, at
    least 1). A log-likelihood summed over dimensions carries float32 rounding of the size
    of its largest terms, so a score near zero among scores near 50 differs by ~1e-4 between
    onnxruntime's kernels and torch's on some CPUs (AVX2-only: 1.6e-4 absolute, 3e-6 of the
    scale); a wrong export differs by whole units."""
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1.0))


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory, tiny_detector):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(tiny_detector, path)
    return path


@pytest.mark.parametrize("case", sorted(EXPORTABLE))
def test_every_exportable_component_matches_pytorch(case, fake_split, tmp_path):
    det = Detector(**{**SMALL, **EXPORTABLE[case]}).fit(fake_split.train)
    path = export_onnx(det, tmp_path / "m.onnx")
    onnx_det = OnnxDetector(path)
    images = fake_split.test.images[:23]
    want, got = det.score(images), onnx_det.score(images.numpy())
    assert _close(got["anomaly_score"], want["anomaly_score"]) <= RTOL
    assert _close(got["log_prob"], want["log_prob"]) <= RTOL
    assert onnx_det.threshold_ == pytest.approx(det.threshold_, rel=1e-12)
    assert np.array_equal(onnx_det.predict(images.numpy()), det.predict(images))


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(flow="nsf:hidden=8,layers=2,blocks=1"), "nsf flow has no ONNX form"),
        (  # one flow per part: the product is exportable only if its parts are
            dict(
                encoder=f"simclr:{TRUNK},projection_dim=8,features=trunk+head",
                flow="nsf:hidden=8,layers=2,blocks=1",
            ),
            "nsf flow has no ONNX form",
        ),
        (dict(scorer="complexity"), "complexity scorer compresses each image as PNG"),
    ],
)
def test_components_without_an_onnx_form_say_so_and_write_nothing(
    params, message, fake_split, tmp_path
):
    det = Detector(**{**SMALL, **params}).fit(fake_split.train)
    with pytest.raises(NotExportableError, match=message):
        export_onnx(det, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_a_plugin_scorer_without_export_score_is_named(fake_split, tmp_path, fresh_plugins):
    import flowkit

    class Plain:
        name = "plain"

        def score(self, ctx):
            return -ctx.log_prob

    flowkit.registry.scorers.register("plain")(lambda: Plain())
    det = Detector(**{**SMALL, "scorer": "plain"}).fit(fake_split.train)
    with pytest.raises(NotExportableError, match="plain scorer has no ONNX form"):
        export_onnx(det, tmp_path / "m.onnx")


def test_metadata_carries_what_the_runtime_needs(onnx_model, tiny_detector):
    det = OnnxDetector(onnx_model)
    meta = det.metadata
    assert det.input_shape_ == tiny_detector.input_shape_
    assert float(meta["threshold"]) == tiny_detector.threshold_
    assert meta["scorer"] == "nll" and meta["flow"].startswith("realnvp")
    assert meta["flowkit_version"] == __import__("flowkit").__version__
    x = np.zeros((3, *det.input_shape_), dtype=np.uint8)
    assert np.allclose(det.decision_function(x), det.score_samples(x) - det.offset_)
    assert np.allclose(det.score_samples(x), -det.anomaly_score(x))


def test_onnx_detector_refuses_bad_inputs_and_foreign_files(onnx_model, tmp_path):
    det = OnnxDetector(onnx_model)
    c, h, w = det.input_shape_
    with pytest.raises(DataError, match=f"expects {c}-channel {h}×{w}"):
        det.score(np.zeros((2, 3, h + 1, w), dtype=np.uint8))
    with pytest.raises(DataError, match="NaN"):
        det.score(np.full((1, c, h, w), np.nan, dtype=np.float32))
    with pytest.raises(DataError, match=r"channels-last images .*transpose\(0, 3, 1, 2\)"):
        det.score(np.zeros((2, h, w, c), dtype=np.uint8))
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(onnx_model.read_bytes()[:500])
    with pytest.raises(ModelFileError, match="not a readable ONNX model"):
        OnnxDetector(bad)
    import onnx

    foreign = onnx.load(onnx_model)
    del foreign.metadata_props[:]
    onnx.save(foreign, tmp_path / "foreign.onnx")
    with pytest.raises(ModelFileError, match="not one written by `flowkit export`"):
        OnnxDetector(tmp_path / "foreign.onnx")
    with pytest.raises(ModelFileError, match="no such model file"):
        OnnxDetector(tmp_path / "missing.onnx")


def _labelled_folder(root: Path, split) -> Path:
    """normal/ + anomalous/ PNGs from the fake split's test part."""
    for i, (img, anomalous) in enumerate(zip(split.test.images, split.is_anomaly, strict=True)):
        sub = root / ("anomalous" if anomalous else "normal")
        sub.mkdir(parents=True, exist_ok=True)
        arr = img.permute(1, 2, 0).numpy()
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(sub / f"{i:03d}.png")
    return root


# Runs the CLI with torch made unimportable, and fails if anything imported it anyway.
NO_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _Block())
from flowkit.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    assert "torch" not in sys.modules, "the onnx path imported torch"
"""


def _score_json(cmd: list[str], env: dict[str, str] | None = None) -> tuple[dict, str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    return {r["path"]: r for r in rows}, proc.stderr


@pytest.mark.parametrize(
    "params",
    [dict(), dict(encoder=f"simclr:{TRUNK},projection_dim=8", scorer="nll+knn")],
    ids=["dcgan_ae+realnvp+nll", "simclr+realnvp+nll+knn"],
)
def test_onnx_backend_scores_a_folder_without_torch(params, fake_split, tmp_path):
    """The Bar of the export issue: the exported model scores a labelled folder with
    onnxruntime alone, as `flowkit score` does with PyTorch (1e-4 relative)."""
    det = Detector(**{**SMALL, **params}).fit(fake_split.train)
    det.save(tmp_path / "m.flowkit")
    res = runner.invoke(
        app, ["export", str(tmp_path / "m.flowkit"), "-o", str(tmp_path / "m.onnx")]
    )
    assert res.exit_code == 0, res.output
    assert "checked against PyTorch" in res.output
    folder = _labelled_folder(tmp_path / "data", fake_split)
    cli = [sys.executable, "-m", "flowkit"]
    want, _ = _score_json([*cli, "score", str(tmp_path / "m.flowkit"), str(folder), "--json"])
    runtime = os.environ.get("FLOWKIT_RUNTIME_PYTHON")  # a venv without torch (make test)
    if runtime:
        check = subprocess.run(
            [runtime, "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
            capture_output=True,
            text=True,
        )
        assert check.stdout.strip() == "True", "FLOWKIT_RUNTIME_PYTHON has torch installed"
        cmd = [runtime, "-m", "flowkit"]
    else:
        cmd = [sys.executable, "-c", NO_TORCH]
    got, stderr = _score_json([*cmd, "score", str(tmp_path / "m.onnx"), str(folder), "--json"])
    assert set(got) == set(want) and len(got) == len(fake_split.test)
    paths = sorted(want)
    scores = {
        k: np.array([d[p]["anomaly_score"] for p in paths])
        for k, d in (("got", got), ("want", want))
    }
    # on the scale of all the scores, as in the test above: one score near 0 among
    # scores near 50 carries the rounding of the larger ones (2e-4 on an AMX CPU: 4e-6)
    assert _close(scores["got"], scores["want"]) <= RTOL
    scale = max(float(np.max(np.abs(scores["want"]))), 1.0)
    for path in paths:
        row = want[path]
        assert got[path]["threshold"] == pytest.approx(row["threshold"], rel=1e-12)
        if abs(row["anomaly_score"] - row["threshold"]) > 10 * RTOL * scale:  # not a tie
            assert got[path]["label"] == row["label"]
    assert "labelled folder: ROC AUC" in stderr


def test_export_cli_refuses_in_one_line(fake_split, tmp_path):
    det = Detector(**{**SMALL, "scorer": "complexity"}).fit(fake_split.train)
    det.save(tmp_path / "m.flowkit")
    res = runner.invoke(
        app, ["export", str(tmp_path / "m.flowkit"), "-o", str(tmp_path / "x.onnx")]
    )
    assert res.exit_code == 1, res.output
    assert "complexity scorer" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.onnx").exists()
    res = runner.invoke(app, ["export", str(tmp_path / "m.flowkit"), "-o", str(tmp_path)])
    assert res.exit_code == 2 and "--output" in res.output and "is a directory" in res.output
    flat = res.output.replace("\n", "")
    assert f"{tmp_path}/model.onnx" in flat and "model.flowkit" not in flat.replace("m.flowkit", "")


def test_python_module_entry_point_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "flowkit", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.startswith("flowkit ")


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("threshold", "nan", "threshold must be finite"),
        ("threshold", "inf", "threshold must be finite"),
        ("threshold", "high", "is not a number"),
        ("input_shape", "1,16,16", r"does not match the graph's input"),
        ("input_shape", "0,32,32", "three positive integers"),
        ("input_shape", "1,32", "three positive integers"),
        ("value_range", "1,0", "lo < hi"),
    ],
)
def test_onnx_metadata_is_checked_by_type_and_range(onnx_model, tmp_path, key, value, match):
    import onnx

    model = onnx.load(onnx_model)
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = value
    onnx.save(model, tmp_path / "edited.onnx")
    with pytest.raises(ModelFileError, match=match) as info:
        OnnxDetector(tmp_path / "edited.onnx")
    assert "\n" not in str(info.value)


def test_a_model_file_renamed_to_onnx_says_what_it_is(tiny_detector, tmp_path):
    renamed = tiny_detector.save(tmp_path / "m.flowkit").rename(tmp_path / "m.onnx")
    with pytest.raises(ModelFileError, match="is a flowkit model file .* --backend torch"):
        OnnxDetector(renamed)
    res = CliRunner().invoke(app, ["score", str(renamed), str(tmp_path)])
    assert res.exit_code == 2 and "--backend torch" in res.output
