"""Pixel AUROC and PRO, exactly, on small hand-made masks and maps."""

from __future__ import annotations

import numpy as np
import pytest

from flowkit.errors import DataError
from flowkit.metrics import (
    image_pixel_aucs,
    localization_metrics,
    pixel_auc,
    pro_curve,
    pro_score,
)


def test_pro_of_one_region_by_hand():
    mask = np.array([[[1, 1], [0, 0]]], bool)
    amap = np.array([[[4.0, 1.0], [3.0, 2.0]]])
    fpr, pro = pro_curve(mask, amap)
    # thresholds 4, 3, 2, 1: the region is half found at 4, whole at 1; the two normal
    # pixels come in at 3 and 2
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(pro, [0, 0.5, 0.5, 0.5, 1])
    # up to FPR 0.3 the curve is at 0.5 throughout: PRO = 0.5
    assert pro_score(mask, amap) == pytest.approx(0.5)
    # pixel AUROC: of the 4 (defect, normal) pairs, 4 > 3, 4 > 2 are right, 1 < 3, 1 < 2 wrong
    assert pixel_auc(mask, amap) == pytest.approx(0.5)


def test_pro_averages_regions_not_pixels():
    mask = np.array([[[1, 0, 0], [0, 0, 0], [1, 1, 1]]], bool)  # regions of 1 and 3 pixels
    amap = np.where(mask, 1.0, 5.0)
    amap[0, 0, 0] = 10.0  # the small region found first, the large one last
    assert pro_score(mask, amap) == pytest.approx(0.5)  # pixel overlap would be 1/4
    # 8-connectivity: a diagonal neighbour is the same region
    diag = np.array([[[1, 0, 0], [0, 1, 0], [0, 0, 0]]], bool)
    dmap = np.where(diag, 1.0, 0.0)
    dmap[0, 0, 0] = 2.0
    fpr, pro = pro_curve(diag, dmap)
    assert pro[1] == pytest.approx(0.5)  # one region of two pixels, half of it above 2


def test_a_perfect_map_scores_one_and_a_reversed_one_zero():
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 16, 16), bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 10:14, 10:12] = True
    perfect = masks + 0.1 * rng.random(masks.shape)
    assert pro_score(masks, perfect) == pytest.approx(1.0)
    assert pixel_auc(masks, perfect) == 1.0
    assert pro_score(masks, -perfect) == pytest.approx(0.0)
    # a linear interpolation at exactly FPR 0.3: a map ranking at random gives about 0.15
    noise = rng.random(masks.shape)
    assert 0.05 < pro_score(masks, noise) < 0.3


def test_localization_metrics_per_defect_type():
    masks = np.zeros((4, 4, 4), bool)
    masks[2, :2, :2] = True
    masks[3, 2:, 2:] = True
    maps = np.where(masks, 1.0, 0.0)
    maps[3] = np.where(masks[3], 0.0, 1.0)  # the crack's map points elsewhere
    out = localization_metrics(
        masks, maps, [0.1, 0.2, 0.9, 0.15], ["good", "good", "hole", "crack"]
    )
    assert out["per_type"]["hole"] == {
        "auc": 1.0,
        "pixel_auc": 1.0,
        "pro": 1.0,
        "own_pixel_auc": 1.0,
        "images": 1,
    }
    crack = out["per_type"]["crack"]
    assert crack["auc"] == 0.5 and crack["own_pixel_auc"] == 0.0
    # by hand: 12 of the 44 normal pixels (value 1) come first, FPR 3/11 at PRO 0; then all
    # at 0, FPR 1 at PRO 1. At FPR 0.3 the curve is (0.3 - 3/11) / (8/11) = 0.0375 high: the
    # area up to 0.3 is that triangle, normalised by 0.3
    assert crack["pro"] == pytest.approx(0.5 * (0.3 - 3 / 11) * 0.0375 / 0.3)
    assert out["auc"] == pytest.approx(0.75)


def test_bad_masks_and_maps_are_one_line():
    with pytest.raises(DataError, match="must have one shape"):
        pro_score(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 5)))
    with pytest.raises(DataError, match="at least one defect region"):
        pro_score(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4)))
    with pytest.raises(DataError, match="NaN"):
        pixel_auc(np.eye(4, dtype=bool)[None], np.full((1, 4, 4), np.nan))


def test_each_images_own_pixel_auc_ignores_the_level_of_other_images():
    masks = np.zeros((4, 4, 4), bool)
    masks[1, 0] = True  # a defect in the top row
    masks[2, :, 0] = True  # a defect in the left column
    masks[3] = True  # all defect: no own AUC
    maps = np.zeros((4, 4, 4))
    maps[1] = 10.0 + np.arange(4)[::-1, None]  # raised, highest at the top: ranks its defect
    maps[2] = np.arange(4)[None, :] / 10  # low, highest at the right: the wrong side
    own = image_pixel_aucs(masks, maps)
    assert np.isnan(own[0]) and np.isnan(own[3])
    assert own[1] == 1.0 and own[2] == 0.0
    out = localization_metrics(masks[:3], maps[:3], [0.0, 1.0, 1.0], ["good", "top", "left"])
    assert out["per_type"]["top"]["own_pixel_auc"] == 1.0
    assert out["per_type"]["left"]["own_pixel_auc"] == 0.0
    only_full = localization_metrics(
        masks[[0, 1, 3]], maps[[0, 1, 3]], [0, 1, 1], ["good", "a", "b"]
    )
    assert only_full["per_type"]["b"]["own_pixel_auc"] is None
