"""Data with pixel masks (issue 38, item 1): Magnetic Tile Defects in its native layout, MVTec
AD's ground_truth/, on tiny trees written in each layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import flowkit
from flowkit.errors import DataError, DatasetNotFoundError
from flowkit.testing import check_dataset


def _tile(path: Path, h: int, w: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(60, 120, (h, w), dtype=np.uint8)).save(path, quality=95)


def write_mtd(root: Path) -> Path:
    """5 defect-free tiles (empty masks) and 2 cracked ones, of two sizes; each crack mask
    has its defect in the left half and one boundary pixel of value 100 (not a defect)."""
    free, crack = root / "MT_Free" / "Imgs", root / "MT_Crack" / "Imgs"
    free.mkdir(parents=True)
    crack.mkdir(parents=True)
    for i in range(5):
        h, w = (40, 60) if i % 2 else (30, 50)
        _tile(free / f"exp0_num_{i}.jpg", h, w, i)
        Image.fromarray(np.zeros((h, w), np.uint8)).save(free / f"exp0_num_{i}.png")
    for i in range(2):
        _tile(crack / f"exp1_num_{i}.jpg", 40, 60, 10 + i)
        mask = np.zeros((40, 60), np.uint8)
        mask[:, :30] = 255
        mask[0, 59] = 100  # a boundary pixel: below 128, not a defect
        Image.fromarray(mask).save(crack / f"exp1_num_{i}.png")
    return root


def test_mtd_reads_the_native_layout_with_a_seeded_split_and_masks(tmp_path):
    root = write_mtd(tmp_path / "mtd")
    data = flowkit.load_dataset("mtd", root=root, image_size=16)
    assert data.classes == ["good", "Crack"] and len(data) == 7
    assert data.defect_types.count("Crack") == 2 and data.images.shape == (7, 1, 16, 16)
    train = flowkit.load_dataset("mtd", root=root, split="train", image_size=16)
    test = flowkit.load_dataset("mtd", root=root, split="test", image_size=16)
    assert len(train) == 4 and len(test) == 3  # 80 % of the 5 defect-free tiles train
    assert not train.anomaly.any() and int(test.anomaly.sum()) == 2
    again = flowkit.load_dataset("mtd", root=root, split="train", image_size=16)
    assert again.paths == train.paths  # seeded
    other = flowkit.load_dataset("mtd", root=root, split="train", image_size=16, seed=3)
    assert other.paths != train.paths
    # masks: empty on defect-free tiles; the crack's left half, binarized at 128
    cracked = data.masks[[t == "Crack" for t in data.defect_types]][:, 0]
    assert cracked[:, :, :8].all() and not cracked[:, :, 8:].any()
    assert not data.masks[[t == "good" for t in data.defect_types]].any()
    assert not any(p.endswith(".png") for p in data.paths)  # masks are never images
    check_dataset("mtd", root=root)


def test_a_bad_mask_is_one_line_naming_the_files(tmp_path):
    root = write_mtd(tmp_path / "mtd")
    crack = root / "MT_Crack" / "Imgs"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(crack / "exp1_num_0.png")
    with pytest.raises(
        DataError, match=r"mask .*exp1_num_0.png is 20×20 but its image .* is 60×40"
    ):
        flowkit.load_dataset("mtd", root=root, image_size=16)
    (crack / "exp1_num_0.png").unlink()
    with pytest.raises(DataError, match="no mask beside them: .*exp1_num_0.png"):
        flowkit.load_dataset("mtd", root=root, image_size=16)
    (crack / "exp1_num_0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="mask .*exp1_num_0.png of .* cannot be read"):
        flowkit.load_dataset("mtd", root=root, image_size=16)
    colour = np.zeros((40, 60, 3), np.uint8)
    colour[:, :30] = 255  # a colour mask: read by its luma
    Image.fromarray(colour).save(crack / "exp1_num_0.png")
    data = flowkit.load_dataset("mtd", root=root, image_size=16)
    assert data.masks[[t == "Crack" for t in data.defect_types]][:, 0, :, :8].all()
    with pytest.raises(DatasetNotFoundError, match="expected MT_Free/Imgs"):
        flowkit.load_dataset("mtd", root=tmp_path, image_size=16)


def _mvtec(root: Path, with_truth: bool) -> Path:
    cat = root / "tile"
    for sub, n in (("train/good", 4), ("test/good", 2), ("test/crack", 2)):
        (cat / sub).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((24, 24), 30 * i + 20, np.uint8)).save(
                cat / sub / f"{i:03d}.png"
            )
    if with_truth:
        (cat / "ground_truth" / "crack").mkdir(parents=True)
        for i in range(2):
            mask = np.zeros((24, 24), np.uint8)
            mask[12:, :] = 255
            Image.fromarray(mask).save(cat / "ground_truth" / "crack" / f"{i:03d}_mask.png")
    return root


def test_mvtec_reads_its_ground_truth_masks_and_works_without_them(tmp_path):
    root = _mvtec(tmp_path / "with", True)
    data = flowkit.load_dataset("mvtec", root=root, category="tile", image_size=8)
    crack = torch.tensor([t == "crack" for t in data.defect_types])
    assert crack.sum() == 2 and data.masks[crack][:, 0, 4:].all()
    assert not data.masks[crack][:, 0, :4].any() and not data.masks[~crack].any()
    assert set(data.defect_types) == {"good", "crack"}
    (root / "tile" / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(DataError, match="001.png is a crack image but its mask .* is missing"):
        flowkit.load_dataset("mvtec", root=root, category="tile", image_size=8)
    plain = flowkit.load_dataset(
        "mvtec", root=_mvtec(tmp_path / "plain", False), category="tile", image_size=8
    )
    assert plain.masks is None and plain.anomaly.sum() == 2  # no masks: as before
