"""Image files: every Pillow mode decoded against a reference, folder layouts, MVTec AD."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from flowkit import Detector, load_dataset
from flowkit.cli import app
from flowkit.data import decode_image, detect_layout, labelled_split, load_images
from flowkit.errors import ConfigError, DataError, DatasetNotFoundError

from .conftest import TINY

RNG = np.random.default_rng(0)
GRAY = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
RGB = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (6, 5), dtype=np.uint8)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb, "RGB").convert("L"))


def _composite(x: np.ndarray) -> np.ndarray:
    a = ALPHA.astype(np.float64) / 255.0
    return np.rint(x * (a[..., None] if x.ndim == 3 else a)).astype(np.uint8)


def _palette_rgb() -> tuple[Image.Image, np.ndarray]:
    im = Image.fromarray(RGB, "RGB").quantize(colors=16)
    return im, np.asarray(im.convert("RGB"))


CASES = {
    "L": (lambda: Image.fromarray(GRAY, "L"), GRAY),
    "I;16": (lambda: Image.fromarray(GRAY.astype(np.uint16) * 257), GRAY),
    "I": (lambda: Image.fromarray(GRAY.astype(np.int32) * 257, "I"), GRAY),
    "F": (lambda: Image.fromarray(GRAY.astype(np.float32) / 255.0, "F"), GRAY),
    "1": (lambda: Image.fromarray(GRAY > 127), np.where(GRAY > 127, 255, 0).astype(np.uint8)),
    "RGB": (lambda: Image.fromarray(RGB, "RGB"), RGB),
    "P": (lambda: _palette_rgb()[0], _palette_rgb()[1]),
    "LA": (lambda: Image.fromarray(np.dstack([GRAY, ALPHA]), "LA"), _composite(GRAY)),
    "RGBA": (lambda: Image.fromarray(np.dstack([RGB, ALPHA]), "RGBA"), _composite(RGB)),
    "CMYK": (lambda: Image.fromarray(RGB, "RGB").convert("CMYK"), RGB),
}


@pytest.mark.parametrize("mode", sorted(CASES))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_pillow_mode_decodes_to_the_reference(mode, channels):
    make, ref = CASES[mode]
    im = make()
    assert im.mode == mode
    out = decode_image(im, channels)
    assert out.dtype == np.uint8 and out.shape == (6, 5, channels)
    if ref.ndim == 2:
        expected = np.repeat(ref[..., None], channels, axis=-1)
    else:
        expected = _luma(ref)[..., None] if channels == 1 else ref
    np.testing.assert_array_equal(out, expected)


def test_sixteen_bit_png_is_rescaled_not_clipped(tmp_path):
    img8 = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    Image.fromarray(img8.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    Image.fromarray(img8).save(tmp_path / "flat.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")  # Pillow really read 16 bits
    images, _ = load_images([tmp_path / "deep.png", tmp_path / "flat.png"], 32)
    assert images.shape == (2, 1, 32, 32)
    assert torch.equal(images[0], images[1])
    assert (images[0] == 255).float().mean() < 0.05  # 16-bit values used to clip to white


def test_sixteen_bit_png_scores_like_its_8_bit_copy(tmp_path, tiny_detector, fake_split):
    from typer.testing import CliRunner

    from flowkit.cli import app

    model = tiny_detector.save(tmp_path / "m.flowkit")
    img8 = fake_split.test.images[0, 0].numpy()
    (tmp_path / "imgs").mkdir()
    Image.fromarray(img8.astype(np.uint16) * 257).save(tmp_path / "imgs" / "a16.png")
    Image.fromarray(img8).save(tmp_path / "imgs" / "b8.png")
    res = CliRunner().invoke(app, ["score", str(model), str(tmp_path / "imgs"), "--csv"])
    assert res.exit_code == 0, res.output
    rows = [line.split(",") for line in res.output.splitlines()[1:] if line.strip()]
    assert len(rows) == 2
    a, b = float(rows[0][1]), float(rows[1][1])
    assert abs(a - b) <= 1e-3 * max(1.0, abs(b))


def test_decompression_bomb_is_a_clear_error_and_can_be_skipped(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "huge.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    files = [tmp_path / "huge.png", tmp_path / "small.png"]
    with pytest.raises(DataError, match=r"huge\.png \(over Pillow's decompression-bomb limit"):
        load_images(files, 8)
    with pytest.warns(UserWarning, match="skipped"):
        images, kept = load_images(files, 8, skip_unreadable=True)
    assert kept == [tmp_path / "small.png"] and images.shape == (1, 1, 8, 8)


def test_corrupt_and_truncated_files_are_named(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    raw = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"2 of 3 image file\(s\).*junk\.png.*--skip-unreadable"):
        load_images([tmp_path / n for n in ("ok.png", "junk.png", "cut.png")], 8)


# -- folder layouts -----------------------------------------------------------------------


def _blob(rng: np.random.Generator, where: float, size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    c = size * where + rng.normal(0, 1, 2)
    img = 220 * np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * 3.0**2))
    return np.clip(img + rng.uniform(0, 30, (size, size)), 0, 255).astype(np.uint8)


def _write(folder: Path, n: int, where: float, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(_blob(rng, where)).save(folder / f"{i:03d}.png")


def make_mvtec(root: Path, n_train: int = 40) -> Path:
    _write(root / "train" / "good", n_train, 0.3, 0)
    _write(root / "test" / "good", 8, 0.3, 1)
    _write(root / "test" / "crack", 8, 0.7, 2)
    _write(root / "test" / "hole", 4, 0.5, 3)
    # masks: never images to train on; one per defect image, named as MVTec AD names them
    for defect, n in (("crack", 8), ("hole", 4)):
        (root / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            size = Image.open(root / "test" / defect / f"{i:03d}.png").size
            mask = np.zeros(size[::-1], np.uint8)
            mask[: size[1] // 2] = 255
            Image.fromarray(mask).save(root / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root


def test_mvtec_layout_trains_on_train_good_only(tmp_path):
    root = make_mvtec(tmp_path / "bottle")
    layout = detect_layout(root)
    assert layout.kind == "mvtec" and layout.classes == ["good", "crack", "hole"]
    data = load_dataset("folder", root=root)
    assert "MVTec AD layout" in data.layout
    split = labelled_split(data)
    assert len(split.train) == 40 and not split.train.anomaly.any()
    assert all("/train/good/" in p for p in split.train.paths)
    assert len(split.test) == 20 and int(split.is_anomaly.sum()) == 12
    assert not any("ground_truth" in p for p in data.paths)
    train_only = load_dataset("folder", root=root, split="train")
    assert len(train_only) == 40
    with pytest.raises(ConfigError, match="leave --anomaly-class out"):
        from flowkit.data import leave_one_class_out

        leave_one_class_out(data, 1)


def test_normal_anomalous_layout_holds_normal_test_images_out(tmp_path):
    _write(tmp_path / "normal", 30, 0.3, 0)
    _write(tmp_path / "anomalous", 5, 0.7, 1)
    data = load_dataset("folder", root=tmp_path)
    split = labelled_split(data)
    assert len(split.train) == 24 and not split.train.anomaly.any()
    assert len(split.test) == 11 and int(split.is_anomaly.sum()) == 5
    # the fixed split is the same for split="train"
    assert load_dataset("folder", root=tmp_path, split="train").paths == split.train.paths


@pytest.mark.parametrize(
    "tree, why",
    [
        ({"loose.png": None, "a/x.png": None}, "both directly in it and in sub-folders"),
        ({"train/x/1.png": None, "test/good/2.png": None}, "train/ must hold good/"),
        ({"ground_truth/c/1.png": None, "x/2.png": None}, "ground_truth/ without train/"),
        ({"normal/1.png": None, "weird/2.png": None}, "weird beside normal/"),
        ({"train/good/1.png": None, "test/good/2.png": None, "extra/3.png": None}, "extra beside"),
    ],
)
def test_ambiguous_trees_are_refused_with_the_expected_layouts(tmp_path, tree, why):
    for rel in tree:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / rel)
    with pytest.raises(DataError, match=why) as info:
        load_dataset("folder", root=tmp_path)
    assert "MVTec AD (train/good/" in str(info.value)


def test_class_folders_and_flat_folders(tmp_path):
    _write(tmp_path / "cls" / "a", 5, 0.3, 0)
    _write(tmp_path / "cls" / "b", 5, 0.7, 1)
    data = load_dataset("folder", root=tmp_path / "cls")
    assert data.classes == ["a", "b"] and data.anomaly is None
    assert "one folder per class" in data.layout
    _write(tmp_path / "flat", 5, 0.3, 0)
    flat = load_dataset("folder", root=tmp_path / "flat")
    assert len(flat) == 5 and "flat folder" in flat.layout


def test_mvtec_dataset_by_category(tmp_path):
    make_mvtec(tmp_path / "bottle", n_train=10)
    make_mvtec(tmp_path / "cable", n_train=10)
    data = load_dataset("mvtec:category=bottle", root=tmp_path)
    assert data.name == "mvtec/bottle" and data.labelled_anomalies
    from flowkit.data import mvtec_categories

    assert mvtec_categories(tmp_path) == ["bottle", "cable"]
    with pytest.raises(DatasetNotFoundError, match="did you mean bottle"):
        load_dataset("mvtec:category=botle", root=tmp_path)
    with pytest.raises(ConfigError, match="found under .*: bottle, cable"):
        load_dataset("mvtec", root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="licence"):
        load_dataset("mvtec:category=bottle", root=tmp_path / "nothing")


def test_train_on_an_mvtec_folder_reports_test_auc(tmp_path):
    from typer.testing import CliRunner

    from flowkit.cli import app

    root = make_mvtec(tmp_path / "bottle")
    args = ["train", "--dataset", "folder", "--data-root", str(root), "--out"]
    args += [str(tmp_path / "m.flowkit"), "--encoder", TINY["encoder"], "--flow", TINY["flow"]]
    args += ["--epochs-encoder", "1", "--epochs-flow", "2", "--device", "cpu", "-q"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "MVTec AD layout" in res.output
    assert "40 normal training images; test: 8 normal + 12 anomalous" in res.output
    assert "test ROC AUC" in res.output
    res = CliRunner().invoke(app, [*args, "--anomaly-class", "1"])
    assert res.exit_code == 2 and "leave --anomaly-class out" in res.output
    det = Detector.load(tmp_path / "m.flowkit")
    assert det.history_["encoder"]["epochs_run"] == 1


def test_score_a_labelled_folder_prints_json_lines_and_metrics(tmp_path, tiny_detector):
    import json

    from typer.testing import CliRunner

    from flowkit.cli import app

    root = make_mvtec(tmp_path / "bottle", n_train=4)
    model = tiny_detector.save(tmp_path / "m.flowkit")
    args = ["score", str(model), str(root), "--json", "--batch-size", "7"]
    res = CliRunner().invoke(app, [*args, "--metrics", str(tmp_path / "m.json"), "-q"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    assert len(rows) == 24  # train/good + test/*, never the ground_truth masks
    assert not any("ground_truth" in r["path"] for r in rows)
    assert {"anomaly_score", "log_likelihood", "threshold", "label"} <= set(rows[0])
    assert "labelled folder: ROC AUC" in res.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["anomalies"] == 12 and 0.0 <= metrics["auc"] <= 1.0
    # the same scores as scoring everything in one batch
    one = CliRunner().invoke(app, ["score", str(model), str(root), "--json", "-q"])
    again = [json.loads(line) for line in one.output.splitlines() if line.startswith("{")]
    assert [r["anomaly_score"] for r in again] == pytest.approx(
        [r["anomaly_score"] for r in rows], rel=1e-5
    )
    res = CliRunner().invoke(
        app,
        ["score", str(model), str(root / "test" / "crack"), "--metrics", str(tmp_path / "x.json")],
    )
    assert res.exit_code == 2 and "labelled layout" in res.output


def test_score_metrics_use_the_evaluation_part_only(tmp_path, tiny_detector):
    from flowkit.images import labelled_files

    root = make_mvtec(tmp_path / "bottle", n_train=12)
    files, truth = labelled_files(root)
    assert len(files) == 12 + 20 and len(truth) == 20  # train/good scored, never evaluated
    assert not any("/train/" in str(f) for f in truth)
    model = tiny_detector.save(tmp_path / "m.flowkit")
    res = CliRunner().invoke(app, ["score", str(model), str(root), "--csv", "-q"])
    assert res.exit_code == 0, res.output
    assert "(12 anomalous of 20)" in res.output
    # only test/crack beside train/good: one label alone, so no AUC at all
    only = tmp_path / "only"
    _write(only / "train" / "good", 12, 0.3, 0)
    _write(only / "test" / "crack", 6, 0.7, 2)
    res = CliRunner().invoke(app, ["score", str(model), str(only), "--csv", "-q"])
    assert res.exit_code == 0 and "ROC AUC" not in res.output.replace("ROC AUC is undefined", "")
    assert "only anomalies (6 image(s))" in res.output
    res = CliRunner().invoke(
        app, ["score", str(model), str(only), "--csv", "--metrics", str(tmp_path / "m.json")]
    )
    assert res.exit_code == 2 and not (tmp_path / "m.json").exists()


def test_float_tiffs_are_read_by_their_range_never_clipped(tmp_path):
    from flowkit.images import read_images

    ramp = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    for name, scale in (("unit", 1.0), ("byte", 255.0), ("over", 300.0)):
        Image.fromarray(ramp * scale, mode="F").save(tmp_path / f"{name}.tif")
    images, _ = read_images([tmp_path / "unit.tif", tmp_path / "byte.tif"], 32)
    np.testing.assert_array_equal(images[0], images[1])  # the same ramp either way
    assert images[1].max() == 255 and (images[1] == 255).mean() < 0.01  # not clipped
    with pytest.raises(DataError, match=r"over.tif .*pixels in \[0, 300\].*rescale it"):
        read_images([tmp_path / "over.tif"], 32)


def test_each_file_is_scored_once_and_only_regular_files_are_images(tmp_path):
    import os

    from flowkit.images import find_images

    many = tmp_path / "many"
    _write(many, 3, 0.3, 0)
    (many / "d.png").mkdir()  # a folder with an image's name: searched, not opened
    _write(many / "d.png", 1, 0.3, 1)
    os.mkfifo(many / "pipe.png")  # would block forever if opened
    files = find_images([many, many / "000.png", many])
    assert len(files) == 4 and len({f.resolve() for f in files}) == 4
    assert all(f.is_file() for f in files)
    with pytest.raises(DataError, match="not a regular file"):
        find_images([many / "pipe.png"])


def test_an_empty_class_folder_keeps_the_indices_and_classes_go_by_name(tmp_path):
    from flowkit.data import leave_one_class_out

    for name, seed in (("c_cat", 0), ("c_dog", 1)):
        _write(tmp_path / "tree" / name, 10, 0.3 + 0.3 * seed, seed)
    (tmp_path / "tree" / "c_bird").mkdir()  # empty, sorts first
    with pytest.warns(
        UserWarning, match=r"'c_bird' hold no images; they keep their class index \(0\)"
    ):
        data = load_dataset("folder", root=tmp_path / "tree")
    assert data.classes == ["c_bird", "c_cat", "c_dog"]
    assert set(data.labels.tolist()) == {1, 2}  # c_dog is still class 2
    by_name = leave_one_class_out(data, "c_dog")
    assert by_name.is_anomaly.sum() == 10
    assert leave_one_class_out(data, "2").is_anomaly.sum() == 10
    with pytest.raises(ConfigError, match=r"no class 'c_dgo'; did you mean 'c_dog'"):
        leave_one_class_out(data, "c_dgo")
    with pytest.raises(ConfigError, match=r"no image of class 0 \('c_bird'\)"):
        leave_one_class_out(data, "c_bird")
    res = CliRunner().invoke(
        app,
        ["train", "--dataset", "folder", "--data-root", str(tmp_path / "tree"),
         "--anomaly-class", "c_dog", "--out", str(tmp_path / "m.flowkit"),
         "--encoder", "dcgan_ae:width=8,latent_dim=8", "--flow", "gaussian",
         "--epochs-encoder", "1", "--device", "cpu", "--paper", "-q"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "class 'c_dog' held out" in res.output and "test ROC AUC" in res.output


def test_score_checks_the_metrics_path_before_scoring(tmp_path, tiny_detector):
    root = make_mvtec(tmp_path / "bottle", n_train=4)
    model = tiny_detector.save(tmp_path / "m.flowkit")
    (tmp_path / "afile").write_text("")
    res = CliRunner().invoke(
        app, ["score", str(model), str(root), "--csv", "--metrics", str(tmp_path / "afile/m.json")]
    )
    assert res.exit_code == 2 and "is a file, not a directory" in res.output
    assert "anomaly_score" not in res.output  # refused before any image was scored
    res = CliRunner().invoke(
        app, ["score", str(model), str(root), "--csv", "--metrics", str(tmp_path / "d" / "m.json")]
    )
    assert res.exit_code == 0 and json.loads((tmp_path / "d" / "m.json").read_text())["n"] == 20
    res = CliRunner().invoke(app, ["score", str(model), str(root), "--metrics", str(tmp_path)])
    assert res.exit_code == 2 and f"{tmp_path}/metrics.json" in res.output.replace("\n", "")
