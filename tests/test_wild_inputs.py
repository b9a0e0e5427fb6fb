"""Files from the wild, paths that are not plain files, degenerate data and the stages API
(issue 37): each case gives the right answer, not only one clear line."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from flowkit import Detector
from flowkit.artifact import atomic_write_bytes
from flowkit.cli import app
from flowkit.errors import ConfigError, DataError
from flowkit.images import find_images, read_images

from .conftest import TINY

runner = CliRunner()


def _photo(h: int = 24, w: int = 40) -> np.ndarray:
    """An RGB picture that is not symmetric (a rotation changes it)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 6, y * 10, (x + y) * 3], -1).clip(0, 255).astype(np.uint8)


def test_an_exif_rotated_photo_reads_as_the_upright_one(tmp_path):
    upright = _photo()
    Image.fromarray(upright).save(tmp_path / "upright.png")
    # what a phone stores: the pixels turned, and a tag saying how to turn them back
    stored = Image.fromarray(np.rot90(upright, k=1))  # 90° counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    stored.save(tmp_path / "tagged.png", exif=exif)
    stored.save(tmp_path / "untagged.png")
    arrays, _ = read_images(
        [tmp_path / "upright.png", tmp_path / "tagged.png", tmp_path / "untagged.png"], 32, 3
    )
    np.testing.assert_array_equal(arrays[1], arrays[0])
    assert not np.array_equal(arrays[2], arrays[0])  # the tag is what makes them equal


def test_32_bit_integer_images_read_by_their_range_never_clipped(tmp_path):
    eight = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    Image.fromarray(eight).save(tmp_path / "l.png")
    Image.fromarray(eight.astype(np.int32), "I").save(tmp_path / "i8.tif")
    sixteen = (np.arange(64).reshape(8, 8) * 1000).astype(np.int32)
    Image.fromarray(sixteen, "I").save(tmp_path / "i16.tif")
    got, _ = read_images([tmp_path / "l.png", tmp_path / "i8.tif", tmp_path / "i16.tif"], 8, 1)
    np.testing.assert_array_equal(got[1], got[0])  # 0..255 in an I image = the 8-bit image
    np.testing.assert_array_equal(got[2, 0], np.rint(sixteen / 257).astype(np.uint8))
    for bad in (np.full((8, 8), -1, np.int32), np.full((8, 8), 70000, np.int32)):
        Image.fromarray(bad, "I").save(tmp_path / "bad.tif")
        with pytest.raises(DataError, match=r"\(I\) image with pixels in \["):
            read_images([tmp_path / "bad.tif"], 8, 1)


def test_a_write_goes_through_a_link_and_never_replaces_a_fifo_or_device(tmp_path):
    target = tmp_path / "real.flowkit"
    target.write_bytes(b"old")
    link = tmp_path / "link.flowkit"
    link.symlink_to(target)
    atomic_write_bytes(link, b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"
    dangling = tmp_path / "dangling.flowkit"
    dangling.symlink_to(tmp_path / "made.flowkit")
    atomic_write_bytes(dangling, b"made")
    assert dangling.is_symlink() and (tmp_path / "made.flowkit").read_bytes() == b"made"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is a FIFO, not a regular file"):
        atomic_write_bytes(fifo, b"x")
    assert fifo.is_fifo()
    with pytest.raises(ConfigError, match="is a device"):
        atomic_write_bytes("/dev/null", b"x")
    assert Path("/dev/null").is_char_device()
    long_name = tmp_path / ("y" * 240 + ".flowkit")  # its temporary's name must fit too
    atomic_write_bytes(long_name, b"ok")
    assert long_name.read_bytes() == b"ok"


def test_a_cli_save_to_a_fifo_leaves_the_fifo(tmp_path):
    fifo = tmp_path / "out.flowkit"
    os.mkfifo(fifo)
    res = runner.invoke(app, ["train", "--out", str(fifo), "-q"])
    assert res.exit_code == 2 and "is a FIFO" in res.output
    assert fifo.is_fifo()


def test_images_in_linked_folders_are_found_once_and_loops_end(tmp_path):
    real = tmp_path / "data" / "real"
    real.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(real / f"{i}.png")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(outside / "x.png")
    (tmp_path / "data" / "linked").symlink_to(outside, target_is_directory=True)
    (real / "loop").symlink_to(tmp_path / "data", target_is_directory=True)  # a cycle
    found = find_images([tmp_path / "data"])
    assert sorted(f.name for f in found) == ["0.png", "1.png", "x.png"]


def test_a_suite_with_repeated_entries_runs_each_cell_once():
    from flowkit.bench.suite import Suite

    suite = Suite(
        name="dup",
        dataset="fake:per_class=30",
        classes=[0, 0, 1],
        encoders=["dcgan_ae:width=8,latent_dim=8", "dcgan_ae:latent_dim=8,width=8"],
        flows=["gaussian", "gaussian"],
        scorers=["nll", "nll"],
        seeds=[0, 0],
    ).validate()
    cells = suite.cells(suite.targets(n_classes=3))
    assert len(cells) == 2 and len({c.cell_id for c in cells}) == 2


@pytest.fixture(scope="module")
def model_and_odd_names(tmp_path_factory, fake_split):
    root = tmp_path_factory.mktemp("odd")
    det = Detector(**TINY).fit(fake_split.train)
    model = det.save(root / "m.flowkit")
    images = root / "images"
    images.mkdir()
    for i, name in enumerate(["a\nb.png", "a\\nb.png", "δ-greek.png", 'quo"te,comma.png']):
        Image.fromarray(np.full((32, 32), 50 * i, np.uint8)).save(images / name)
    return model, images


def test_csv_quotes_names_so_a_newline_is_not_a_backslash_n(model_and_odd_names):
    model, images = model_and_odd_names
    res = runner.invoke(app, ["score", str(model), str(images), "--csv", "-q"])
    assert res.exit_code == 0, res.output
    rows = list(csv.reader(io.StringIO(res.stdout)))
    names = sorted(Path(r[0]).name for r in rows[1:])
    assert names == sorted(["a\nb.png", "a\\nb.png", "δ-greek.png", 'quo"te,comma.png'])


@pytest.mark.parametrize("form", ["--csv", "--json", "table"])
def test_a_name_an_ascii_terminal_cannot_show_is_escaped_not_a_crash(model_and_odd_names, form):
    model, images = model_and_odd_names
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "COLUMNS": "200"}
    args = [] if form == "table" else [form]
    res = subprocess.run(
        [sys.executable, "-m", "flowkit", "score", str(model), str(images), "-q", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert "greek" in res.stdout


def test_bench_takes_classes_all_as_a_suite_file_does(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(
        'dataset = "fake:per_class=20,classes=2"\nclasses = [0]\n'
        'encoders = ["dcgan_ae:width=8,latent_dim=8"]\nflows = ["gaussian"]\n'
        "epochs_encoder = 1\n"
    )
    res = runner.invoke(
        app,
        ["bench", "--suite", str(suite), "--classes", "all", "--out", str(tmp_path / "r"),
         "-q", "--no-plots", "--executor", "local", "--device", "cpu"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "r" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2  # both classes, not the suite's [0]


def test_parameters_set_after_fit_describe_the_next_fit_not_the_saved_model(tmp_path, fake_split):
    det = Detector(**TINY).fit(fake_split.train)
    threshold = det.threshold_
    det.set_params(confidence=0.5, epochs_encoder=3)
    assert det.confidence == 0.5 and det.threshold_ == threshold  # scikit-learn's rule
    again = Detector.load(det.save(tmp_path / "m.flowkit"), device="cpu")
    assert again.confidence == 0.95 and again.epochs_encoder == TINY["epochs_encoder"]
    assert again.threshold_ == threshold
    # a loaded model's stages still compose: the lineage travels in the file
    Detector.from_stages(again.encoder_stage_, again.density_stage_, again.calibration_stage_)
    # with_scorer starts from what was fitted, whatever set_params said since
    other = det.with_scorer(fake_split.train, "knn")
    assert other.scorer == "knn" and other.confidence == 0.95
    assert other.epochs_encoder == TINY["epochs_encoder"]


def test_stages_of_one_fit_compose_and_repeat_their_values(tiny_detector):
    d = tiny_detector
    same = Detector.from_stages(
        d.encoder_stage_, d.density_stage_, d.calibration_stage_, scorer=d.scorer, device="cpu"
    )
    x = torch.zeros(3, 1, 32, 32, dtype=torch.uint8)
    np.testing.assert_array_equal(same.anomaly_score(x), d.anomaly_score(x))
    assert d.density_stage_.fitted_on == d.encoder_stage_.identity
    assert d.calibration_stage_.fitted_on == d.density_stage_.identity


def test_a_few_distinct_training_images_fit_with_a_warning():
    from flowkit.pipeline import check_variation

    images = torch.zeros(40, 1, 8, 8, dtype=torch.uint8)
    images[20:] = 255
    with pytest.warns(UserWarning, match="only 2 distinct images among the 40"):
        check_variation(images)
    check_variation(torch.randint(0, 255, (40, 1, 8, 8), dtype=torch.uint8))  # no warning
