"""A sweep of bad inputs against the command line, as a new user would make them.

Every case must end with a non-zero exit, no traceback, and a message naming what to change
(``error: ...`` on one line for flowkit's own checks; typer's usage box for a value that is
not even of the option's type).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flowkit import Detector

from .conftest import TINY

runner = CliRunner()
FAST = [
    "--encoder",
    TINY["encoder"],
    "--flow",
    TINY["flow"],
    "--epochs-encoder",
    "1",
    "--epochs-flow",
    "1",
    "--device",
    "cpu",
    "-q",
]


@pytest.fixture(scope="module")
def place(tmp_path_factory, fake_data):
    """A folder with a model, images, broken files and odd trees to point commands at."""
    root = tmp_path_factory.mktemp("bad")
    det = Detector(**TINY).fit(fake_data.subset(list(range(0, len(fake_data), 2))))
    det.save(root / "model.flowkit")
    raw = (root / "model.flowkit").read_bytes()
    (root / "truncated.flowkit").write_bytes(raw[: len(raw) // 2])
    (root / "notamodel.flowkit").write_text("hello")
    (root / "afile.txt").write_text("x")
    (root / "images").mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32), 40 * i, np.uint8)).save(root / "images" / f"{i}.png")
    (root / "corrupt").mkdir()
    (root / "corrupt" / "bad.png").write_bytes(b"\x89PNG not really")
    (root / "empty").mkdir()
    amb = root / "ambiguous"
    (amb / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(amb / "loose.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(amb / "a" / "x.png")
    (root / "badtypes.toml").write_text('classes = "0,1"\n')
    (root / "adir").mkdir()
    (root / "escape.toml").write_text('name = "../../escaped"\n')
    (root / "m[").mkdir()  # "[/]" in a path spans a folder: m[/]x.flowkit
    (root / "m[" / "]x.flowkit").write_bytes(raw)  # a model whose path is markup
    (root / "renamed.onnx").write_bytes(raw)  # a model file with the wrong suffix
    os.mkfifo(root / "pipe.png")
    os.symlink(root / "pipe.png", root / "link_to_pipe")
    const = root / "constant"  # 30 copies of one white image
    const.mkdir()
    for i in range(30):
        Image.fromarray(np.full((32, 32), 255, np.uint8)).save(const / f"{i}.png")
    Image.fromarray(np.full((8, 8), -5, np.int32), "I").save(root / "negative.tif")
    only = root / "only_crack"  # MVTec with test/crack alone: no normal test image
    for sub, n in (("train/good", 3), ("test/crack", 3)):
        (only / sub).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((32, 32), 60 * i, np.uint8)).save(only / sub / f"{i}.png")
    tree = root / "classes"
    for name in ("c_cat", "c_dog"):
        (tree / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((32, 32), 30 * i, np.uint8)).save(tree / name / f"{i}.png")
    return root


OUT = ["--out", "{root}/out.flowkit"]

# (arguments, text expected in the output); {root} is the fixture's folder.
CASES: list[tuple[list[str], str]] = [
    # -- train: sizes and counts
    (["train", *FAST, *OUT, "--batch-size", "1"], "batch_size must be >= 2"),
    (["train", *FAST, *OUT, "--batch-size", "0"], "batch_size must be >= 2"),
    (["train", *FAST, *OUT, "--batch-size", "-5"], "batch_size must be >= 2"),
    (["train", *FAST, *OUT, "--batch-size", "abc"], "Invalid value for '--batch-size'"),
    (["train", *FAST, *OUT, "--flow-batch-size", "1"], "flow_batch_size must be >= 2"),
    (["train", *FAST, *OUT, "--image-size", "0"], "Invalid value for '--image-size'"),
    (["train", *FAST, *OUT, "--image-size", "30"], "power-of-two image_size"),
    (["train", *FAST, *OUT, "--threads", "-1"], "Invalid value for '--threads'"),
    (["train", *FAST, *OUT, "--threads", "0"], "Invalid value for '--threads'"),
    (["train", *FAST, *OUT, "--seed", "-1"], "seed must be in [0"),
    (["train", *FAST, *OUT, "--seed", "x"], "Invalid value for '--seed'"),
    (["train", *FAST, *OUT, "--epochs-encoder", "0"], "epochs_encoder must be >= 1"),
    (["train", *FAST, *OUT, "--epochs-flow", "-1"], "epochs_flow must be >= 1"),
    (["train", *FAST, *OUT, "--confidence", "1.5"], "confidence must be in (0, 1)"),
    (["train", *FAST, *OUT, "--contamination", "0.9"], "contamination must be in (0, 0.5)"),
    # -- train: components and options
    (["train", *FAST, *OUT, "--flow", "realnvp:layers=abc"], "option layers must be an integer"),
    (["train", *FAST, *OUT, "--flow", "realnvp:layers=-2"], "layers must be >= 1, got -2"),
    (["train", *FAST, *OUT, "--flow", "realnvp:dropout=1.5"], "dropout must be in [0, 1)"),
    (["train", *FAST, *OUT, "--flow", "realnvp:bogus=1"], "has no option 'bogus'"),
    (["train", *FAST, *OUT, "--flow", "realnvpp"], "did you mean 'realnvp'"),
    (["train", *FAST, *OUT, "--flow", "realnvp:=3"], "expected key=value"),
    (["train", *FAST, *OUT, "--encoder", "dcgan_ae:latent_dim=abc"], "latent_dim must be an"),
    (["train", *FAST, *OUT, "--encoder", "dcgan_ae:latent_dim=0"], "latent_dim must be >= 1"),
    (["train", *FAST, *OUT, "--encoder", "dcgan"], "did you mean 'dcgan_ae'"),
    (["train", *FAST, *OUT, "--encoder", ""], "empty component name"),
    (["train", *FAST, *OUT, "--scorer", "nlll"], "did you mean 'nll'"),
    (["train", *FAST, *OUT, "--scorer", "knn:k=0"], "k >= 1"),
    (["train", *FAST, *OUT, "--preprocess", "pca:abc"], "pca needs a dimension"),
    (["train", *FAST, *OUT, "--preprocess", "pca:500"], "pca:500 needs 1 <= K <= 8"),
    (["train", *FAST, *OUT, "--preprocess", "whiten"], "unknown latent preprocessing"),
    (["train", *FAST, *OUT, "--device", "tpu"], "unknown device 'tpu'"),
    (["train", *FAST, *OUT, "--device", "cuda:7"], "CUDA is not available"),
    # -- train: output path
    (["train", *FAST, "--out", "{root}/adir"], "is a directory"),
    (["train", *FAST, "--out", "{root}/afile.txt/m.flowkit"], "is a file, not a directory"),
    # -- train: data
    (["train", *FAST, *OUT, "--dataset", "mnits"], "did you mean 'mnist'"),
    (["train", *FAST, *OUT, "--dataset", "digits:bogus=1"], "has no option 'bogus'"),
    (
        [
            "train",
            *FAST,
            *OUT,
            "--dataset",
            "mnist",
            "--data-root",
            "{root}/empty",
            "--no-download",
        ],
        "MNIST/raw/",
    ),
    (["train", *FAST, *OUT, "--dataset", "folder"], "needs a root: --data-root"),
    (["train", *FAST, *OUT, "--dataset", "folder", "--data-root", "{root}/nope"], "no such folder"),
    (
        ["train", *FAST, *OUT, "--dataset", "folder", "--data-root", "{root}/ambiguous"],
        "ambiguous folder layout",
    ),
    (
        ["train", *FAST, *OUT, "--dataset", "folder", "--data-root", "{root}/corrupt"],
        "could not be read",
    ),
    (
        ["train", *FAST, *OUT, "--dataset", "mvtec:category=bottle", "--data-root", "{root}"],
        "MVTec AD category 'bottle' is not in",
    ),
    (["train", *FAST, *OUT, "--anomaly-class", "42"], "anomaly class must be in 0..9"),
    (["train", *FAST, *OUT, "--anomaly-class", "-1"], "anomaly class must be in 0..9"),
    # -- score
    (["score", "{root}/missing.flowkit", "{root}/images"], "no such model file"),
    (["score", "{root}/notamodel.flowkit", "{root}/images"], "not a flowkit model file"),
    (["score", "{root}/truncated.flowkit", "{root}/images"], "truncated"),
    (["score", "{root}/model.flowkit", "{root}/empty"], "no image files"),
    (["score", "{root}/model.flowkit", "{root}/nothere"], "no such file or folder"),
    (["score", "{root}/model.flowkit", "{root}/corrupt"], "could not be read"),
    (["score", "{root}/model.flowkit", "{root}/images", "--device", "gpu"], "unknown device"),
    # -- bench
    (["bench", "--suite", "quik"], "did you mean quick"),
    (["bench", "--suite", "{root}/nope.toml"], "suite file not found"),
    (["bench", "--suite", "{root}/badtypes.toml"], "field classes must be a list of integers"),
    (["bench", "--classes", "a,b", "--out", "{root}/b1"], "--classes must be comma-separated"),
    (["bench", "--classes", "99", "--out", "{root}/b2"], "classes [99] do not exist"),
    (["bench", "--seeds", "x", "--out", "{root}/b3"], "--seeds must be comma-separated"),
    (["bench", "--flow", "realnvp:layers=abc", "--out", "{root}/b4"], "layers must be an integer"),
    (["bench", "--encoder", "dcgan_ae:width=0", "--out", "{root}/b5"], "width must be >= 1"),
    (["bench", "--epochs-encoder", "0", "--out", "{root}/b6"], "epochs_encoder must be >= 1"),
    (["bench", "--threads", "0"], "Invalid value for '--threads'"),
    (["bench", "--out", "{root}/afile.txt"], "is a file, not a run directory"),
    (["bench", "--dataset", "nosuch", "--out", "{root}/b7"], "unknown dataset 'nosuch'"),
    (["bench", "--suite", "{root}/escape.toml", "--out", "{root}/b8"], "one path component"),
    (
        ["bench", "--executor", "process", "--devices", "bogus", "--out", "{root}/b9"],
        "--devices: unknown device 'bogus'",
    ),
    (
        ["bench", "--executor", "local", "--workers", "2", "--out", "{root}/b1"],
        "--workers and --devices need",
    ),
    (["bench", "--ray-address", "auto", "--out", "{root}/b2"], "--ray-address needs --executor"),
    (["bench", "--executor", "warp", "--out", "{root}/b0"], "unknown executor 'warp'"),
    (["bench", "--flow-batch-size", "big", "--out", "{root}/b3"], "must be 'auto' or an integer"),
    (["bench", "--confidence", "2", "--out", "{root}/b4"], "confidence must be in (0, 1)"),
    (["bench", "--precision", "fp8", "--out", "{root}/b5"], "precision must be one of"),
    (["bench", "--lr-encoder", "-1", "--out", "{root}/b6"], "lr_encoder must be in (0, inf)"),
    (["bench", "--val-fraction", "0.9", "--out", "{root}/b7"], "val_fraction must be in (0, 0.5)"),
    # -- issue 26: markup, metadata, files that are not images, output paths
    (["score", "{root}/m[/]x.flowkit", "{root}/nothere"], "no such file or folder"),
    (["score", "{root}/n[bold]o.flowkit", "{root}/images"], "n[bold]o.flowkit"),
    (["score", "{root}/renamed.onnx", "{root}/images"], "score it with --backend torch"),
    (["score", "{root}/model.flowkit", "{root}/pipe.png"], "is not a regular file"),
    (
        ["score", "{root}/model.flowkit", "{root}/images", "--metrics", "{root}/afile.txt/m.json"],
        "is a file, not a directory",
    ),
    (
        ["score", "{root}/model.flowkit", "{root}/images", "--metrics", "{root}/m.json"],
        "--metrics needs one folder in a labelled layout",
    ),
    (
        ["score", "{root}/model.flowkit", "{root}/only_crack", "--metrics", "{root}/m.json"],
        "no metrics to write (only anomalies)",
    ),
    (["export", "{root}/model.flowkit", "-o", "{root}/adir"], "adir/model.onnx"),
    (["export", "{root}/m[/]x.onnx", "-o", "{root}/x.onnx"], "m[/]x.onnx"),
    (
        [
            "train",
            *FAST,
            *OUT,
            "--dataset",
            "folder",
            "--data-root",
            "{root}/classes",
            "--anomaly-class",
            "c_dgo",
        ],
        "no class 'c_dgo'; did you mean 'c_dog'",
    ),
    (
        [
            "train",
            *FAST,
            *OUT,
            "--dataset",
            "folder",
            "--data-root",
            "{root}/classes",
            "--anomaly-class",
            "7",
        ],
        "anomaly class must be in 0..1",
    ),
    (["train", *FAST, *OUT, "--lr-flow", "0"], "lr_flow must be in (0, inf)"),
    (["train", *FAST, *OUT, "--patience", "0"], "patience must be >= 1"),
    (["train", *FAST, *OUT, "--val-fraction", "0"], "val_fraction must be in (0, 0.5)"),
    (["train", *FAST, *OUT, "--contamination", "0.7"], "contamination must be in (0, 0.5)"),
    (["train", *FAST, *OUT, "--flow-batch-size", "1"], "flow_batch_size must be >= 2"),
    # -- issue 37: paths that are not plain files, degenerate data, contradicting options
    (["train", *FAST, "--out", "{root}/pipe.png"], "pipe.png is a FIFO, not a regular file"),
    (["train", *FAST, "--out", "{root}/link_to_pipe"], "(the symbolic link points to"),
    (["export", "{root}/model.flowkit", "-o", "{root}/pipe.png"], "is a FIFO, not a regular"),
    (["train", *FAST, "--out", "{root}/" + "x" * 300 + ".flowkit"], "file name is too long"),
    (["train", *FAST, *OUT, "--encoder", "simclr:latent_dim=100000000"], "parameters alone"),
    (
        ["train", *FAST, *OUT, "--contamination", "0.1", "--confidence", "0.9"],
        "give one of --contamination and --confidence",
    ),
    (
        ["train", *FAST, *OUT, "--dataset", "folder", "--data-root", "{root}/constant"],
        "the 30 training images are all the same image",
    ),
    (
        ["score", "{root}/model.flowkit", "{root}/corrupt", "--skip-unreadable", "--csv"],
        "none of the 1 image file(s) could be read",
    ),
    (["score", "{root}/model.flowkit", "{root}/negative.tif"], "(I) image with pixels in [-5, -5]"),
    (["list", "encoders", "zzz*"], "no encoders match 'zzz*'"),
    # -- report and list
    (["report", "{root}/nothere"], "not a bench run directory"),
    (["report", "{root}/afile.txt"], "not a bench run directory"),
    (["list", "widgets"], "'widgets' is not one of 'encoders', 'flows'"),
]


def test_the_sweep_is_large_enough():
    assert len(CASES) + len(API_CASES) >= 100 and len(CASES) >= 85


def _api_cases() -> list[tuple[Any, str]]:
    """(call, text expected in the one-line error) for the Python API's bad inputs."""
    import torch

    from flowkit import load_dataset
    from flowkit.data import leave_one_class_out
    from flowkit.executors import make_executor

    def det(**kw: Any) -> Any:
        return lambda: Detector(**kw).check_config()

    digits = load_dataset("digits")
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    return [
        (det(confidence=1.5), "confidence must be in (0, 1)"),
        (det(epochs_flow=0), "epochs_flow must be >= 1"),
        (det(batch_size=True), "batch_size must be an integer"),
        (det(seed=-3), "seed must be in [0, "),
        (det(precision="half"), "precision must be one of"),
        (det(device="gpu9"), "unknown device 'gpu9'"),
        (det(encoder="nosuch"), "unknown encoder 'nosuch'"),
        (det(flow="realnvp:layer=3"), "has no option 'layer'"),
        (det(scorer="knn:k=two"), "option k must be an integer"),
        (det(preprocess="pca:x"), "pca needs a dimension"),
        (det(value_range=(1, 1)), "low < high"),
        (lambda: Detector(epochs_flwo=3), "did you mean 'epochs_flow'"),
        (lambda: Detector().set_params(bogus=1), "has no parameter 'bogus'"),
        (lambda: Detector().predict(img), "not fitted yet"),
        (lambda: leave_one_class_out(digits, 12), "anomaly class must be in 0..9"),
        (lambda: leave_one_class_out(digits, "eleven"), "has no class 'eleven'"),
        (lambda: make_executor("process", workers=0), "workers must be a positive integer"),
        (lambda: make_executor("auto", threads=-1), "threads must be a positive integer"),
        (lambda: make_executor("process", devices=["nope"]), "devices: unknown device"),
        (lambda: Detector.load("/nonexistent/m.flowkit"), "no such model file"),
        # issue 37: stages that are not of one fit, parameters that contradict them
        (lambda: _mixed("encoder"), "the density was fitted on another encoder's latents"),
        (lambda: _mixed("calibration"), "the calibration was fitted on another density's"),
        (lambda: _mixed("sizes"), "they are not of one fit"),
        (lambda: _mixed("order"), "in that order: the first is a DensityStage"),
        (lambda: _mixed("unfitted"), "the EncoderStage is not fitted yet"),
        (lambda: _mixed("scorer"), "scorer='knn' contradicts the fitted calibration stage"),
        (lambda: _mixed("confidence"), "confidence=0.5 contradicts the fitted calibration"),
        (lambda: _fits()[0].set_params(epochs_encoder=-5), "epochs_encoder must be >= 1"),
        (lambda: _fits()[0].with_scorer(torch.zeros(4, 3, 32, 32), "nll"), "expects 1-channel"),
        (det(contamination=0.1, confidence=0.9), "give one of contamination (0.1) and confid"),
        (lambda: Detector(**TINY).fit(torch.zeros(50, 1, 32, 32)), "all the same image"),
    ]


@functools.lru_cache(maxsize=1)
def _fits() -> tuple[Detector, Detector, Detector]:
    """Three tiny fits: seeds 0 and 1 of one configuration, and one of another latent size."""
    from flowkit import load_dataset

    data = load_dataset("fake", per_class=20).images
    small = {**TINY, "encoder": "dcgan_ae:width=8,latent_dim=4"}
    return (
        Detector(**TINY).fit(data),
        Detector(**{**TINY, "seed": 1}).fit(data),
        Detector(**small).fit(data),
    )


def _mixed(how: str) -> Detector:
    from flowkit.stages import EncoderStage

    a, b, c = _fits()
    stages = {
        "encoder": (a.encoder_stage_, b.density_stage_, b.calibration_stage_),
        "calibration": (a.encoder_stage_, a.density_stage_, b.calibration_stage_),
        "sizes": (c.encoder_stage_, a.density_stage_, a.calibration_stage_),
        "order": (a.density_stage_, a.encoder_stage_, a.calibration_stage_),
        "unfitted": (EncoderStage(a.config), a.density_stage_, a.calibration_stage_),
    }
    params = {"scorer": {"scorer": "knn"}, "confidence": {"confidence": 0.5}}
    if how in params:
        return Detector.from_stages(
            *stages["calibration"][:1], a.density_stage_, a.calibration_stage_, **params[how]
        )
    return Detector.from_stages(*stages[how])


API_CASES = list(range(31))  # the calls are built lazily (they need the registries)


@pytest.mark.parametrize("index", API_CASES)
def test_bad_api_input_raises_one_clear_line(index):
    from flowkit.errors import FlowkitError

    call, expected = _api_cases()[index]
    with pytest.raises(FlowkitError) as info:
        call()
    assert expected in str(info.value) and "\n" not in str(info.value)


def _case_id(value: object) -> str:
    return (
        " ".join(a for a in value if not a.startswith("-") or a == "--")[:50]
        if isinstance(value, list)
        else ""
    )


@pytest.mark.parametrize("args, expected", CASES, ids=_case_id)
def test_bad_input_ends_in_one_clear_line(place, args, expected):
    from flowkit.cli import app

    argv = [a.format(root=place) for a in args]
    res = runner.invoke(app, argv)
    output = res.output
    assert res.exit_code != 0, output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in output
    flat = " ".join(output.replace("│", " ").split())  # typer's box wraps long lines
    assert expected in flat, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) <= 1
    assert not Path("model.flowkit").exists()
    for arg in argv:  # a refused command leaves no output behind
        if arg.endswith("out.flowkit") or re.fullmatch(r"b\d", Path(arg).name):
            assert not Path(arg).exists(), arg
