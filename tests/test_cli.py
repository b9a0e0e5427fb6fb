from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flowkit.cli import app

from .conftest import write_colour_classes

runner = CliRunner()
TINY_ARGS = [
    "--encoder",
    "dcgan_ae:width=8,latent_dim=8",
    "--flow",
    "realnvp:hidden=16,layers=2,blocks=1",
    "--epochs-encoder",
    "1",
    "--epochs-flow",
    "3",
    "--device",
    "cpu",
    "--paper",  # the paper's scorer, preprocessing and precision; the sizes above
    "-q",
]


def run(*args: str):
    return runner.invoke(app, list(args))


def assert_clean_error(result, code: int, text: str):
    assert result.exit_code == code, result.output
    assert text in result.output
    assert "Traceback" not in result.output


def test_list_and_plugins():
    res = run("list", "flows")
    assert res.exit_code == 0 and "realnvp" in res.output and "builtin" in res.output
    res = run("list", "datasets", "d*")
    assert "digits" in res.output and "mnist" not in res.output
    res = run("plugins")
    assert res.exit_code == 0 and "builtin" in res.output and "dcgan_ae" in res.output


def test_train_then_score_end_to_end(tmp_path):
    model = tmp_path / "m.flowkit"
    res = run(
        "train", "--dataset", "digits", "--anomaly-class", "9", "--out", str(model), *TINY_ARGS
    )
    assert res.exit_code == 0, res.output
    assert "test ROC AUC" in res.output and model.exists()
    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((8, 8)) * 255).astype(np.uint8)).save(
            tmp_path / f"img{i}.png"
        )
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "rgb.jpg")
    res = run("score", str(model), str(tmp_path), "--csv")
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines[0] == "path,anomaly_score,log_likelihood,threshold,label"
    rows = [
        line.split(",") for line in lines[1:] if not line.startswith(("warning", "0 of", "1 of"))
    ]
    assert len([r for r in rows if len(r) == 5]) == 4
    assert all(r[4] in ("normal", "anomaly") for r in rows if len(r) == 5)
    res = run("score", str(model), str(tmp_path / "img0.png"))
    assert res.exit_code == 0 and "1 image(s) flagged" in res.output


def test_progress_bars_leave_no_blank_lines_in_a_log(tmp_path):
    # stderr is no terminal here (a log file, a pipe): transient bars once left empty lines
    args = [a for a in TINY_ARGS if a != "-q"]
    res = run(
        "train", "--dataset", "digits", "--anomaly-class", "9", "--out", str(tmp_path / "m"), *args
    )
    assert res.exit_code == 0, res.output
    assert "" not in res.output.strip().splitlines(), res.output


def test_train_holds_out_a_class_of_a_folder_of_colour_photographs(tmp_path):
    # one folder per class of RGB files, as the CIFAR-10 dev sample is laid out: the test
    # metrics after training score an ImageSet of 3-channel images (this failed once)
    write_colour_classes(tmp_path / "data", per_class=12)
    model = tmp_path / "m.flowkit"
    res = run(
        "train", "--dataset", "folder", "--data-root", str(tmp_path / "data"),
        "--anomaly-class", "planes", "--out", str(model), *TINY_ARGS,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "class 'planes' held out" in res.output and "test ROC AUC" in res.output
    assert "ambiguous" not in res.output and model.exists()


def test_train_defaults_are_the_recommended_pipeline_and_paper_the_papers(tmp_path):
    from flowkit import Detector

    sizes = ["--flow", "realnvp:hidden=16,layers=2,blocks=1", "--epochs-encoder", "1"]
    sizes += ["--epochs-flow", "3", "--device", "cpu", "-q", "--dataset", "digits"]

    def train(name: str, *args: str) -> Detector:
        res = run("train", *sizes, *args, "--out", str(tmp_path / name))
        assert res.exit_code == 0, res.output
        return Detector.load(tmp_path / name, device="cpu")

    rec = train("r.flowkit", "--encoder", "simclr:width=8,latent_dim=8")
    assert (rec.scorer, rec.preprocess, rec.flow_augment) == (
        "nll+knn:k=2,metric=cosine,part=0",
        "auto",
        2,
    )
    # --paper: the paper's values wherever an option was left at its default
    paper = train("p.flowkit", "--paper", "--scorer", "bpd")
    assert paper.encoder == "dcgan_ae:latent_dim=100" and paper.preprocess == "standardize"
    assert paper.scorer == "bpd" and paper.epochs_encoder == 1  # what was typed stays
    assert (paper.flow_augment, paper.lr_encoder, paper.precision) == (0, 2e-4, "fp32")
    # an option typed with exactly its default value counts as given, not as left alone
    typed = train("q.flowkit", "--paper", "--flow-augment", "2", "--preprocess", "auto")
    assert (typed.flow_augment, typed.preprocess) == (2, "auto")
    assert typed.encoder == "dcgan_ae:latent_dim=100" and typed.scorer == "nll"


def test_corrupt_png_in_folder_is_named(tmp_path, tiny_detector):
    model = tiny_detector.save(tmp_path / "m.flowkit")
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "imgs" / "ok.png")
    (tmp_path / "imgs" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    assert_clean_error(run("score", str(model), str(tmp_path / "imgs")), 2, "bad.png")
    res = run("score", str(model), str(tmp_path / "imgs"), "--skip-unreadable")
    assert res.exit_code == 0 and "ok.png" in res.output


@pytest.mark.parametrize(
    "args,code,text",
    [
        (["train", "--encoder", "dcgan_aee"], 2, "did you mean 'dcgan_ae'"),
        (["train", "--flow", "realnvp:layer=3"], 2, "accepted: layers, hidden"),
        (
            ["train", "--dataset", "mnist", "--data-root", "/nonexistent/x", "--no-download"],
            2,
            "MNIST/raw",
        ),
        (
            ["train", "--dataset", "digits", "--anomaly-class", "12"],
            2,
            "anomaly class must be in 0..9",
        ),
        (["score", "/nonexistent/model.flowkit", "."], 2, "no such model file"),
        (["list", "flows", "zzz*"], 1, ""),
        (["bench", "--suite", "quik"], 2, "did you mean quick"),
        (["report", "/nonexistent/run"], 2, "not a bench run directory"),
    ],
)
def test_user_errors_are_one_line_no_traceback(args, code, text):
    assert_clean_error(run(*args), code, text)


def test_tampered_model_is_refused_by_cli(tmp_path, tiny_detector):
    path = tiny_detector.save(tmp_path / "m.flowkit")
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 1
    path.write_bytes(bytes(raw))
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "a.png")
    assert_clean_error(run("score", str(path), str(tmp_path / "a.png")), 2, "modified")


def test_flow_augment_flags_are_checked_before_anything_runs(tmp_path):
    out = tmp_path / "run"
    res = run("bench", "--suite", "quick", "--flow-augment", "-1", "--out", str(out), "-q")
    assert_clean_error(res, 2, "flow_augment must be >= 0")
    assert not out.exists()
    res = run("train", "--flow-augment", "-1", "--out", str(tmp_path / "m.flowkit"), *TINY_ARGS)
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_train_option_defaults_are_the_detectors():
    """The CLI spells its defaults out (importing the Detector would load torch before
    --help); they must stay the Detector's."""
    import typer.main

    from flowkit import Detector

    defaults = Detector().get_params()
    command = typer.main.get_command(app).commands["train"]
    shared = {p.name: p.default for p in command.params if p.name in defaults}
    assert {"encoder", "flow", "scorer", "preprocess", "epochs_encoder"} <= set(shared)
    assert {"flow_augment", "precision", "epochs_flow", "confidence"} <= set(shared)
    assert shared["flow_batch_size"] == str(defaults["flow_batch_size"])
    assert {k: v for k, v in shared.items() if k != "flow_batch_size"} == {
        k: defaults[k] for k in shared if k != "flow_batch_size"
    }
